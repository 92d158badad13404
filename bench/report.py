"""Write one benchmark's section of docs/benchmarks.md, leaving the other sections alone; and what
every benchmark shares: `--smoke` and `--doc` (`parse`), and the tiny release a smoke run serves
(`smoke_release`)."""

from __future__ import annotations

import argparse
import atexit
import re
import shutil
import tempfile
from pathlib import Path

from facevoice.release import machine  # noqa: F401  (the benches' machine line)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
HEADER = ("# Benchmarks\n\nEach section is written by the script it names; these machines are shared "
          "and noisy, so read the ratios against the baseline measured in the same run, not the "
          "absolute times.\n")
SMOKE_NOTE = "_Smoke run (`--smoke`): tiny data, so the figures say only that the code ran._"
# A smoke value that says "made on the spot": `smoke_release` builds the corpus or indexes it stands for.
MADE = Path("<made by the smoke run>")


def parse(p: argparse.ArgumentParser, argv: list[str] | None = None, doc: Path = DOC,
          smoke: dict | None = None) -> argparse.Namespace:
    """The benchmark's arguments, with the two every benchmark has:
    - `--smoke`: the same code path on tiny data, in seconds (tests/test_bench.py runs each): each
      argument named in `smoke` and left at its default takes the smoke value instead; a value
      MADE (for `corpus`, `index_root`) is a tiny corpus, or its indexes, built by `smoke_release`;
    - `--doc PATH` (default `doc`): the document its section goes to. A smoke run never writes
      under docs/: without --doc its section goes to a temporary file.
    UsageError for a smoke run pointed at docs/."""
    from facevoice.service.errors import UsageError

    p.add_argument("--smoke", action="store_true",
                   help="the same code path on tiny data, in seconds; writes nothing under docs/")
    p.add_argument("--doc", type=Path, default=None,
                   help=f"where its section goes (default {doc.relative_to(ROOT)}; with --smoke a temporary file)")
    args = p.parse_args(argv)
    if args.smoke:
        for name, value in (smoke or {}).items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
        if args.doc is None:
            args.doc = Path(tempfile.mkdtemp(prefix="facevoice-bench-smoke-")) / doc.name
        elif args.doc.resolve().is_relative_to(ROOT / "docs"):
            raise UsageError(f"--smoke never writes under docs/ (--doc {args.doc}): give a --doc elsewhere")
    args.doc = args.doc or doc
    return args


def smoke_release(args: argparse.Namespace) -> argparse.Namespace:
    """For a smoke run, what `make demo` makes and CI lacks, tiny and in a temporary directory
    (removed at exit): a 10-identity corpus where `args.corpus` is MADE, and its test split's
    indexes, built by `args.model_repo` (the committed models/demo), where `args.index_root` is
    (from a corpus of its own when the bench names none)."""
    corpus = getattr(args, "corpus", MADE)
    indexes_made = getattr(args, "index_root", None) == MADE
    if not (indexes_made or (corpus == MADE and hasattr(args, "corpus"))):
        return args
    from facevoice.service.build import IndexBuildOptions, index_build
    from facevoice.training.corpus.synth import SynthConfig, build_corpus

    work = Path(tempfile.mkdtemp(prefix="facevoice-smoke-release-"))
    atexit.register(shutil.rmtree, work, True)
    if corpus == MADE:
        corpus = work / "corpus"
        print(f"smoke: a 10-identity corpus in {corpus} ...", flush=True)
        build_corpus(corpus, SynthConfig(identities=10, seed=3, faces=2, clips=2, workers=2, oracle_trials=0),
                     progress=False)
        if hasattr(args, "corpus"):
            args.corpus = corpus
    if indexes_made:
        args.index_root = work / "indexes"
        print(f"smoke: its test split's indexes in {args.index_root} ...", flush=True)
        index_build(IndexBuildOptions(gallery=corpus / "manifest.csv", model_repo=args.model_repo, out=args.index_root,
                                      split=("test",), no_progress=True))
    return args


def write_section(name: str, body: str, doc: Path = DOC) -> Path:
    """Replaces (or appends) the section between `<!-- bench:NAME -->` markers of `doc`."""
    text = doc.read_text() if doc.exists() else HEADER
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = f"{begin}\n{body.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return doc


def sections_of(text: str, leaving: tuple[str, ...] = ()) -> str:
    """Every `<!-- bench:NAME -->` section of a document but those `leaving` names, in order (what
    a script that rewrites the rest of the document keeps)."""
    return "\n\n".join(m.group(0) for m in re.finditer(r"<!-- bench:([\w-]+) -->.*?<!-- /bench:\1 -->", text, re.S)
                       if m.group(1) not in leaving)


def ratio_table(results: list[tuple[str, float]], unit: str, digits: int = 1) -> str:
    """A markdown table of (configuration, rate) rows with each rate's ratio to the first row, the
    baseline measured in the same run."""
    base = results[0][1]
    return "\n".join([f"| configuration | {unit} | ratio to baseline |", "|---|---|---|",
                      *(f"| {name} | {r:.{digits}f} | {r / base:.{digits + 1}f} |" for name, r in results)])


def publish(name: str, body: str, args: argparse.Namespace) -> Path:
    """Print a benchmark's section and write it into `args.doc` (a smoke run's marked as one)."""
    if args.smoke:
        body = body.rstrip() + "\n\n" + SMOKE_NOTE
    print(body)
    path = write_section(name, body, args.doc)
    print(f"written to {path}")
    return path


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """The served release a service bench runs on: `make demo`'s models, indexes and corpus."""
    p.add_argument("--model-repo", type=Path, default=Path("models/demo"))
    p.add_argument("--index-root", type=Path, default=Path("demo/indexes"))
    p.add_argument("--corpus", type=Path, default=Path("demo/corpus"))
