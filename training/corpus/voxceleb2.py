"""`facevoice corpus voxceleb2 --root DIR [--meta vox2_meta.csv] --out DIR`: VoxCeleb2's MP4 clips
as a corpus. Its layout names the speaker and video of each clip; vox2_meta.csv, when given, each
speaker's gender and set (VoxCeleb2's test speakers become the test split, its dev speakers are
divided into train and val). video.py decodes and ingests the clips."""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from facevoice.cli import options
from facevoice.service.errors import FormatError
from facevoice.training.corpus.splits import assign_splits
from facevoice.training.corpus.video import (
    Clip,
    IngestOptions,
    IngestResult,
    add_ingest_arguments,
    ingest,
    random_split,
)

GENDERS = {"m": "male", "f": "female", "male": "male", "female": "female"}


@dataclass(frozen=True, kw_only=True)
class CorpusVoxceleb2Options(IngestOptions):
    root: Path  # the folder holding dev/mp4/idXXXXX/... (and test/mp4/...)
    meta: Path | None = None  # vox2_meta.csv: gender, and the dev/test set (dev -> train/val)


@dataclass(frozen=True)
class CorpusVoxceleb2Result(IngestResult):
    TITLE: ClassVar[str] = "VoxCeleb2 corpus"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, required=True, help="folder holding dev/mp4/idXXXXX/... (and test/mp4/...)")
    p.add_argument("--meta", type=Path, help="vox2_meta.csv: gender, and the dev/test set (dev -> train/val)")
    add_ingest_arguments(p)


def voxceleb2_clips(root: Path) -> list[Clip]:
    """`<root>/dev/mp4/idXXXXX/<ytid>/<n>.mp4` (and `test/mp4/...`)."""
    clips = [Clip(p.parts[-3], p.parts[-2], p.stem, p) for p in sorted(root.glob("*/mp4/id*/*/*.mp4"))]
    if not clips:
        raise FormatError(f"{root}: no */mp4/idXXXXX/<video>/<n>.mp4 files (the VoxCeleb2 layout)")
    return clips


def read_vox2_meta(path: Path) -> dict[str, dict[str, str]]:
    """vox2_meta.csv: `VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set` (comma-separated, padded)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [[c.strip() for c in row] for row in csv.reader(f) if any(c.strip() for c in row)]
    if not rows or len(rows[0]) < 4:
        raise FormatError(f"{path}: expected vox2_meta.csv with VoxCeleb2 ID, VGGFace2 ID, Gender, Set")
    out = {}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) < 4 or row[2].lower() not in GENDERS or row[3].lower() not in ("dev", "test"):
            raise FormatError(f"{path}:{n}: cannot read row {row!r}")
        out[row[0]] = {"gender": GENDERS[row[2].lower()], "set": row[3].lower()}
    return out


def meta_split(ids: list[str], meta: dict[str, dict[str, str]], fractions: tuple[float, float, float],
               seed: int) -> dict[str, str]:
    """VoxCeleb2's own split: its test speakers are the test split; its dev speakers are divided
    into train and val as `fractions`' first two are to each other."""
    test = [i for i in ids if meta.get(i, {}).get("set") == "test"]
    dev = [i for i in ids if i not in test]
    n_val = round(len(dev) * fractions[1] / max(fractions[0] + fractions[1], 1e-9))
    return {**assign_splits(dev, (len(dev) - n_val, n_val, 0), seed), **dict.fromkeys(test, "test")}


def corpus_voxceleb2(opts: CorpusVoxceleb2Options) -> CorpusVoxceleb2Result:
    """`corpus voxceleb2`: every clip under `opts.root` ingested into the corpus at `opts.out`."""
    clips = voxceleb2_clips(opts.root)
    ids = sorted({c.identity for c in clips})
    attrs: dict[str, dict] = {}
    if opts.meta:
        meta = read_vox2_meta(opts.meta)
        attrs = {i: {"gender": meta[i]["gender"]} for i in ids if i in meta}
        split_of = meta_split(ids, meta, tuple(opts.split), opts.seed)
    else:
        split_of = random_split(ids, tuple(opts.split), opts.seed)
    return CorpusVoxceleb2Result(opts.out, ingest(clips, opts, split_of, attrs, "facevoice corpus voxceleb2"))


def run(args: argparse.Namespace) -> int:
    print(corpus_voxceleb2(options(CorpusVoxceleb2Options, args)).summary())
    return 0
