"""`facevoice corpus synth`: the demo corpus, made offline in minutes (docs/corpus.md)."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from facevoice.cli import options
from facevoice.service.corpus import IDENTITIES, CorpusInfo, Item, write_csv, write_manifest
from facevoice.service.errors import UsageError
from facevoice.training.corpus import sheet
from facevoice.training.corpus.faces import FACE_RENDER, FACE_RENDERS, FaceNuisance, drawn_box, render_face
from facevoice.training.corpus.oracle import CONTROLS, DIRECTIONS, oracle_table
from facevoice.training.corpus.people import Person, PopulationModel, person_row, sample_population
from facevoice.training.corpus.splits import assign_splits, split_counts
from facevoice.training.corpus.summary import corpus_counts, count_lines
from facevoice.training.corpus.voices import ESPEAK, SAMPLE_RATE, ClipNuisance, synthesize_clip

MIN_SPEECH_SECONDS = 1.0  # the voice front ends' default (training/*/config.py)
# Best published VoxCeleb 1:2 matching, V->F: the level the oracle is calibrated to (docs/corpus.md,
# "The oracle and its calibration").
PUBLISHED = {"-": 0.88, "G": 0.78}


@dataclass
class SynthConfig:
    identities: int = 300
    seed: int = 0
    faces: int = 4
    clips: int = 4
    face_size: int = 128
    splits: tuple[float, float, float] = (0.7, 0.1, 0.2)
    workers: int = 2
    oracle_trials: int = 4000
    oracle_population: int = 5000
    # draw again a face the service's face guard would not find, or a clip in which its voice
    # guard would not hear MIN_SPEECH_SECONDS of speech (False: the generator before the guards)
    guarded: bool = True
    # the face painter (faces.FACE_RENDER; 1: the nose as drawn before issue 30)
    face_render: int = FACE_RENDER
    model: PopulationModel = field(default_factory=PopulationModel)


@dataclass(frozen=True)
class CorpusSynthOptions:
    """`corpus synth`'s arguments; `config()` is the generator's SynthConfig they make."""

    out: Path  # the corpus directory to create
    identities: int = SynthConfig.identities
    seed: int = SynthConfig.seed
    faces: int = SynthConfig.faces  # face images per identity
    clips: int = SynthConfig.clips  # voice clips per identity
    face_size: int = SynthConfig.face_size
    split: tuple[float, float, float] = SynthConfig.splits
    workers: int = SynthConfig.workers
    oracle_trials: int = SynthConfig.oracle_trials  # 0: skip the oracle
    force: bool = False  # replace an existing corpus directory
    face_render: int = FACE_RENDER
    unguarded: bool = False  # keep faces and clips the service's guards would refuse
    p_male: float | None = None  # None: the population model's share of men
    prevalence: tuple[str, ...] | None = None  # appearance-group weights, "GROUP=WEIGHT" each

    def config(self) -> SynthConfig:
        return SynthConfig(identities=self.identities, seed=self.seed, faces=self.faces, clips=self.clips,
                           face_size=self.face_size, splits=tuple(self.split), workers=self.workers,
                           oracle_trials=self.oracle_trials, guarded=not self.unguarded,
                           face_render=self.face_render,
                           model=population(self.p_male, parse_prevalence(self.prevalence)))


@dataclass(frozen=True)
class CorpusSynthResult:
    out: Path
    info: CorpusInfo  # what corpus.json holds
    media_s: float  # seconds spent drawing faces and speaking clips
    total_s: float

    def summary(self) -> str:
        """The one-screen summary printed at the end of `corpus synth`."""
        lines = [f"corpus written to {self.out} in {self.total_s} s (media {self.media_s} s)",
                 *count_lines(self.info.counts)]
        if self.info.oracle:
            lines.append("oracle 1:2 matching accuracy (chance 50%):")
            lines.append(f"  {'':24s}" + "".join(f"{k:>9s}" for k in CONTROLS))
            for scope, res in self.info.oracle.items():
                for d in DIRECTIONS:
                    row = res["accuracy"][d]
                    cells = "".join("      n/a" if row[k] is None else f"{row[k]:9.1%}" for k in CONTROLS)
                    lines.append(f"  {scope + ' ' + d:24s}{cells}")
            lines.append(f"  {'published VoxCeleb best':24s}" + "".join(
                f"{PUBLISHED[k]:9.0%}" if k in PUBLISHED else "        -" for k in CONTROLS))
        lines.append(f"look: {self.out}/contact_sheet.png   listen: {self.out}/listen.html")
        return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = CorpusSynthOptions
    p.add_argument("--out", type=Path, required=True, help="corpus directory to create")
    p.add_argument("--identities", type=int, default=d.identities)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--faces", type=int, default=d.faces, help="face images per identity")
    p.add_argument("--clips", type=int, default=d.clips, help="voice clips per identity")
    p.add_argument("--face-size", type=int, default=d.face_size, help="pixels (>= 128)")
    p.add_argument("--split", type=float, nargs=3, default=d.split, metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--oracle-trials", type=int, default=d.oracle_trials,
                   help="1:2 trials per oracle cell (0: skip the oracle)")
    p.add_argument("--force", action="store_true", help="replace an existing corpus directory")
    p.add_argument("--face-render", type=int, choices=FACE_RENDERS, default=d.face_render,
                   help="face painter version (1: the faint nose under the beard of corpora before issue 30)")
    p.add_argument("--unguarded", action="store_true",
                   help="keep faces and clips the service's guards would refuse (the corpus as made before them)")
    p.add_argument("--p-male", type=float, help=f"share of men (default {PopulationModel.p_male}); with "
                   "--prevalence, a population of another attribute mix, for cross-dataset tests (Kim et al. Table 8)")
    p.add_argument("--prevalence", nargs="+", metavar="GROUP=WEIGHT",
                   help="appearance-group weights, e.g. A=0.1 B=0.5 (groups not named keep theirs)")


def population(p_male: float | None, prevalence: dict[str, float]) -> PopulationModel:
    """The default population with another share of men and other appearance-group weights."""
    base = PopulationModel()
    unknown = set(prevalence) - {g.name for g in base.groups}
    if unknown or any(w < 0 for w in prevalence.values()) or not (p_male is None or 0 <= p_male <= 1):
        raise UsageError(f"--prevalence names groups {sorted(g.name for g in base.groups)} with weights >= 0, "
                         "and --p-male is in 0..1")
    groups = tuple(replace(g, prevalence=prevalence.get(g.name, g.prevalence)) for g in base.groups)
    return replace(base, groups=groups, p_male=base.p_male if p_male is None else p_male)


def parse_prevalence(specs: tuple[str, ...] | list[str] | None) -> dict[str, float]:
    out = {}
    for spec in specs or []:
        name, sep, weight = spec.partition("=")
        try:
            out[name] = float(weight)
        except ValueError:
            sep = ""
        if not sep:
            raise UsageError(f"--prevalence {spec!r}: expected GROUP=WEIGHT")
    return out


def corpus_synth(opts: CorpusSynthOptions, *, progress: bool = True) -> CorpusSynthResult:
    """`corpus synth`: the corpus its options describe, written under `opts.out`."""
    return build_corpus(opts.out, opts.config(), force=opts.force, progress=progress)


def run(args: argparse.Namespace) -> int:
    print(corpus_synth(options(CorpusSynthOptions, args)).summary())
    return 0


def _validate(cfg: SynthConfig) -> None:
    if cfg.identities < 2:
        raise UsageError("--identities must be at least 2")
    if cfg.faces < 1 or cfg.clips < 1:
        raise UsageError("--faces and --clips must be at least 1")
    if cfg.face_size < 128:
        raise UsageError("--face-size must be at least 128 pixels")
    if shutil.which(ESPEAK) is None:
        raise UsageError(f"{ESPEAK} not found: install it (apt-get install espeak-ng)")


def _box_text(box: tuple[float, ...]) -> str:
    return " ".join(f"{v:.1f}" for v in box)


def _make_person(job: tuple[Path, Person, str, SynthConfig, int]) -> list[Item]:
    """Render one person's faces and speak their clips; returns their manifest rows."""
    out, person, split, cfg, index = job
    rng = np.random.default_rng([cfg.seed, index, 1])  # media nuisance, apart from the people stream
    attrs = {k: getattr(person.shared, k)
             for k in ("gender", "age_group", "appearance_group", "first_language")}
    pid = person.identity
    (out / "faces" / pid).mkdir(parents=True, exist_ok=True)
    (out / "voices" / pid).mkdir(parents=True, exist_ok=True)
    items = []
    canonical = f"faces/{pid}/canonical.png"
    render_face(person.face, FaceNuisance.canonical(), cfg.face_size, version=cfg.face_render).save(out / canonical)
    items.append(Item(f"{pid}-canonical", pid, "canonical_face", canonical, split,
                      drawn_box=_box_text(drawn_box(person.face, FaceNuisance.canonical(), cfg.face_size)),
                      **attrs))
    for k in range(cfg.faces):
        path = f"faces/{pid}/{k}.jpg"
        for _ in range(REDRAWS):  # a picture the service's face guard would refuse is drawn again
            nuisance = FaceNuisance.sample(rng)
            img = render_face(person.face, nuisance, cfg.face_size, rng, version=cfg.face_render)
            box = drawn_box(person.face, nuisance, cfg.face_size)
            if not cfg.guarded or face_passes(img, box):
                break
        img.save(out / path, quality=90)
        items.append(Item(f"{pid}-face-{k}", pid, "face", path, split, drawn_box=_box_text(box), **attrs))
    for k in range(cfg.clips):
        path = f"voices/{pid}/{k}.wav"
        for _ in range(REDRAWS):  # and a clip its voice guard would refuse
            audio = synthesize_clip(person.voice, ClipNuisance.sample(rng))
            if not cfg.guarded or voice_passes(audio):
                break
        sf.write(out / path, audio, SAMPLE_RATE, subtype="PCM_16")
        items.append(Item(f"{pid}-voice-{k}", pid, "voice", path, split, **attrs))
    return items


REDRAWS = 8


def face_passes(img, box: tuple[float, ...]) -> bool:
    """Whether the service's face guard finds this face where it was drawn (IoU 0.5)."""
    from facevoice.service.media.faces import GUARD, detect_faces, iou

    return any(iou(f.box, box) >= 0.5 for f in detect_faces(img, GUARD))


def voice_passes(audio: np.ndarray) -> bool:
    """Whether the service's voice guard hears enough speech in this clip (as the released
    front ends ask: MIN_SPEECH_SECONDS)."""
    from facevoice.service.media.errors import InvalidSignalError
    from facevoice.service.media.speech import find_speech, require_speech

    try:
        require_speech(find_speech(audio, SAMPLE_RATE), MIN_SPEECH_SECONDS)
    except InvalidSignalError:
        return False
    return True


def build_corpus(out: Path, cfg: SynthConfig, force: bool = False, progress: bool = True) -> CorpusSynthResult:
    """Write the whole corpus of generator settings `cfg` under `out` (what `corpus synth` does, for
    callers with settings its options do not carry, such as the oracle's population)."""
    _validate(cfg)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UsageError(f"{out} exists and is not empty (use --force to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    population = sample_population(cfg.identities, cfg.seed, cfg.model)
    people = population.people
    split_of = assign_splits([p.identity for p in people],
                             split_counts(len(people), cfg.splits), cfg.seed)
    jobs = [(out, p, split_of[p.identity], cfg, i) for i, p in enumerate(people)]
    items: list[Item] = []
    bar = tqdm(total=len(jobs), desc="synthesising people", unit="id", disable=not progress)
    if cfg.workers > 1:
        with mp.get_context("fork").Pool(cfg.workers) as pool:
            for rows in pool.imap_unordered(_make_person, jobs, chunksize=4):
                items.extend(rows)
                bar.update()
    else:
        for job in jobs:
            items.extend(_make_person(job))
            bar.update()
    bar.close()
    items.sort(key=lambda i: i.item_id)
    write_manifest(out, items)
    write_csv(out / IDENTITIES, [{**person_row(p), "split": split_of[p.identity]} for p in people])
    media_seconds = time.perf_counter() - start
    info = CorpusInfo(generator="facevoice corpus synth",
                      config={k: v for k, v in asdict(cfg).items() if k != "model"},
                      population_model=asdict(cfg.model),
                      counts=corpus_counts(items, split_of, sorted(set(split_of.values())),
                                           ("face", "canonical_face", "voice")),
                      oracle=_oracle(cfg, people, split_of) if cfg.oracle_trials else {},
                      details={"espeak_ng": _espeak_version()})
    info.write(out)
    sheet.contact_sheet(out, out / "contact_sheet.png")
    sheet.listening_page(out, out / "listen.html")
    # as corpus.json holds it (its tuples lists), so a caller sees what a reader of the corpus will
    return CorpusSynthResult(out, CorpusInfo.read(out), round(media_seconds, 1), round(time.perf_counter() - start, 1))


def _espeak_version() -> str:
    done = subprocess.run([ESPEAK, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _oracle(cfg: SynthConfig, people: list[Person], split_of: dict[str, str]) -> dict:
    """The ceiling twice: on a large parameter-only population of the same model (stable: the
    calibration), and on this corpus's test identities (what a model will be compared with)."""
    reference = sample_population(cfg.oracle_population, cfg.seed + 1, cfg.model).people
    test = [p for p in people if split_of[p.identity] == "test"]
    return {
        "population": {"identities": len(reference), "trials": cfg.oracle_trials,
                       "accuracy": oracle_table(cfg.model, reference, cfg.oracle_trials, cfg.seed)},
        "test_split": {"identities": len(test), "trials": cfg.oracle_trials,
                       "accuracy": oracle_table(cfg.model, test, cfg.oracle_trials, cfg.seed)},
    }
