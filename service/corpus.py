"""The corpus format (docs/architecture.md, "Formats"), read and written here only: training's datasets, the
corpus builders and the index build all use these functions.

manifest.csv has one row per media item: the five base columns, the optional `video` (the
recording an item was cut from, so training can pair a clip with a face of another video) and
`box` (a face box "x y width height" in pixels, which training and serving both crop by), the
optional `drawn_box` (where the synthetic generator drew the face, in the same units: ground
truth for checking a detector, never cropped by, so the synthetic models keep the centre-square
front end they were trained with), then attribute columns (the known ones below, and any
others a gallery brings). identities.csv has one row per person. Paths are relative to the manifest's directory.

corpus.json (`CorpusInfo`) says who made the corpus and with what settings: the synthetic
generator's population model and exact oracle, an ingest's skipped clips."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from facevoice.service.errors import FormatError
from facevoice.service.media.image import Box
from facevoice.service.records import JsonRecord

MANIFEST = "manifest.csv"
IDENTITIES = "identities.csv"
CORPUS_INFO = "corpus.json"
MODALITIES = ("face", "voice", "canonical_face")
BASE_COLUMNS = ("item_id", "identity", "modality", "path", "split")
ATTRIBUTES = ("gender", "age_group", "appearance_group", "first_language", "nationality")


@dataclass
class Item:
    """One manifest row; `extra` holds attribute columns beyond the known ones."""

    item_id: str
    identity: str
    modality: str
    path: str
    split: str
    gender: str = ""
    age_group: str = ""
    appearance_group: str = ""
    first_language: str = ""
    nationality: str = ""
    video: str = ""
    box: str = ""
    drawn_box: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def face_box(self) -> Box | None:
        """The `box` column as (x, y, width, height), or None; FormatError if it is not four numbers."""
        if not self.box:
            return None
        try:
            x, y, w, h = (float(v) for v in self.box.split())
        except ValueError as e:
            raise FormatError(f"item {self.item_id}: box {self.box!r} is not 'x y width height'") from e
        return (x, y, w, h)

    def attributes(self) -> dict[str, str]:
        """Every attribute the row has a value for, known ones first."""
        known = {a: getattr(self, a) for a in ATTRIBUTES}
        return {k: v for k, v in {**known, **self.extra}.items() if v}


MANIFEST_COLUMNS = tuple(f.name for f in fields(Item) if f.name != "extra")


def manifest_path(path: Path) -> Path:
    """A corpus directory's manifest.csv, or the path itself when it names a file."""
    path = Path(path)
    return path / MANIFEST if path.is_dir() else path


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...] | None = None) -> None:
    if columns is None:
        columns = tuple(rows[0]) if rows else ()
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)


def write_manifest(corpus: Path, items: list[Item]) -> Path:
    extra = tuple(dict.fromkeys(k for i in items for k in i.extra))
    rows = [{**{c: getattr(i, c) for c in MANIFEST_COLUMNS}, **i.extra} for i in items]
    path = Path(corpus) / MANIFEST
    write_csv(path, rows, MANIFEST_COLUMNS + extra)
    return path


def read_manifest(path: Path) -> list[Item]:
    """Every row of a manifest.csv (or of a corpus directory's); FormatError naming the file and
    what is wrong when it is not one."""
    path = manifest_path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or ()
            missing = [c for c in BASE_COLUMNS if c not in header]
            if missing:
                raise FormatError(f"{path}: not a corpus manifest (no column {', '.join(missing)}; expected "
                                  f"{', '.join(BASE_COLUMNS)}, then attributes)")
            others = [c for c in header if c not in MANIFEST_COLUMNS]
            return [Item(**{c: row.get(c) or "" for c in MANIFEST_COLUMNS},
                         extra={c: row[c] for c in others if row.get(c)}) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FormatError(f"{path}: unreadable corpus manifest ({e})") from e


def read_identities(corpus: Path) -> list[dict[str, str]]:
    with open(Path(corpus) / IDENTITIES, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@dataclass(frozen=True)
class CorpusInfo(JsonRecord):
    """corpus.json, read and written only here. `details` holds what one generator records and
    no reader needs by name (espeak-ng's version, an ingest's clip counts and split rule)."""

    FILE: ClassVar[str] = CORPUS_INFO
    WHAT: ClassVar[str] = "a corpus's corpus.json"

    generator: str
    counts: dict = field(default_factory=dict)  # {"identities": {split: n}, "items": {modality: n}}
    config: dict = field(default_factory=dict)  # the generator's settings (synth: seed, identities, face_render)
    population_model: dict | None = None  # a synthetic corpus's generator: asdict(PopulationModel)
    oracle: dict = field(default_factory=dict)  # a synthetic corpus's exact oracle, per split
    details: dict = field(default_factory=dict)

    @property
    def seed(self) -> int | None:
        """The generator's seed (None for a corpus made from recordings)."""
        return self.config.get("seed")

    @property
    def face_render(self) -> int:
        """The synthetic face painter's version (1 for corpora made before it was recorded)."""
        return int(self.config.get("face_render", 1))

    @classmethod
    def upgrade(cls, d: dict) -> dict:
        if "counts" not in d and "identities" in d:  # the ingests before CorpusInfo spread their counts
            rest = {k: v for k, v in d.items() if k not in ("identities", "items")}
            d = {**rest, "counts": {"identities": d["identities"], "items": d.get("items", {})}}
        return d
