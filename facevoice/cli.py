"""`facevoice VERB [SUBVERB] ...`: each verb is one module with `add_arguments` and `run`.

The table below is the whole map from command to code (clip-retrieval style); modules are
imported only when their verb runs, so `--help` stays fast and the service never loads
training code. Each module's `run(args)` only adapts: it builds the verb's options from the
arguments, calls the verb's function (which takes values and returns a result) and prints the
result's summary.

Exit statuses, here and only here (`main`; no other module exits):
    0  done
    1  failed: a FacevoiceError (a file in the wrong format, a corpus that lacks something, a
       dependency down), or an OSError no verb looked for (a missing or unreadable file)
    2  usage: a UsageError (settings or arguments that cannot work), or arguments argparse refuses
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from typing import TypeVar

VERBS: dict[tuple[str, ...], tuple[str, str]] = {
    ("corpus", "synth"): ("facevoice.training.corpus.synth", "build the synthetic demo corpus"),
    ("corpus", "voxceleb"): ("facevoice.training.corpus.voxceleb", "write VoxCeleb1 as a corpus"),
    ("corpus", "voxceleb2"): ("facevoice.training.corpus.voxceleb2", "write VoxCeleb2's MP4 clips as a corpus"),
    ("corpus", "avspeech"): ("facevoice.training.corpus.avspeech", "write AVSpeech's clips as a corpus"),
    ("train", "face-detector"): ("facevoice.training.corpus.face_detector",
                                 "train the HOG detector for the synthetic corpus's faces"),
    ("train", "backbones"): ("facevoice.training.association.pretrain", "pretrain VGG/SoundNet backbones offline"),
    ("train", "association"): ("facevoice.training.association.train", "train the Kim et al. face/voice encoders"),
    ("eval", "association"): ("facevoice.training.association.evaluate", "Kim et al.'s evaluation on test identities"),
    ("eval", "heldout"): ("facevoice.training.association.heldout", "association runs on corpora of new people"),
    ("eval", "media-ceiling"): ("facevoice.training.association.ceiling",
                                "what the media carry of each link, and the media oracle's 1:2"),
    ("eval", "service"): ("facevoice.served", "the served models on new people, through the service: recall@K"),
    ("eval", "frozen"): ("facevoice.training.association.frozen",
                         "frozen dlib and resemblyzer encoders with a linear head: the baseline to beat"),
    ("train", "face-features"): ("facevoice.training.speech2face.features", "train the S2F face feature network"),
    ("train", "face-decoder"): ("facevoice.training.speech2face.decoder", "train the Speech2Face face decoder"),
    ("train", "s2f"): ("facevoice.training.speech2face.train", "train the Speech2Face voice encoder"),
    ("eval", "s2f"): ("facevoice.training.speech2face.evaluate", "the Speech2Face evaluation on test identities"),
    ("export",): ("facevoice.training.export.command", "trained runs -> Triton model repository (ONNX)"),
    ("index", "build"): ("facevoice.service.build", "embed a gallery and publish new FAISS index versions"),
    ("index", "merge"): ("facevoice.service.shards", "plan one index over the shards of `index build --shard I/N`"),
    ("index", "publish"): ("facevoice.service.publish", "point an index at an existing version (rollback)"),
    ("index", "milvus"): ("facevoice.service.milvus", "copy the current index versions into Milvus, move its aliases"),
    ("index", "prune"): ("facevoice.service.prune", "delete old index versions and trim the gallery write log"),
    ("index", "log", "verify"): ("facevoice.service.logtool", "check every record of the gallery write log"),
    ("index", "log", "repair"): ("facevoice.service.logtool",
                                 "move damaged gallery-log records aside into its quarantine, keep the rest"),
    ("serve",): ("facevoice.service.serve", "the gRPC service (embedded default, or --triton-url)"),
    ("query", "faces"): ("facevoice.query", "voice -> nearest gallery faces (SearchFaces)"),
    ("query", "voices"): ("facevoice.query", "face -> nearest gallery voices (SearchVoices)"),
    ("query", "match"): ("facevoice.query", "one probe against 2..100 candidates (Match)"),
    ("query", "reconstruct"): ("facevoice.query", "voice -> Speech2Face face PNG (ReconstructFace)"),
    ("query", "info"): ("facevoice.query", "the served indexes and model versions (GetIndexInfo)"),
    ("health",): ("facevoice.health", "gRPC health check of a running service (exit 0 when SERVING)"),
    ("study", "serve"): ("facevoice.study.serve", "the human study's web application (Kim et al. sec. 3)"),
    ("study", "simulate"): ("facevoice.study.simulate", "scripted participants through the study's HTTP API"),
    ("study", "analyze"): ("facevoice.study.analyze", "the study's report: Table 1, ANOVA, humans against the model"),
    ("study", "corpus"): ("facevoice.study.corpus", "the study's accepted recordings as a corpus"),
    ("study", "build"): ("facevoice.study.stimuli", "the study's voice clips, each at its experiment's length"),
    ("study", "export"): ("facevoice.study.export", "the study's tidy data: trials.csv, participants.csv, manifest"),
    ("demo",): ("facevoice.demo", "the main job on the embedded default (make demo)"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facevoice", description=__doc__.splitlines()[0])
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(dest="verb", required=True, metavar="VERB")}
    for path, (module, help_text) in VERBS.items():
        for depth in range(1, len(path)):  # the groups above it: `index`, `index log`
            if path[:depth] not in groups:
                group = groups[path[:depth - 1]].add_parser(path[depth - 1], help=f"{' '.join(path[:depth])} commands")
                groups[path[:depth]] = group.add_subparsers(
                    dest="subverb" if depth == 1 else f"subverb{depth}", required=True, metavar="VERB")
        sub = groups[path[:-1]].add_parser(path[-1], help=help_text)
        sub.set_defaults(module=module, path=path)
        # only the chosen verb's module is imported to add its arguments
        if [a for a in argv if not a.startswith("-")][: len(path)] == list(path):
            load(module, " ".join(path)).add_arguments(sub)
    return parser


EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")


def options(cls: type[T], args: argparse.Namespace, **values) -> T:
    """A verb's options dataclass from its parsed arguments: each field from the argument of its
    name (argparse's own, such as `module`, are left out; argparse's lists become tuples, as the
    frozen dataclasses hold them), then `values`."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names}
    return cls(**given | values)


def command_line(path: tuple[str, ...], opts, always: tuple[str, ...] = (), omit: tuple[str, ...] = ()) -> list[str]:
    """The argv that gives the verb at `path` these options, in the parser's order: each argument
    that differs from its default, and those named in `always` even at their default (what a
    recipe sets, so the record does not change meaning when a default does); none in `omit`.
    How a pipeline that calls verb functions records the commands a reader can type;
    `options` of its parse gives `opts` back (but for `omit`)."""
    parser = build_parser(list(path))
    for word in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    argv = list(path)
    for action in parser._actions:
        dest = action.dest
        if dest in ("help", argparse.SUPPRESS, *omit) or not hasattr(opts, dest):
            continue
        value, default = getattr(opts, dest), action.default
        if isinstance(value, list | tuple) and isinstance(default, list | tuple):
            value, default = list(value), list(default)  # a dataclass's tuple is argparse's list
        unset = value == default or (value in (None, []) and default in (None, []))
        if (unset and dest not in always) or value in (None, False, []):
            continue
        flag = action.option_strings[0] if action.option_strings else None  # the first is the verb's own
        values = [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            argv.append(flag)
        elif isinstance(action, argparse._AppendAction):
            argv += [a for v in values for a in (flag, v)]
        else:
            argv += ([flag] if flag else []) + values
    return argv


def load(module: str, verb: str):
    from facevoice.service.errors import UsageError

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == "torch":  # the service image has the online path only
            raise UsageError("needs torch, which this installation has not (training runs where "
                             "`pip install facevoice` brought torch)") from e
        raise


def failure_status(e: BaseException, name: str) -> int | None:
    """The status of an error a command met, its message printed once as `NAME: message`; None
    for an error that is not ours to turn into one (a bug: its traceback says more)."""
    from facevoice.service.errors import FacevoiceError, UsageError

    if not isinstance(e, FacevoiceError | OSError):
        return None
    print(f"{name}: {e}", file=sys.stderr, flush=True)  # an OSError no verb looked for: its words, not a traceback
    return EXIT_USAGE if isinstance(e, UsageError) else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """Runs one verb -> its exit status (the module docstring's table). Every FacevoiceError a
    command meets is printed as `facevoice VERB: message` on stderr, here, once."""
    argv = sys.argv[1:] if argv is None else argv
    words = [a for a in argv if not a.startswith("-")]
    verb = " ".join(next((p for p in VERBS if list(p) == words[:len(p)]), ()))
    try:
        # argparse's refusals exit inside parse_args: --help (0), or arguments it refused (2, its
        # message printed); building the parser imports the verb's module (torch, for training)
        args = build_parser(argv).parse_args(argv)
        return load(args.module, verb).run(args)
    except SystemExit as e:
        return EXIT_USAGE if e.code not in (0, None) else EXIT_OK
    except Exception as e:
        status = failure_status(e, f"facevoice {verb}".strip())
        if status is None:
            raise
        return status


def exit_with(status: int) -> None:
    """A script's end: `python -m bench.X` and `python -m facevoice` exit through here."""
    sys.exit(status)


def run_script(main_fn, name: str) -> None:
    """`python -m MODULE` for a script outside the verb table (a benchmark, a one-off study): its
    `main()`'s status, or an error's message and status as `main` gives a verb's."""
    try:
        status = main_fn()
    except Exception as e:
        status = failure_status(e, name)
        if status is None:
            raise
    exit_with(status or EXIT_OK)


if __name__ == "__main__":
    exit_with(main())
