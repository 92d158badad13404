"""`facevoice demo`: the main job on the embedded default (no Triton, Redis or GPU needed).

By default it serves the released models (`models/demo/`, facevoice.release): builds the demo
corpus they were trained on and checks it is that corpus, verifies every released file against its
SHA-256, builds the test-split gallery indexes, starts the gRPC service in-process and runs
SearchFaces / SearchVoices / Match / ReconstructFace through the client (facevoice.showcase).

`--retrain` runs a recipe instead (facevoice/recipes/demo.toml, the released models' own, unless
`--recipe` names another): corpus, training, evaluation, export, indexes, queries, then each
released figure beside this run's (facevoice.pipeline). `--retrain --release DIR` also writes the
run as a release (the only path that changes `models/demo/`).

Each stage is skipped when its artifact already exists (delete it, or pass --force, to redo it).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from facevoice import release as rel
from facevoice.cli import command_line, options
from facevoice.pipeline import Stages, corpus_stage, index_stage, release_run, retrain, with_corpora
from facevoice.recipe import CorpusRecipe, load_recipe
from facevoice.service.errors import FormatError, UsageError
from facevoice.showcase import serve_and_query


@dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("demo")
    models: Path = rel.DEFAULT  # the released model repository to serve
    retrain: bool = False
    recipe: str = "demo"  # with retrain: a recipe's name (facevoice/recipes) or a TOML file
    release: Path | None = None  # with retrain: write the run as a release here
    identities: int | None = None  # with retrain: the recipe's corpus size ...
    seed: int | None = None  # ... and seed,
    train_identities: int | None = None  # and its training corpus's (0: train on the demo corpus)
    train_seed: int | None = None
    people: int = 3  # people whose queries are printed in full
    grid: int = 8  # people in the S2F picture grid
    force: bool = False  # redo every stage
    no_progress: bool = False


@dataclass(frozen=True)
class DemoResult:
    out: Path
    repo: Path  # the models served
    which: str  # "released" or "trained here"
    seconds: float
    first_answer: float | None  # seconds from the start to the first answer through the service
    stages: list[str] = field(default_factory=list)  # each stage's line: made (its time) or reused
    queries: str = ""  # the showcase's text (also in OUT/queries/queries.txt)
    comparison: str = ""  # with retrain and a release to compare with: each figure beside it
    released: rel.Release | None = None  # with retrain and release: what was written ...
    release_dir: Path | None = None  # ... and where

    def summary(self) -> str:
        lines = [self.comparison] if self.comparison else []
        if self.released is not None:
            lines.append(f"\nreleased to {self.release_dir}: {len(self.released.files)} files, their SHA-256 in "
                         f"{self.release_dir / rel.RELEASE}")
        lines += ["", f"demo finished in {self.seconds:.0f} s"
                  + (f"; the first answer came {self.first_answer:.0f} s after the start" if self.first_answer else "")
                  + "; stages:", *self.stages]
        if self.which == "trained here":
            lines += [f"  {name} report: {self.out / 'runs' / run / 'report' / 'report.md'}"
                      for name, run in (("association", "association"), ("speech2face", "s2f"))]
        lines += [f"  models ({self.which}): {self.repo}",
                  f"  look: {self.out}/queries/s2f_grid.png (S2F faces beside the photos), "
                  f"{self.out}/queries/queries.txt",
                  f"  serve it yourself: facevoice serve --model-repo {self.repo} --index-root {self.out}/indexes",
                  "  then: facevoice query faces --voice FILE | query voices --face FILE | query reconstruct ..."]
        return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DemoOptions
    p.add_argument("--out", type=Path, default=d.out, help="working directory")
    p.add_argument("--models", type=Path, default=d.models,
                   help="the released model repository to serve (default: this checkout's models/demo)")
    p.add_argument("--retrain", action="store_true",
                   help="train, evaluate and export the models here instead of serving the released ones")
    p.add_argument("--recipe", default=d.recipe,
                   help="with --retrain: a recipe's name (demo, the released one; paper-loss) or a TOML file")
    p.add_argument("--release", type=Path, metavar="DIR",
                   help="with --retrain: write the run as a release to DIR (models/demo to replace ours)")
    p.add_argument("--identities", type=int, help="with --retrain: the demo corpus's size (the recipe's otherwise)")
    p.add_argument("--seed", type=int, help="with --retrain: the demo corpus's seed")
    p.add_argument("--train-identities", type=int,
                   help="with --retrain: people of the training corpus (0 trains on the demo corpus itself)")
    p.add_argument("--train-seed", type=int, help="with --retrain: the training corpus's seed")
    p.add_argument("--people", type=int, default=d.people, help="people whose queries are printed in full")
    p.add_argument("--grid", type=int, default=d.grid, help="people in the S2F picture grid")
    p.add_argument("--force", action="store_true", help="redo every stage")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs)")


def demo(opts: DemoOptions) -> DemoResult:
    """The released models served and queried; with `retrain`, a recipe run end to end first."""
    if not opts.retrain:
        retrain_only = [f for f, v in (("--release", opts.release), ("--identities", opts.identities),
                                        ("--seed", opts.seed), ("--train-identities", opts.train_identities),
                                        ("--train-seed", opts.train_seed),
                                        ("--recipe", None if opts.recipe == DemoOptions.recipe else opts.recipe))
                        if v is not None]
        if retrain_only:
            raise UsageError(f"{', '.join(retrain_only)}: only with --retrain (the released models fix the corpus)")
        return serve_release(opts)
    return retrain_and_serve(opts)


def serve_release(opts: DemoOptions) -> DemoResult:
    """The default: the released models, verified, on a corpus checked to be theirs."""
    out, models, progress = opts.out, opts.models, not opts.no_progress
    stage = Stages(out, opts.force)
    release = rel.Release.read(models)
    c = release.corpus
    corpus = out / "corpus"
    print(f"demo: serving the released models in {models} (trained at {release.commit[:12]}, "
          f"{release.created}); `--retrain` trains them here instead", flush=True)
    spec, guarded, face_render = CorpusRecipe(c["identities"], c["seed"]), c.get("guarded", False), \
        c.get("face_render", 1)
    corpus_stage(stage, corpus, spec, progress, guarded, face_render)
    if "corpus" not in stage.made and rel.corpus_differences(corpus, c):
        print(f"demo: {corpus} is not the corpus the released models were trained on (an older one?); "
              "building it again", flush=True)
        stage.force = True
        corpus_stage(stage, corpus, spec, progress, guarded, face_render)
        stage.force = opts.force
    if differs := rel.corpus_differences(corpus, c):
        raise FormatError(f"{corpus}: {', '.join(differs)} differ from the corpus the released models were trained on "
                          f"(seed {c['seed']}, {c['identities']} people): the corpus generator has changed since they "
                          "were released. Train them anew: facevoice demo --retrain (--release DIR to release them)")
    print("\n== demo: verify the released models ==", flush=True)  # every time: a reused check is none
    t = time.perf_counter()
    with tqdm(total=len(release.files), desc="verifying released files", unit="file", disable=not progress) as bar:
        rel.verify_release(models, bar.update)
    print(f"{len(release.files)} files match their SHA-256 in {models / rel.RELEASE}")
    stage.log.append(f"  {'verify models':<22} {time.perf_counter() - t:>6.2f} s  ({models}, every file)")
    indexes = out / "indexes"
    index_stage(stage, models, corpus, indexes, progress)
    print("\n== demo: queries through the gRPC service (embedded default) ==", flush=True)
    text = serve_and_query(models, indexes, corpus, out / "queries", people=opts.people, grid=opts.grid,
                           figures=release.figures, progress=progress, echo=True, on_answer=stage.answered)
    return DemoResult(out, models, "released", time.perf_counter() - stage.started, stage.first_answer, stage.log,
                      text)


def retrain_and_serve(opts: DemoOptions) -> DemoResult:
    """A recipe's pipeline, its models served and queried, its figures beside the release's."""
    recipe = with_corpora(load_recipe(opts.recipe), opts.identities, opts.seed, opts.train_identities,
                          opts.train_seed)
    out, progress = opts.out, not opts.no_progress
    stage = Stages(out, opts.force)
    print(f"demo: retraining by the recipe {recipe.name!r} ({recipe.path})", flush=True)
    trained = retrain(stage, recipe, out, progress)
    indexes = out / "indexes"
    index_stage(stage, trained.repo, trained.corpus, indexes, progress)
    print("\n== demo: queries through the gRPC service (embedded default) ==", flush=True)
    text = serve_and_query(trained.repo, indexes, trained.corpus, out / "queries", people=opts.people,
                           grid=opts.grid, figures=trained.figures, progress=progress, echo=True,
                           on_answer=stage.answered)
    comparison = ""
    try:
        released = rel.Release.read(opts.models)
    except FormatError:
        released = None
    if released is not None:
        rows = rel.compare(released.figures, trained.figures)
        rel.Comparison(str(opts.models), rows).write(out)
        comparison = f"\nthis run's figures beside the release in {opts.models}:\n{rel.format_comparison(rows)}"
    made = None
    if opts.release:  # the command as a reader types it after `make demo` (its output under demo/)
        argv = command_line(("demo",), replace(opts, out=Path("demo")), always=("retrain",),
                            omit=("no_progress", "force", "models"))
        made = release_run(stage, trained, recipe, opts.release, argv)
    return DemoResult(out, trained.repo, "trained here", time.perf_counter() - stage.started, stage.first_answer,
                      stage.log, text, comparison, made, opts.release)


def run(args: argparse.Namespace) -> int:
    print(demo(options(DemoOptions, args)).summary())
    return 0
