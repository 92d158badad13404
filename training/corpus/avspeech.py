"""`facevoice corpus avspeech --csv avspeech_train.csv --clips DIR --out DIR`: AVSpeech's clips as a
corpus. The published CSV gives each clip's video, start, end and face centre; the face nearest
that centre is taken. AVSpeech names no speakers, so each video is one identity (docs/corpus.md).
video.py decodes and ingests the clips."""

from __future__ import annotations

import argparse
import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from facevoice.cli import options
from facevoice.service.errors import FormatError
from facevoice.training.corpus.video import (
    Clip,
    IngestOptions,
    IngestResult,
    add_ingest_arguments,
    ingest,
    random_split,
)


@dataclass(frozen=True, kw_only=True)
class CorpusAvspeechOptions(IngestOptions):
    csv: Path  # avspeech_train.csv or avspeech_test.csv
    clips: Path  # the folder of <ytid>_<start>_<end>.mp4 segments or <ytid>.mp4 videos


@dataclass(frozen=True)
class CorpusAvspeechResult(IngestResult):
    TITLE: ClassVar[str] = "AVSpeech corpus"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv", type=Path, required=True, help="avspeech_train.csv or avspeech_test.csv")
    p.add_argument("--clips", type=Path, required=True,
                   help="folder of <ytid>_<start>_<end>.mp4 segments or <ytid>.mp4 videos")
    add_ingest_arguments(p)


def read_avspeech_csv(path: Path) -> list[tuple[str, float, float, float, float]]:
    """The published CSV: YouTube id, start, end, face centre x, y (fractions of the frame)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            table = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FormatError(f"{path}: cannot read AVSpeech's CSV ({getattr(e, 'strerror', None) or e})") from e
    rows = []
    for n, row in enumerate(table, start=1):
        if not row:
            continue
        try:
            ytid, start, end, x, y = row[0].strip(), *(float(v) for v in row[1:5])
        except (ValueError, IndexError) as e:
            raise FormatError(f"{path}:{n}: expected `ytid,start,end,x,y`, got {row!r}") from e
        rows.append((ytid, start, end, x, y))
    return rows


def avspeech_clips(rows, clips_dir: Path) -> tuple[list[Clip], list[dict]]:
    """Each CSV row's clip: `<ytid>_<start>_<end>.mp4` (a downloaded segment), else `<ytid>.mp4`
    (the whole video, cut at start..end)."""
    found, missing = [], []
    segments = {}
    for p in clips_dir.glob("*.mp4"):
        m = re.fullmatch(r"(.+)_([\d.]+)_([\d.]+)", p.stem)
        if m:
            segments[(m[1], round(float(m[2]), 3), round(float(m[3]), 3))] = p
    for ytid, start, end, x, y in rows:
        name = f"{start:.3f}-{end:.3f}"
        seg = segments.get((ytid, round(start, 3), round(end, 3)))
        if seg is not None:
            found.append(Clip(ytid, ytid, name, seg, None, None, (x, y)))
        elif (clips_dir / f"{ytid}.mp4").exists():
            found.append(Clip(ytid, ytid, name, clips_dir / f"{ytid}.mp4", start, end, (x, y)))
        else:
            missing.append({"identity": ytid, "path": f"{ytid} {start}-{end}", "reason": "unreadable: no clip file"})
    return found, missing


def corpus_avspeech(opts: CorpusAvspeechOptions) -> CorpusAvspeechResult:
    """`corpus avspeech`: every clip of the CSV found under `opts.clips` ingested into the corpus
    at `opts.out`; those not found are listed in skipped.csv."""
    clips, missing = avspeech_clips(read_avspeech_csv(opts.csv), opts.clips)
    if not clips:
        raise FormatError(f"{opts.clips}: none of the CSV's clips is there")
    # AVSpeech names no speakers: each video is taken as one identity (docs/corpus.md)
    split_of = random_split(sorted({c.identity for c in clips}), tuple(opts.split), opts.seed)
    return CorpusAvspeechResult(opts.out, ingest(clips, opts, split_of, {}, "facevoice corpus avspeech", missing))


def run(args: argparse.Namespace) -> int:
    print(corpus_avspeech(options(CorpusAvspeechOptions, args)).summary())
    return 0
