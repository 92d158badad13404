"""`facevoice demo`: the main job on the embedded default (no Triton, Redis or GPU needed).

By default it serves the released models (`models/demo/`, facevoice.release): builds the demo
corpus they were trained on and checks it is that corpus, verifies every released file against its
SHA-256, builds the test-split gallery indexes, starts the gRPC service in-process and runs
SearchFaces / SearchVoices / Match / ReconstructFace through the client. It prints each query's
hits beside the truth with the true identity's rank, recall through the service beside the
released evaluation, and draws the S2F faces beside the people's photos as one PNG.

`--retrain` keeps the whole pipeline instead: corpus, training (the `small` recipes), evaluation,
export, indexes, queries, then each released figure beside this run's. `--retrain --release DIR`
also writes the run as a release (the only path that changes `models/demo/`).

Each stage is skipped when its artifact already exists (delete it, or pass --force, to redo it).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from facevoice import release as rel
from facevoice.cli import main as cli
from facevoice.service.corpus import Item, read_manifest
from facevoice.service.errors import FormatError, UsageError
from facevoice.service.repository import REPOSITORY_MANIFEST, read_repository_manifest
from facevoice.service.versions import current_version, read_meta

DEMO_IDENTITIES, DEMO_SEED = 300, 0
# The models train on a corpus of their own (issue 30): 1,000 people of another seed, so that
# every person of the demo corpus, whose test split is served and evaluated, is new to them.
TRAIN_IDENTITIES, TRAIN_SEED = 1000, 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo"), help="working directory")
    p.add_argument("--models", type=Path, default=rel.DEFAULT,
                   help="the released model repository to serve (default: this checkout's models/demo)")
    p.add_argument("--retrain", action="store_true",
                   help="train, evaluate and export the models here instead of serving the released ones")
    p.add_argument("--release", type=Path, metavar="DIR",
                   help="with --retrain: write the run as a release to DIR (models/demo to replace ours)")
    p.add_argument("--identities", type=int, help=f"with --retrain: corpus size (default {DEMO_IDENTITIES})")
    p.add_argument("--seed", type=int, help=f"with --retrain: corpus seed (default {DEMO_SEED})")
    p.add_argument("--train-identities", type=int,
                   help=f"with --retrain: people of the training corpus (default {TRAIN_IDENTITIES}; "
                        "0 trains on the demo corpus itself, the recipe before issue 30)")
    p.add_argument("--train-seed", type=int, help=f"with --retrain: training corpus seed (default {TRAIN_SEED})")
    p.add_argument("--people", type=int, default=3, help="people whose queries are printed in full")
    p.add_argument("--grid", type=int, default=8, help="people in the S2F picture grid")
    p.add_argument("--force", action="store_true", help="redo every stage")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs)")
    p.add_argument("--paper-loss", action="store_true",
                   help="with --retrain: train the association model with eq. (1) and hard negatives "
                        "(Kim et al. sec. 4.3) instead of InfoNCE")


# The retrain recipe: about 100 minutes on a 2-core CPU (docs/results.md, "The released demo
# models"). The association model (issue 19, docs/results.md "On people never seen"): both
# backbones pretrained with demographic heads and with heads on cues measured from the media
# (--measures: the face box's aspect, the voice's F0; issue 30), then InfoNCE over batches of 32
# distinct people; validation peaks within 100-300 steps on these backbones. `--paper-loss`
# trains eq. (1) with hard negatives instead. Speech2Face: the committed `small` config as it is
# (run N), on the training corpus's 700 speakers instead of the demo corpus's 210.
FACE_ATTRIBUTES = ["gender", "age_group", "appearance_group"]
VOICE_ATTRIBUTES = ["gender", "age_group", "appearance_group", "first_language"]
FACE_STEPS, VOICE_STEPS = 600, 600
BACKBONE_HEADS = ["--measures"]
ASSOCIATION = ["train.loss=infonce", "train.batch=32", "train.iterations=300", "train.lr_decay_every=100",
               "train.hard_after=150"]
PAPER_ASSOCIATION = ["train.iterations=600", "train.lr_decay_every=200", "train.hard_after=300"]
S2F_FACE, S2F_DECODER, S2F_VOICE = [], [], []  # Speech2Face: the committed `small` as it is (run N)
STAGES = "stages.json"  # each stage's time and the commit the run began at, kept beside the artifacts


def _sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


class Stages:
    """Runs each stage once, times it, and remembers what it made (and each command it ran)."""

    def __init__(self, out: Path, force: bool):
        self.out, self.force, self.log, self.commands = Path(out), force, [], []
        self.started = time.perf_counter()
        self.first_answer: float | None = None
        self.times_now: set[str] = set()  # the stages this run made (not reused)
        try:
            kept = {} if force else json.loads((self.out / STAGES).read_text())  # --force: a new run
        except (OSError, ValueError):
            kept = {}
        self.times: dict[str, float] = dict(kept.get("times", {}))
        self.commit: str | None = kept.get("commit")  # the commit the first stage ran at

    def __call__(self, name: str, artifact: Path, make: Callable[[], None] | None,
                 argv: list[str] | None = None) -> None:
        """Makes ARTIFACT by running the CLI with ARGV (recorded as a release's command), or MAKE."""
        if argv is not None:
            self.commands.append(argv)
        if artifact.exists() and not self.force:
            took = f"(took {self.times[name]:.0f} s)" if name in self.times else ""
            self.log.append(f"  {name:<22} reused {artifact} {took}")
            return
        print(f"\n== demo: {name} ==", flush=True)
        start = time.perf_counter()
        self.commit = self.commit or rel.git_commit()
        if argv is not None:
            check(cli(argv), name)
        else:
            make()
        self.times[name] = time.perf_counter() - start
        self.times_now.add(name)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / STAGES).write_text(json.dumps({"commit": self.commit, "times": self.times}, indent=2))
        self.log.append(f"  {name:<22} {self.times[name]:>6.0f} s  -> {artifact}")

    def answered(self) -> None:
        if self.first_answer is None:
            self.first_answer = time.perf_counter() - self.started


def check(code: int, what: str) -> None:
    if code != 0:
        raise SystemExit(f"demo: {what} failed (exit {code})")


def run(args: argparse.Namespace) -> int:
    if not args.retrain:
        retrain_only = [f for f, v in (("--release", args.release), ("--identities", args.identities),
                                        ("--seed", args.seed), ("--train-identities", args.train_identities),
                                        ("--train-seed", args.train_seed), ("--paper-loss", args.paper_loss or None))
                        if v is not None and v is not False]
        if retrain_only:
            raise UsageError(f"{', '.join(retrain_only)}: only with --retrain (the released models fix the corpus)")
        return serve_release(args)
    return retrain(args)


def build_corpus_stage(stage: Stages, corpus: Path, identities: int, seed: int, progress: bool,
                       guarded: bool = True, face_render: int | None = None, name: str = "corpus") -> None:
    """The corpus; `guarded` False makes it as the generator did before the service's guards, and
    `face_render` 1 draws faces as before issue 30 (what a release made then was trained on, and
    its record says so by saying nothing). None: today's painter."""
    from facevoice.training.corpus.faces import FACE_RENDER

    face_render = FACE_RENDER if face_render is None else face_render

    def make():
        from facevoice.training.corpus.synth import SynthConfig, build_corpus, format_summary

        cfg = SynthConfig(identities=identities, seed=seed, guarded=guarded, face_render=face_render)
        print(format_summary(build_corpus(corpus, cfg, force=True, progress=progress)))

    stage.commands.append(["corpus", "synth", "--out", str(corpus), "--identities", str(identities),
                           "--seed", str(seed), *([] if guarded else ["--unguarded"]),
                           *([] if face_render == FACE_RENDER else ["--face-render", str(face_render)])])
    stage(name, corpus / "corpus.json", make)


def index_stage(stage: Stages, repo: Path, corpus: Path, indexes: Path, quiet: list[str]) -> None:
    """Builds the test split's indexes, again when those there were built by other models."""
    manifest = read_repository_manifest(repo)
    for name, space in manifest.indexed().items():
        version = current_version(indexes, name)
        if version is not None and read_meta(indexes, name, version).get("model_version") != space.version:
            print(f"demo: {indexes}/{name} was built by other models; building it again", flush=True)
            shutil.rmtree(indexes)
            break
    stage("index build", indexes / "face" / "current", None,
          ["index", "build", "--gallery", str(corpus / "manifest.csv"), "--model-repo", str(repo), "--out",
           str(indexes), "--split", "test", *quiet])


def serve_release(args: argparse.Namespace) -> int:
    """The default: the released models, verified, on a corpus checked to be theirs."""
    out, models = args.out, args.models
    progress = not args.no_progress
    stage = Stages(out, args.force)
    release = rel.read_release(models)
    c = release["corpus"]
    corpus = out / "corpus"
    print(f"demo: serving the released models in {models} (trained at {release['commit'][:12]}, "
          f"{release['created']}); `--retrain` trains them here instead", flush=True)
    guarded, face_render = c.get("guarded", False), c.get("face_render", 1)
    build_corpus_stage(stage, corpus, c["identities"], c["seed"], progress, guarded, face_render)
    if "corpus" not in stage.times_now and rel.same_corpus(corpus, c):
        print(f"demo: {corpus} is not the corpus the released models were trained on (an older one?); "
              "building it again", flush=True)
        shutil.rmtree(corpus)
        build_corpus_stage(stage, corpus, c["identities"], c["seed"], progress, guarded, face_render)
    if differs := rel.same_corpus(corpus, c):
        raise FormatError(f"{corpus}: {', '.join(differs)} differ from the corpus the released models were trained on "
                          f"(seed {c['seed']}, {c['identities']} people): the corpus generator has changed since they "
                          "were released. Train them anew: facevoice demo --retrain (--release DIR to release them)")
    print("\n== demo: verify the released models ==", flush=True)  # every time: a reused check is none
    t = time.perf_counter()
    with tqdm(total=len(release["files"]), desc="verifying released files", unit="file", disable=not progress) as bar:
        rel.verify_release(models, bar.update)
    print(f"{len(release['files'])} files match their SHA-256 in {models / rel.RELEASE}")
    stage.log.append(f"  {'verify models':<22} {time.perf_counter() - t:>6.2f} s  ({models}, every file)")
    indexes = out / "indexes"
    index_stage(stage, models, corpus, indexes, [] if progress else ["--no-progress"])
    print("\n== demo: queries through the gRPC service (embedded default) ==", flush=True)
    serve_and_query(models, indexes, corpus, out / "queries", people=args.people, grid=args.grid,
                    figures=release["figures"], progress=progress, echo=True, on_answer=stage.answered)
    print(summary(out, stage, models, "released"))
    return 0


def retrain(args: argparse.Namespace) -> int:
    """Today's whole pipeline: corpus, training, evaluation, export, indexes, queries."""
    out = args.out
    identities = DEMO_IDENTITIES if args.identities is None else args.identities
    seed = DEMO_SEED if args.seed is None else args.seed
    train_identities = TRAIN_IDENTITIES if args.train_identities is None else args.train_identities
    train_seed = TRAIN_SEED if args.train_seed is None else args.train_seed
    if train_identities and train_seed == seed:
        raise UsageError(f"--train-seed {train_seed} is the demo corpus's seed: the two corpora would share "
                         "people, and the served test split would not be new to the models")
    if train_identities < 0 or (0 < train_identities < 10):
        raise UsageError(f"--train-identities {train_identities}: 0 (the demo corpus) or at least 10")
    corpus, runs = out / "corpus", out / "runs"
    train_corpus = out / "train-corpus" if train_identities else corpus
    quiet = ["--no-progress"] if args.no_progress else []
    stage = Stages(out, args.force)
    build_corpus_stage(stage, corpus, identities, seed, not args.no_progress)
    if train_identities:
        build_corpus_stage(stage, train_corpus, train_identities, train_seed, not args.no_progress,
                           name="training corpus")
    c = ["--corpus", str(train_corpus), "--config", "small"]
    bb = runs / "backbones"
    stage("face backbone", bb / "face_backbone.pt", None,
          ["train", "backbones", *c, "--out", str(bb), "--steps", str(FACE_STEPS), "--modalities", "face",
           "--attributes", *FACE_ATTRIBUTES, *BACKBONE_HEADS, *quiet])
    stage("voice backbone", bb / "voice_backbone.pt", None,
          ["train", "backbones", *c, "--out", str(bb), "--steps", str(VOICE_STEPS), "--modalities", "voice",
           "--attributes", *VOICE_ATTRIBUTES, *BACKBONE_HEADS, *quiet])
    assoc = runs / "association"
    stage("association", assoc / "best.pt", None,
          ["train", "association", *c, "--direction", "both", "--out", str(assoc), "--cache-dir", str(bb / "cache"),
           "--face-weights", str(bb / "face_backbone.pt"), "--voice-weights", str(bb / "voice_backbone.pt"),
           *_sets(PAPER_ASSOCIATION if args.paper_loss else ASSOCIATION), *quiet])
    stage("association eval", assoc / "report" / "metrics.json", None,
          ["eval", "association", "--run", str(assoc), "--corpus", str(corpus), "--out", str(assoc / "report"),
           "--cache-dir", str(bb / "cache"), *quiet])  # cached per corpus: the demo corpus's test split
    s2f_cache = ["--cache-dir", str(runs / "s2f-cache")]
    face_net, decoder, s2f = runs / "s2f-face" / "face_net.pt", runs / "s2f-decoder" / "decoder.pt", runs / "s2f"
    stage("s2f face network", face_net, None,
          ["train", "face-features", *c, *s2f_cache, "--out", str(face_net.parent), *_sets(S2F_FACE), *quiet])
    stage("s2f face decoder", decoder, None,
          ["train", "face-decoder", *c, *s2f_cache, "--out", str(decoder.parent), "--face-net", str(face_net),
           *_sets(S2F_DECODER), *quiet])
    stage("s2f voice encoder", s2f / "best.pt", None,
          ["train", "s2f", *c, *s2f_cache, "--out", str(s2f), "--face-net", str(face_net), "--decoder", str(decoder),
           *_sets(S2F_VOICE), *quiet])
    stage("s2f eval", s2f / "report" / "metrics.json", None,
          ["eval", "s2f", "--run", str(s2f), "--corpus", str(corpus), "--out", str(s2f / "report"), *s2f_cache,
           *quiet])
    repo, indexes = out / "model_repo", out / "indexes"
    if (repo / REPOSITORY_MANIFEST).exists():
        try:
            read_repository_manifest(repo)
        except FormatError:  # an export of an older format: export again
            (repo / REPOSITORY_MANIFEST).unlink()
    export = ["export", "--association", str(assoc), "--s2f", str(s2f), "--out", str(repo)]
    stage("export", repo / REPOSITORY_MANIFEST,
          lambda: (shutil.rmtree(repo, ignore_errors=True), check(cli(export), "export")))
    stage.commands.append(export)
    index_stage(stage, repo, corpus, indexes, quiet)
    figures = rel.figures(json.loads((assoc / "report" / "metrics.json").read_text()),
                          json.loads((s2f / "report" / "metrics.json").read_text()))
    print("\n== demo: queries through the gRPC service (embedded default) ==", flush=True)
    serve_and_query(repo, indexes, corpus, out / "queries", people=args.people, grid=args.grid,
                    figures=figures, progress=not args.no_progress, echo=True, on_answer=stage.answered)
    lines = []
    try:
        released = rel.read_release(args.models)
    except FormatError:
        released = None
    if released is not None:
        rows = rel.compare(released["figures"], figures)
        text = rel.format_comparison(rows)
        (out / "against_release.json").write_text(json.dumps(rows, indent=2))
        lines.append(f"\nthis run's figures beside the release in {args.models}:\n{text}")
    if args.release:
        info = {"commit": stage.commit or rel.git_commit(), "released_at": rel.git_commit(),
                "corpus": rel.corpus_record(corpus, seed, identities),
                **({"train_corpus": rel.corpus_record(train_corpus, train_seed, train_identities)}
                   if train_identities else {}),
                "commands": [f"facevoice demo --retrain --out demo --release {args.release}"]
                + ["facevoice " + shlex.join(_portable(a, out)) for a in stage.commands],
                "stage_seconds": {k: round(v, 1) for k, v in stage.times.items()},
                "machine": rel.machine(), "figures": figures}
        made = rel.write_release(repo, args.release, runs={"association": "demo/runs/association",
                                                           "speech2face": "demo/runs/s2f"}, info=info)
        lines.append(f"\nreleased to {args.release}: {len(made['files'])} files, their SHA-256 in "
                     f"{args.release / rel.RELEASE}")
    print("\n".join(lines))
    print(summary(out, stage, repo, "trained here"))
    return 0


def _portable(argv: list[str], out: Path) -> list[str]:
    """A command as run under OUT, written as under `demo` (what a reader types after `make demo`)."""
    prefix = str(out)
    return [("demo" + a[len(prefix):]) if a == prefix or a.startswith(prefix + "/") else a for a in argv
            if a != "--no-progress"]


def test_rows(corpus: Path) -> list[Item]:
    return [i for i in read_manifest(corpus) if i.split == "test" and i.modality in ("face", "voice")]


def people_of_test_split(corpus: Path, n: int) -> list[dict[str, Item]]:
    """The first n test identities with a face and a voice: {modality: manifest row}."""
    people: dict[str, dict] = {}
    for r in test_rows(corpus):
        people.setdefault(r.identity, {}).setdefault(r.modality, r)
    return [p for p in people.values() if len(p) == 2][:n]


def service_recall(stub, corpus: Path, ks: tuple[int, ...] = (1, 5, 10),
                   progress: bool = False) -> dict[str, dict[int, float]]:
    """Recall@K through the service: every test voice against the face index and back (Kim et al.
    sec. 4.4's retrieval, with the served gallery as the gallery). A query the service's guards
    refuse (no face, no speech) counts as a miss."""
    import grpc

    from facevoice.v1 import facevoice_pb2 as pb

    hits: dict[str, list[list[bool]]] = {"v2f": [], "f2v": []}
    refused = 0
    for r in tqdm(test_rows(corpus), desc="recall through the service", unit="query", disable=not progress):
        data = (corpus / r.path).read_bytes()
        direction = "v2f" if r.modality == "voice" else "f2v"
        try:
            if r.modality == "voice":
                found = stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=data), top_k=max(ks)), timeout=60)
            else:
                found = stub.SearchVoices(pb.SearchVoicesRequest(face=pb.Image(data=data), top_k=max(ks)), timeout=60)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            refused += 1
            hits[direction].append([])
            continue
        hits[direction].append([h.identity == r.identity for h in found.hits])
    if refused:
        print(f"demo: the service's guards refused {refused} of the test split's queries (counted as misses)")
    return {d: {k: sum(any(h[:k]) for h in rows_) / max(len(rows_), 1) for k in ks} for d, rows_ in hits.items()}


def people_for_grid(corpus: Path, n: int) -> list[dict[str, Item]]:
    """Up to N test people with a face and a voice, women and men alternating (so a decoder that
    draws one face per gender shows as two faces)."""
    people = people_of_test_split(corpus, 10_000)
    by = {g: [p for p in people if p["face"].gender == g] for g in sorted({p["face"].gender for p in people})}
    out: list[dict[str, Item]] = []
    while len(out) < n and any(by.values()):
        for g in by:
            if by[g] and len(out) < n:
                out.append(by[g].pop(0))
    return out


def identity_rank(hits, identity: str) -> int | None:
    """The true identity's rank among the distinct identities of HITS (1 = first); None if absent."""
    seen: list[str] = []
    for h in hits:
        if h.identity not in seen:
            seen.append(h.identity)
        if h.identity == identity:
            return len(seen)
    return None


TRUTH = ("gender", "age_group", "appearance_group")


def beside_truth(hits, truth: Item, top_k: int) -> str:
    """The first TOP_K hits, each with its attributes and which of them are the truth's."""
    lines = [f"  {'rank':>4}  {'identity':<10} {'score':>7}  {'gender':<7} {'age':<5} {'group':<5}  same as the truth"]
    for k, h in enumerate(hits[:top_k], 1):
        same = ["THE PERSON"] if h.identity == truth.identity else \
            [a for a in TRUTH if h.attributes.get(a) == getattr(truth, a)]
        a = [h.attributes.get(x, "?") for x in TRUTH]
        lines.append(f"  {k:>4}  {h.identity:<10} {h.score:>7.4f}  {a[0]:<7} {a[1]:<5} {a[2]:<5}  "
                     + (", ".join(same) or "-"))
    return "\n".join(lines)


def _rank_text(rank: int | None, people: int, searched: int) -> str:
    return (f"the true identity is rank {rank} of {people} people" if rank is not None
            else f"the true identity is not in the first {searched} hits")


def s2f_grid(cells: list[tuple[str, bytes, bytes]], path: Path, size: int = 128) -> None:
    """One PNG: for each person (label, photo bytes, S2F PNG bytes) the photo above the face drawn
    from their voice."""
    import io

    from PIL import Image, ImageDraw

    label_h, pad = 30, 4
    width = len(cells) * (size + pad) + pad
    grid = Image.new("RGB", (width, 2 * size + label_h + 3 * pad + 14), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((pad, 2), "top: the person's photo    bottom: ReconstructFace from their voice (Speech2Face)",
              fill="black")
    for k, (label, photo, png) in enumerate(cells):
        x = pad + k * (size + pad)
        for row, data in enumerate((photo, png)):
            im = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BICUBIC)
            grid.paste(im, (x, 14 + row * (size + pad)))
        for n, text in enumerate(label.split("\n")[:2]):
            draw.text((x, 14 + 2 * (size + pad) + n * 12), text, fill="black")
    grid.save(path)


def serve_and_query(repo: Path, indexes: Path, corpus: Path, out: Path, people: int = 3, top_k: int = 5,
                    grid: int = 8, figures: dict | None = None, progress: bool = False, echo: bool = False,
                    on_answer: Callable[[], None] | None = None) -> str:
    """Starts the service on a free port, queries it through the gRPC client, stops it; returns
    the readable result: each query's hits beside the truth and the true identity's rank, Match,
    ReconstructFace, recall through the service beside FIGURES (the evaluation's, release.figures
    names), and OUT/s2f_grid.png (the S2F faces beside the photos)."""
    import grpc

    from facevoice.service.handlers import MAX_TOP_K
    from facevoice.service.serve import Running, ServeConfig
    from facevoice.v1 import facevoice_pb2 as pb
    from facevoice.v1 import facevoice_pb2_grpc as pb_grpc

    out.mkdir(parents=True, exist_ok=True)
    running = Running(ServeConfig(model_repo=repo, index_root=indexes, host="127.0.0.1", port=0, metrics_port=-1,
                                  poll_s=0.0))
    stub = pb_grpc.FaceVoiceStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
    lines = [f"service on 127.0.0.1:{running.port} ({running.embedder.runner.name} runner, models {repo})"]
    found = {"SearchFaces": 0, "SearchVoices": 0, "Match": 0}
    chosen = people_of_test_split(corpus, people + 1)
    gallery_people = len({r.identity for r in test_rows(corpus)})
    shown = 0
    try:
        for k, person in enumerate(chosen[:people]):
            face_row, voice_row = person["face"], person["voice"]
            ident = face_row.identity
            truth = " ".join(f"{a}={getattr(face_row, a)}" for a in TRUTH)
            voice = pb.Audio(data=(corpus / voice_row.path).read_bytes())
            face = pb.Image(data=(corpus / face_row.path).read_bytes())
            lines.append(f"\n{ident}, the truth: {truth}")
            r = stub.SearchFaces(pb.SearchFacesRequest(voice=voice, top_k=MAX_TOP_K), timeout=60)
            rank = identity_rank(r.hits, ident)
            found["SearchFaces"] += rank is not None and rank <= top_k
            lines += [f" SearchFaces, voice {voice_row.path}: {_rank_text(rank, gallery_people, len(r.hits))}",
                      beside_truth(r.hits, face_row, top_k)]
            if echo:
                print("\n".join(lines[shown:]), flush=True)  # each answer as soon as it is there
                shown = len(lines)
            if on_answer:
                on_answer()
            r = stub.SearchVoices(pb.SearchVoicesRequest(face=face, top_k=MAX_TOP_K), timeout=60)
            rank = identity_rank(r.hits, ident)
            found["SearchVoices"] += rank is not None and rank <= top_k
            lines += [f" SearchVoices, face {face_row.path}: {_rank_text(rank, gallery_people, len(r.hits))}",
                      beside_truth(r.hits, face_row, top_k)]
            other = chosen[(k + 1) % len(chosen)]["face"]
            m = stub.Match(pb.MatchRequest(probe=pb.Media(audio=voice), candidates=[
                pb.Media(image=face), pb.Media(image=pb.Image(data=(corpus / other.path).read_bytes()))]),
                timeout=60)
            right = m.ranking[0].index == 0
            found["Match"] += right
            lines.append(f" Match, voice vs [{ident}, {other.identity}]: chose "
                         f"{[ident, other.identity][m.ranking[0].index]} ({'right' if right else 'wrong'})")
            try:
                rec = stub.ReconstructFace(pb.ReconstructFaceRequest(voice=voice, top_k=3), timeout=60)
                path = out / f"{ident}_s2f.png"
                path.write_bytes(rec.png)
                lines.append(f" ReconstructFace -> {path}; nearest by face feature: "
                             + ", ".join(f"{h.identity} ({h.attributes.get('gender', '?')})" for h in rec.nearest))
            except grpc.RpcError as e:
                lines.append(f" ReconstructFace: {e.code().name}: {e.details()}")
            if echo:
                print("\n".join(lines[shown:]), flush=True)
                shown = len(lines)
        cells = []
        for p in tqdm(people_for_grid(corpus, grid), desc="S2F grid", unit="person", disable=not progress):
            try:
                rec = stub.ReconstructFace(pb.ReconstructFaceRequest(
                    voice=pb.Audio(data=(corpus / p["voice"].path).read_bytes())), timeout=60)
            except grpc.RpcError as e:
                lines.append(f"\nS2F grid: ReconstructFace {e.code().name}: {e.details()}")
                cells = []
                break
            f = p["face"]
            cells.append((f"{f.identity}\n{f.gender} {f.age_group} {f.appearance_group}",
                          (corpus / f.path).read_bytes(), rec.png))
        if cells:
            s2f_grid(cells, out / "s2f_grid.png")
            lines.append(f"\nS2F faces beside the photos of {len(cells)} test people: {out / 's2f_grid.png'}")
        recall = service_recall(stub, corpus, progress=progress)
    finally:
        running.stop(0)
    for d, arrow, name in (("v2f", "V->F", "voice -> faces"), ("f2v", "F->V", "face -> voices")):
        line = f"\nrecall@1/5/10 through the service, every test {name}: " + \
            " / ".join(f"{100 * v:.1f}%" for v in recall[d].values())
        offline = (figures or {}).get(f"association {arrow} recall@10")
        if offline:
            line += f"  (the evaluation's recall@10: {100 * offline['value']:.1f}%; {offline['what']})"
        lines.append(line)
    n = min(people, len(chosen))
    lines.append(f"\ntrue identity in the top {top_k}: SearchFaces {found['SearchFaces']}/{n}, "
                 f"SearchVoices {found['SearchVoices']}/{n}; Match right {found['Match']}/{n} "
                 f"(chance: top-{top_k} of {gallery_people} test people ~{top_k / max(gallery_people, 1):.0%}, "
                 "Match 50%)")
    text = "\n".join(lines)
    (out / "queries.txt").write_text(text + "\n")
    if echo:
        print("\n".join(lines[shown:]), flush=True)
    return text


def summary(out: Path, stage: Stages, repo: Path, which: str) -> str:
    lines = ["", f"demo finished in {time.perf_counter() - stage.started:.0f} s"
             + (f"; the first answer came {stage.first_answer:.0f} s after the start" if stage.first_answer else "")
             + "; stages:", *stage.log]
    for name, path in (("association", out / "runs/association/report/metrics.json"),
                       ("speech2face", out / "runs/s2f/report/metrics.json")):
        if path.exists():
            lines.append(f"  {name} report: {path.parent / 'report.md'}")
    lines += [f"  models ({which}): {repo}",
              f"  look: {out}/queries/s2f_grid.png (S2F faces beside the photos), {out}/queries/queries.txt",
              f"  serve it yourself: facevoice serve --model-repo {repo} --index-root {out}/indexes",
              "  then: facevoice query faces --voice FILE | query voices --face FILE | query reconstruct ..."]
    return "\n".join(lines)
