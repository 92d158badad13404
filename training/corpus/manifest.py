"""The corpus format shared by the synthetic generator and the VoxCeleb1 ingest (DESIGN.md, Data).

manifest.csv: one row per media item; identities.csv: one row per person. Paths are relative
to the corpus directory.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

MANIFEST = "manifest.csv"
IDENTITIES = "identities.csv"
MODALITIES = ("face", "voice", "canonical_face")
ATTRIBUTES = ("gender", "age_group", "appearance_group", "first_language", "nationality")


@dataclass
class Item:
    """One manifest row."""

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


MANIFEST_COLUMNS = tuple(f.name for f in fields(Item))


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...] | None = None) -> None:
    if columns is None:
        columns = tuple(rows[0]) if rows else ()
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)


def write_manifest(corpus: Path, items: list[Item]) -> Path:
    path = Path(corpus) / MANIFEST
    write_csv(path, [vars(i) for i in items], MANIFEST_COLUMNS)
    return path


def read_manifest(corpus: Path) -> list[Item]:
    """All rows of a corpus's manifest.csv; a missing column is a clear error."""
    path = Path(corpus) / MANIFEST
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        return [Item(**{k: row[k] for k in MANIFEST_COLUMNS}) for row in reader]


def read_identities(corpus: Path) -> list[dict[str, str]]:
    with open(Path(corpus) / IDENTITIES, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def corpus_counts(items: list[Item], split_of: dict[str, str], splits: list[str],
                  modalities: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Identities per split and items per modality, in the orders given."""
    per_split, per_modality = Counter(split_of.values()), Counter(i.modality for i in items)
    return {"identities": {s: per_split[s] for s in splits},
            "items": {m: per_modality[m] for m in modalities}}


def count_lines(counts: dict[str, dict[str, int]]) -> list[str]:
    """The two summary lines every corpus command prints."""
    return ["identities: " + ", ".join(f"{k} {v}" for k, v in counts["identities"].items()),
            "items:      " + ", ".join(f"{k} {v}" for k, v in counts["items"].items())]
