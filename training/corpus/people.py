"""Synthetic people: shared factors, and the face-side and voice-side parameters drawn from them.

Face and voice are tied ONLY through the shared factors below, each side adding its own noise,
as with real people (Kim et al. 2018, sec. 3: gender, age, ethnicity and first language are
the cues humans use to match faces and voices):

- gender: hair/beard on the face; the espeak-ng variant family (m/f) in the voice;
- age: apparent age (greying, wrinkles) on the face; pitch and speaking rate in the voice;
- appearance group <-> first language: skin/hair/eyes on the face; accent in the voice
  (an English accent for native speakers, another language's voice reading English otherwise);
- size (z_size): face width <-> pitch (bigger face, lower voice);
- nasality (z_nasal): nose width <-> the voice variant within its family.

Everything else (face height, jaw, eyes, lips, brows, glasses, pitch range...) is drawn
independently per side. `PopulationModel` holds every number; `training.corpus.oracle`
evaluates the same model exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cache
from typing import get_type_hints

import numpy as np
from scipy.special import ndtri

GENDERS = ("female", "male")
AGE_GROUPS = ("<30", "30s", "40s", "50s", ">=60")
APPEARANCE_GROUPS = ("A", "B", "C", "D", "E")
FIRST_LANGUAGES = ("native", "non-native")
# Native-English accents of espeak-ng 1.51 (`en-scotland` is not a voice: espeak-ng falls back to en-gb without a word).
ENGLISH_ACCENTS = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp",
    "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")


def age_group(age: int) -> str:
    """The paper's age bins (Kim et al. Table 2): <30, 30s, 40s, 50s, >=60."""
    return AGE_GROUPS[int(np.clip((age - 20) // 10, 0, 4))]


@dataclass(frozen=True)
class AppearanceGroup:
    """One appearance group: its prevalence, face look, and the accents of its speakers."""

    name: str
    prevalence: float
    skin_rgb: tuple[int, int, int]
    hair_rgb: tuple[tuple[int, int, int], ...]
    iris_rgb: tuple[tuple[int, int, int], ...]
    eye_openness: float  # vertical eye aperture scale
    p_non_native: float
    # espeak-ng voices that read English text with their own phonology (checked with `-x`:
    # hi, bn, ar, ru, fr, vi switch to English phonemes on Latin script, so no accent is heard)
    foreign_voices: tuple[str, ...]
    accent_weights: tuple[float, ...]  # over ENGLISH_ACCENTS, for native speakers


DEFAULT_GROUPS = (
    AppearanceGroup("A", 0.36, (236, 200, 176), ((120, 85, 50), (200, 160, 90), (60, 40, 25)),
                    ((70, 110, 160), (90, 130, 90), (90, 60, 40)), 1.0, 0.12,
                    ("pl", "cs", "hu"), (5, 3, 2, 2, 1, 1, 0.3, 1.5)),
    AppearanceGroup("B", 0.16, (214, 170, 128), ((40, 28, 20), (70, 45, 28)),
                    ((80, 55, 35), (60, 40, 25)), 0.95, 0.45,
                    ("es", "it", "ro"), (4, 1, 0.5, 0.5, 0.5, 0.5, 1.5, 2.5)),
    AppearanceGroup("C", 0.16, (150, 100, 70), ((25, 20, 18), (45, 32, 25)),
                    ((50, 35, 25), (35, 25, 20)), 1.0, 0.35,
                    ("sw", "mt", "eu"), (4, 2, 0.3, 0.5, 0.5, 0.3, 4, 2)),
    AppearanceGroup("D", 0.16, (232, 196, 150), ((20, 18, 18), (35, 28, 24)),
                    ((45, 32, 25), (30, 22, 18)), 0.7, 0.55,
                    ("id", "ms", "haw"), (5, 2, 0.3, 1, 0.5, 0.3, 0.5, 1)),
    AppearanceGroup("E", 0.16, (186, 134, 96), ((22, 18, 16), (50, 35, 25)),
                    ((55, 38, 26), (40, 28, 20)), 0.9, 0.5,
                    ("tr", "az", "sq"), (3, 3, 0.5, 1, 1, 0.5, 1.5, 1)),
)


@dataclass(frozen=True)
class PopulationModel:
    """Every number of the generative model; calibrated so the oracle is about as good as
    the best published VoxCeleb 1:2 matching (docs/corpus.md)."""

    p_male: float = 0.5
    age_min: int = 18
    age_max: int = 79
    groups: tuple[AppearanceGroup, ...] = DEFAULT_GROUPS
    # age: face shows apparent age with this noise (years)
    face_age_sd: float = 9.0
    # pitch (espeak-ng -p units, 0..99): base by gender, change per year of age, spread
    pitch_base: tuple[float, float] = (52.0, 46.0)  # (female, male)
    pitch_age_slope: tuple[float, float] = (-0.12, 0.04)
    pitch_sd: float = 11.0
    # speaking rate (espeak-ng -s, words per minute)
    speed_base: float = 165.0
    speed_age_slope: float = -0.35
    speed_non_native: float = -6.0
    speed_sd: float = 14.0
    # continuous links: correlation of each side's parameter with the shared latent
    size_face_r: float = 0.55  # face width <- z_size
    size_voice_r: float = 0.55  # -pitch residual <- z_size
    nasal_face_r: float = 0.55  # nose width <- z_nasal
    nasal_voice_r: float = 0.55  # variant score <- z_nasal
    # accents of native speakers: mix of the group's weights and a uniform draw
    accent_group_mix: float = 0.35
    p_beard: float = 0.35
    p_glasses: float = 0.2

    def group(self, name: str) -> AppearanceGroup:
        return next(g for g in self.groups if g.name == name)

    def accent_probs(self, group: AppearanceGroup) -> np.ndarray:
        """P(accent | group, native) over ENGLISH_ACCENTS."""
        w = np.asarray(group.accent_weights, float)
        uniform = np.full(len(ENGLISH_ACCENTS), 1 / len(ENGLISH_ACCENTS))
        return self.accent_group_mix * w / w.sum() + (1 - self.accent_group_mix) * uniform


@dataclass
class SharedFactors:
    """What a face and a voice of one person have in common (identities.csv)."""

    gender: str
    age: int
    age_group: str
    appearance_group: str
    first_language: str
    z_size: float
    z_nasal: float


@dataclass
class FaceParams:
    """Face-side generator parameters: standard-normal geometry scores and looks."""

    gender: str
    appearance_group: str
    face_age: float
    face_width: float  # linked to z_size
    nose_width: float  # linked to z_nasal
    face_height: float
    jaw: float
    nose_length: float
    eye_spacing: float
    eye_size: float
    lip_thickness: float
    mouth_width: float
    brow_thickness: float
    brow_height: float
    skin_rgb: tuple[int, int, int]
    hair_rgb: tuple[int, int, int]
    iris_rgb: tuple[int, int, int]
    eye_openness: float
    hair_style: int
    beard: bool
    glasses: bool


@dataclass
class VoiceParams:
    """Voice-side generator parameters: what espeak-ng is told, before per-clip nuisance."""

    gender: str
    accent: str  # espeak-ng voice name without variant
    variant: str  # espeak-ng variant (+m1.., +f1..)
    variant_score: float  # linked to z_nasal; binned into `variant`
    pitch: float  # espeak-ng -p
    pitch_range: float  # SSML prosody range, independent of the face
    speed: float  # espeak-ng -s


@dataclass
class Person:
    identity: str
    shared: SharedFactors
    face: FaceParams
    voice: VoiceParams


def _linked(rng: np.random.Generator, z: float, r: float) -> float:
    """A standard-normal score with correlation r to the standard-normal latent z."""
    return float(r * z + np.sqrt(1 - r * r) * rng.standard_normal())


@cache
def variant_bins(n: int) -> np.ndarray:
    """Standard-normal quantile edges that split a variant score into n equiprobable variants."""
    return ndtri(np.linspace(0, 1, n + 1)[1:-1])


def sample_person(identity: str, model: PopulationModel, rng: np.random.Generator) -> Person:
    """Draw one person: shared factors first, then each side from them with its own noise."""
    gender = GENDERS[int(rng.random() < model.p_male)]
    age = int(rng.integers(model.age_min, model.age_max + 1))
    prev = np.array([grp.prevalence for grp in model.groups])
    grp = model.groups[int(rng.choice(len(model.groups), p=prev / prev.sum()))]
    native = rng.random() >= grp.p_non_native
    shared = SharedFactors(
        gender=gender, age=age, age_group=age_group(age), appearance_group=grp.name,
        first_language=FIRST_LANGUAGES[0 if native else 1],
        z_size=float(rng.standard_normal()), z_nasal=float(rng.standard_normal()),
    )
    return Person(identity, shared, _sample_face(shared, grp, model, rng),
                  _sample_voice(shared, grp, model, rng))


def _sample_face(s: SharedFactors, grp: AppearanceGroup, model: PopulationModel,
                 rng: np.random.Generator) -> FaceParams:
    male = s.gender == "male"
    skin = np.clip(np.array(grp.skin_rgb) + rng.normal(0, 10) + rng.normal(0, 4, 3), 40, 255)
    return FaceParams(
        gender=s.gender, appearance_group=grp.name,
        face_age=float(s.age + rng.normal(0, model.face_age_sd)),
        face_width=_linked(rng, s.z_size, model.size_face_r),
        nose_width=_linked(rng, s.z_nasal, model.nasal_face_r),
        **{k: float(rng.standard_normal()) for k in (
            "face_height", "jaw", "nose_length", "eye_spacing", "eye_size", "lip_thickness",
            "mouth_width", "brow_thickness", "brow_height")},
        skin_rgb=tuple(int(c) for c in skin),
        hair_rgb=grp.hair_rgb[int(rng.integers(len(grp.hair_rgb)))],
        iris_rgb=grp.iris_rgb[int(rng.integers(len(grp.iris_rgb)))],
        eye_openness=grp.eye_openness,
        hair_style=int(rng.integers(3)),
        beard=bool(male and rng.random() < model.p_beard),
        glasses=bool(rng.random() < model.p_glasses),
    )


def _sample_voice(s: SharedFactors, grp: AppearanceGroup, model: PopulationModel,
                  rng: np.random.Generator) -> VoiceParams:
    g = GENDERS.index(s.gender)
    if s.first_language == "native":
        accent = ENGLISH_ACCENTS[int(rng.choice(len(ENGLISH_ACCENTS), p=model.accent_probs(grp)))]
    else:
        accent = grp.foreign_voices[int(rng.integers(len(grp.foreign_voices)))]
    variants = MALE_VARIANTS if g else FEMALE_VARIANTS
    score = _linked(rng, s.z_nasal, model.nasal_voice_r)
    pitch_resid = -_linked(rng, s.z_size, model.size_voice_r)
    non_native = s.first_language == "non-native"
    return VoiceParams(
        gender=s.gender, accent=accent,
        variant=variants[int(np.searchsorted(variant_bins(len(variants)), score))],
        variant_score=score,
        pitch=float(model.pitch_base[g] + model.pitch_age_slope[g] * (s.age - 45)
                    + model.pitch_sd * pitch_resid),
        pitch_range=float(rng.uniform(30, 90)),
        speed=float(model.speed_base + model.speed_age_slope * (s.age - 45)
                    + model.speed_non_native * non_native + model.speed_sd * rng.standard_normal()),
    )


@dataclass
class Population:
    """A drawn set of people with the model that drew them."""

    model: PopulationModel
    people: list[Person] = field(default_factory=list)


def sample_population(n: int, seed: int, model: PopulationModel | None = None) -> Population:
    """n people, deterministic per seed (one child stream per person, so n does not shift them)."""
    model = model or PopulationModel()
    streams = np.random.SeedSequence(seed).spawn(n)
    people = [sample_person(f"id{i:05d}", model, np.random.default_rng(ss))
              for i, ss in enumerate(streams)]
    return Population(model, people)


def population_model_from_dict(d: dict) -> PopulationModel:
    """The inverse of `dataclasses.asdict(PopulationModel)` (as corpus.json stores it): JSON lists
    back to tuples, groups back to `AppearanceGroup`."""
    def tuples(x):
        return tuple(tuples(v) for v in x) if isinstance(x, list) else x

    known = {f.name for f in fields(PopulationModel)}
    kwargs = {k: tuples(v) for k, v in d.items() if k in known and k != "groups"}
    if "groups" in d:
        kwargs["groups"] = tuple(AppearanceGroup(**{k: tuples(v) for k, v in g.items()}) for g in d["groups"])
    return PopulationModel(**kwargs)


_SECTIONS = (("", SharedFactors), ("face_", FaceParams), ("voice_", VoiceParams))


def _encode(value) -> str:
    if isinstance(value, tuple):
        return "#" + "".join(f"{c:02x}" for c in value)
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def _decode(text: str, kind):
    if kind is bool:
        return text == "True"
    if kind in (int, float, str):
        return kind(text)
    return tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))  # an "#rrggbb" colour


def _column(prefix: str, name: str) -> str:
    return name if name.startswith(prefix) else prefix + name


def person_row(p: Person) -> dict[str, str]:
    """A flat identities.csv row: shared factors, then face_* and voice_* parameters."""
    row = {"identity": p.identity}
    for prefix, part in zip(("", "face_", "voice_"), (p.shared, p.face, p.voice), strict=True):
        for f in fields(part):
            if prefix and f.name in ("gender", "appearance_group"):
                continue  # the same as the shared factor
            row[_column(prefix, f.name)] = _encode(getattr(part, f.name))
    return row


def person_from_row(row: dict[str, str]) -> Person:
    """The inverse of `person_row`, so evaluation can run the oracle on a written corpus."""
    parts = []
    for prefix, cls in _SECTIONS:
        hints = get_type_hints(cls)
        kwargs = {}
        for f in fields(cls):
            key = _column(prefix, f.name)
            kwargs[f.name] = _decode(row[key if key in row else f.name], hints[f.name])
        parts.append(cls(**kwargs))
    return Person(row["identity"], *parts)


def ordered(classes) -> list[str]:
    """Classes in the order a figure should list them: age groups youngest first (sorting by name
    puts "<30" after "50s"); any other classes by name."""
    classes = list(classes)
    return sorted(classes, key=AGE_GROUPS.index) if set(classes) <= set(AGE_GROUPS) else sorted(classes)
