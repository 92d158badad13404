"""`facevoice demo`'s pipeline: each stage a verb's function called with its options, skipped when
its artifact exists, timed, and recorded as the command a reader would type under `demo/` (what
release.json's `commands` lists). `retrain` runs a recipe (facevoice/recipes) from corpus to
exported models; `corpus_stage` and `index_stage` serve the released models' path too."""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from facevoice import release as rel
from facevoice.cli import command_line
from facevoice.recipe import CorpusRecipe, Recipe
from facevoice.service.errors import FormatError
from facevoice.service.records import JsonRecord
from facevoice.service.repository import REPOSITORY_MANIFEST, read_repository_manifest

BACKBONE_FIELDS = ("config", "steps", "modalities", "attributes")  # what the recipe sets, recorded as set


@dataclass(frozen=True)
class StagesRecord(JsonRecord):
    """stages.json, beside the artifacts: the commit the run began at and each stage's time, so a
    run that reuses a stage still reports (and releases) how long it took."""

    FILE: ClassVar[str] = "stages.json"
    WHAT: ClassVar[str] = "a demo run's stages.json"

    commit: str | None = None
    times: dict[str, float] = field(default_factory=dict)
    details: dict = field(default_factory=dict)


class Stages:
    """Runs each stage once, times it, and remembers what it made and the command it equals."""

    def __init__(self, out: Path, force: bool):
        self.out, self.force, self.log, self.commands = Path(out), force, [], []
        self.started = time.perf_counter()
        self.first_answer: float | None = None
        self.made: set[str] = set()  # the stages this run made (not reused)
        try:
            kept = None if force else StagesRecord.find(self.out)  # --force: a new run
        except FormatError:  # a damaged record costs only the earlier stages' times
            kept = None
        self.times: dict[str, float] = dict(kept.times) if kept else {}
        self.commit: str | None = kept.commit if kept else None  # the commit the first stage ran at

    def run(self, name: str, artifact: Path, verb: tuple[str, ...], fn: Callable, opts, *,
            always: tuple[str, ...] = (), omit: tuple[str, ...] = (), **kw):
        """fn(opts, **kw) unless ARTIFACT exists; its result (None when reused). The command is
        recorded with the options named in `always` even at their defaults (what the recipe sets)."""
        self.commands.append(command_line(verb, opts, always, omit))
        if artifact.exists() and not self.force:
            took = f"(took {self.times[name]:.0f} s)" if name in self.times else ""
            self.log.append(f"  {name:<22} reused {artifact} {took}")
            return None
        print(f"\n== demo: {name} ==", flush=True)
        start = time.perf_counter()
        self.commit = self.commit or rel.git_commit()
        result = fn(opts, **kw)
        print(result.summary(), flush=True)
        self.times[name] = time.perf_counter() - start
        self.made.add(name)
        StagesRecord(self.commit, self.times).write(self.out)
        self.log.append(f"  {name:<22} {self.times[name]:>6.0f} s  -> {artifact}")
        return result

    def answered(self) -> None:
        if self.first_answer is None:
            self.first_answer = time.perf_counter() - self.started

    def portable_commands(self) -> list[str]:
        """Each command as run under OUT, written as under `demo` (what a reader types after `make demo`)."""
        prefix = str(self.out)
        return ["facevoice " + shlex.join([("demo" + a[len(prefix):]) if a == prefix or a.startswith(prefix + "/")
                                           else a for a in argv if a != "--no-progress"]) for argv in self.commands]


def corpus_stage(stage: Stages, corpus: Path, spec: CorpusRecipe, progress: bool, guarded: bool = True,
                 face_render: int | None = None, name: str = "corpus") -> None:
    """The corpus; `guarded` False makes it as the generator did before the service's guards, and
    `face_render` 1 draws faces as before issue 30 (what a release made then was trained on)."""
    from facevoice.training.corpus.faces import FACE_RENDER
    from facevoice.training.corpus.synth import CorpusSynthOptions, corpus_synth

    opts = CorpusSynthOptions(out=corpus, identities=spec.identities, seed=spec.seed, unguarded=not guarded,
                              face_render=FACE_RENDER if face_render is None else face_render, force=True)
    # a reader's corpus directory is new: the record leaves out the --force a rebuild needs here
    stage.run(name, corpus / "corpus.json", ("corpus", "synth"), corpus_synth, opts, always=("identities", "seed"),
              omit=("force",), progress=progress)


def index_stage(stage: Stages, repo: Path, corpus: Path, indexes: Path, progress: bool) -> None:
    """The test split's indexes, built again when those there were built by other models."""
    from facevoice.service.build import IndexBuildOptions, index_build
    from facevoice.service.versions import current_version, read_meta

    for name, space in read_repository_manifest(repo).indexed().items():
        version = current_version(indexes, name)
        if version is not None and read_meta(indexes, name, version).model_version != space.version:
            print(f"demo: {indexes}/{name} was built by other models; building it again", flush=True)
            shutil.rmtree(indexes)
            break
    opts = IndexBuildOptions(gallery=corpus / "manifest.csv", model_repo=repo, out=indexes, split=("test",),
                             no_progress=not progress)
    stage.run("index build", indexes / "face" / "current", ("index", "build"), index_build, opts)


@dataclass(frozen=True)
class Trained:
    """What `retrain` made: the demo and training corpora, the runs, the model repository and
    the evaluation's figures (release.figures)."""

    corpus: Path
    train_corpus: Path
    runs: Path
    repo: Path
    figures: dict[str, dict] = field(default_factory=dict)


def retrain(stage: Stages, recipe: Recipe, out: Path, progress: bool) -> Trained:
    """The recipe's whole pipeline up to the exported models: corpora, backbones, association,
    its evaluation on the demo corpus's test split, Speech2Face's three networks, theirs, export."""
    from facevoice.training.association.evaluate import EvalAssociationOptions, EvalAssociationResult, eval_association
    from facevoice.training.association.pretrain import TrainBackbonesOptions, train_backbones
    from facevoice.training.association.train import TrainAssociationOptions, train_association
    from facevoice.training.export.command import ExportOptions, export_repository
    from facevoice.training.speech2face.decoder import TrainFaceDecoderOptions, train_face_decoder
    from facevoice.training.speech2face.evaluate import EvalS2FOptions, EvalS2FResult, eval_s2f
    from facevoice.training.speech2face.features import TrainFaceFeaturesOptions, train_face_features
    from facevoice.training.speech2face.train import TrainS2FOptions, train_s2f

    quiet = not progress
    corpus, runs = out / "corpus", out / "runs"
    train_corpus = out / "train-corpus" if recipe.train_corpus.identities else corpus
    corpus_stage(stage, corpus, recipe.corpus, progress)
    if recipe.train_corpus.identities:
        corpus_stage(stage, train_corpus, recipe.train_corpus, progress, name="training corpus")
    b, bb = recipe.backbones, runs / "backbones"
    common = dict(corpus=train_corpus, config=b.config, out=bb, measures=b.measures, no_progress=quiet)
    stage.run("face backbone", bb / "face_backbone.pt", ("train", "backbones"), train_backbones,
              TrainBackbonesOptions(**common, steps=b.face_steps, modalities=("face",), attributes=b.face_attributes),
              always=BACKBONE_FIELDS)
    stage.run("voice backbone", bb / "voice_backbone.pt", ("train", "backbones"), train_backbones,
              TrainBackbonesOptions(**common, steps=b.voice_steps, modalities=("voice",),
                                    attributes=b.voice_attributes), always=BACKBONE_FIELDS)
    a, assoc = recipe.association, runs / "association"
    stage.run("association", assoc / "best.pt", ("train", "association"), train_association,
              TrainAssociationOptions(corpus=train_corpus, config=a.config, set=a.set, direction=a.direction,
                                      out=assoc, cache_dir=bb / "cache", face_weights=bb / "face_backbone.pt",
                                      voice_weights=bb / "voice_backbone.pt", no_progress=quiet),
              always=("config", "direction"))
    # evaluated on the demo corpus's test split (its decoded arrays cached per corpus)
    stage.run("association eval", assoc / "report" / "metrics.json", ("eval", "association"), eval_association,
              EvalAssociationOptions(run=assoc, corpus=corpus, out=assoc / "report", cache_dir=bb / "cache",
                                     no_progress=quiet))
    s = recipe.speech2face
    s2f_common = dict(corpus=train_corpus, config=s.config, cache_dir=runs / "s2f-cache", no_progress=quiet)
    face_net, decoder, s2f = runs / "s2f-face" / "face_net.pt", runs / "s2f-decoder" / "decoder.pt", runs / "s2f"
    stage.run("s2f face network", face_net, ("train", "face-features"), train_face_features,
              TrainFaceFeaturesOptions(**s2f_common, out=face_net.parent, set=s.face_features), always=("config",))
    stage.run("s2f face decoder", decoder, ("train", "face-decoder"), train_face_decoder,
              TrainFaceDecoderOptions(**s2f_common, out=decoder.parent, face_net=face_net, set=s.face_decoder),
              always=("config",))
    stage.run("s2f voice encoder", s2f / "best.pt", ("train", "s2f"), train_s2f,
              TrainS2FOptions(**s2f_common, out=s2f, face_net=face_net, decoder=decoder, set=s.voice_encoder),
              always=("config",))
    stage.run("s2f eval", s2f / "report" / "metrics.json", ("eval", "s2f"), eval_s2f,
              EvalS2FOptions(run=s2f, corpus=corpus, out=s2f / "report", cache_dir=runs / "s2f-cache",
                             no_progress=quiet))
    repo = out / "model_repo"
    if (repo / REPOSITORY_MANIFEST).exists():
        try:
            read_repository_manifest(repo)
        except FormatError:  # an export of an older format: export again
            (repo / REPOSITORY_MANIFEST).unlink()
    if not (repo / REPOSITORY_MANIFEST).exists():
        shutil.rmtree(repo, ignore_errors=True)
    stage.run("export", repo / REPOSITORY_MANIFEST, ("export",), export_repository,
              ExportOptions(association=assoc, s2f=s2f, out=repo))
    figures = rel.figures(EvalAssociationResult.read(assoc / "report").metrics,
                          EvalS2FResult.read(s2f / "report").metrics)
    return Trained(corpus, train_corpus, runs, repo, figures)


def release_run(stage: Stages, trained: Trained, recipe: Recipe, dest: Path, argv: list[str]) -> rel.Release:
    """The run as a release in DEST (models/demo to replace ours): the exported repository and
    release.json with the exact commands, both corpora, the commit and each stage's time."""
    details = {"released_at": rel.git_commit(), "recipe": recipe.name, "stage_seconds":
               {k: round(v, 1) for k, v in stage.times.items()}, "machine": rel.machine()}
    if recipe.path and Path(recipe.path).is_file():  # the recipe itself, for a reader who has not the file
        details["recipe_toml"] = Path(recipe.path).read_text(encoding="utf-8")
    if trained.train_corpus != trained.corpus:
        details["train_corpus"] = rel.corpus_record(trained.train_corpus, recipe.train_corpus.seed,
                                                    recipe.train_corpus.identities)
    return rel.write_release(trained.repo, dest, runs={"association": "demo/runs/association",
                                                       "speech2face": "demo/runs/s2f"},
                             commit=stage.commit or rel.git_commit(),
                             corpus=rel.corpus_record(trained.corpus, recipe.corpus.seed, recipe.corpus.identities),
                             commands=["facevoice " + shlex.join(argv), *stage.portable_commands()],
                             figures=trained.figures, details=details)


def with_corpora(recipe: Recipe, identities: int | None, seed: int | None, train_identities: int | None,
                 train_seed: int | None) -> Recipe:
    """The recipe with its corpora's sizes and seeds overridden where given (None keeps it)."""
    c, t = recipe.corpus, recipe.train_corpus
    return replace(recipe, corpus=CorpusRecipe(c.identities if identities is None else identities,
                                               c.seed if seed is None else seed),
                   train_corpus=CorpusRecipe(t.identities if train_identities is None else train_identities,
                                             t.seed if train_seed is None else train_seed))
