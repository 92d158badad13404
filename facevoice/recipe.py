"""A retrain recipe (facevoice/recipes/NAME.toml): what `facevoice demo --retrain` runs, as data.
The released models' recipe is `demo`; `paper-loss` trains Kim et al.'s eq. (1) instead of
InfoNCE. Each section is a frozen dataclass; an unknown key or section is a UsageError."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from facevoice.service.errors import UsageError

RECIPES = Path(__file__).parent / "recipes"


@dataclass(frozen=True)
class CorpusRecipe:
    identities: int
    seed: int


@dataclass(frozen=True)
class BackboneRecipe:
    config: str = "small"
    face_steps: int = 600
    voice_steps: int = 600
    face_attributes: tuple[str, ...] = ("gender", "age_group", "appearance_group")
    voice_attributes: tuple[str, ...] = ("gender", "age_group", "appearance_group", "first_language")
    measures: bool = True


@dataclass(frozen=True)
class AssociationRecipe:
    config: str = "small"
    direction: str = "both"
    set: tuple[str, ...] = ()  # `section.key=value` overrides of the config


@dataclass(frozen=True)
class Speech2FaceRecipe:
    config: str = "small"
    face_features: tuple[str, ...] = ()
    face_decoder: tuple[str, ...] = ()
    voice_encoder: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipe:
    name: str
    corpus: CorpusRecipe
    train_corpus: CorpusRecipe  # identities 0: train on the demo corpus itself
    backbones: BackboneRecipe = BackboneRecipe()
    association: AssociationRecipe = AssociationRecipe()
    speech2face: Speech2FaceRecipe = Speech2FaceRecipe()
    path: str = ""  # the file it was read from

    def __post_init__(self):
        t = self.train_corpus
        if t.identities and t.seed == self.corpus.seed:
            raise UsageError(f"the training corpus's seed {t.seed} is the demo corpus's: the two corpora would share "
                             "people, and the served test split would not be new to the models")
        if t.identities < 0 or 0 < t.identities < 10:
            raise UsageError(f"a training corpus of {t.identities} people: 0 (train on the demo corpus) or at "
                             "least 10")


SECTIONS = {"corpus": CorpusRecipe, "train_corpus": CorpusRecipe, "backbones": BackboneRecipe,
            "association": AssociationRecipe, "speech2face": Speech2FaceRecipe}


def _section(kind, values, where: str):
    if not isinstance(values, dict):
        raise UsageError(f"{where} must be a table")
    known = {f.name for f in fields(kind)}
    if unknown := sorted(set(values) - known):
        raise UsageError(f"{where}: unknown keys {unknown} (known: {sorted(known)})")
    try:
        return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except TypeError as e:
        raise UsageError(f"{where}: {e}") from e


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe by name (facevoice/recipes/NAME.toml) or from a TOML file."""
    path = RECIPES / f"{name_or_path}.toml"
    if not path.is_file():
        path = Path(name_or_path)
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in RECIPES.glob("*.toml")))
        raise UsageError(f"no recipe {str(name_or_path)!r}: give one of {names} or a TOML file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"recipe {path}: not a readable TOML file ({e})") from e
    if unknown := sorted(set(raw) - {"name", *SECTIONS}):
        raise UsageError(f"recipe {path}: unknown sections {unknown} (known: {sorted(SECTIONS)})")
    if missing := [s for s in ("corpus", "train_corpus") if s not in raw]:
        raise UsageError(f"recipe {path}: needs [{'] and ['.join(missing)}]")
    sections = {k: _section(kind, raw[k], f"recipe {path}: [{k}]") for k, kind in SECTIONS.items() if k in raw}
    try:
        return Recipe(name=str(raw.get("name", path.stem)), path=str(path), **sections)
    except UsageError as e:
        raise UsageError(f"recipe {path}: {e}") from e
