"""`facevoice corpus voxceleb`: VoxCeleb1 in the corpus format, with Kim et al.'s split.

Audio `wav/<VoxCeleb1 ID>/<ytid>/<n>.wav` and faces `unzippedFaces/<VGGFace1 name>/1.6/<ytid>/
<frame>.jpg` are joined through `vox1_meta.csv` (VoxCeleb1 ID, VGGFace1 ID, gender,
nationality). The media stay where they are: the corpus links to both roots. Every file is put
through the service's media pipeline; one that is missing or unreadable is listed in
skipped.csv and in the summary, never dropped silently.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facevoice.cli import options
from facevoice.service.corpus import IDENTITIES, CorpusInfo, Item, write_csv, write_manifest
from facevoice.service.errors import FormatError, UsageError
from facevoice.service.media import MediaError, decode_audio, decode_image
from facevoice.service.media.faces import iou
from facevoice.service.media.image import Box
from facevoice.training.corpus.splits import SPLITS, assign_splits
from facevoice.training.corpus.summary import corpus_counts, count_lines

KIM_TEST_IDENTITIES, VOXCELEB1_IDENTITIES = 250, 1251  # Kim et al. 2018 sec. 4.2
PINS_SETS = {"1": "train", "2": "val", "3": "seen_test", "4": "test"}  # Nagrani et al. 2018
GENDERS = {"m": "male", "f": "female", "male": "male", "female": "female"}
ANNOTATED = ("age_group", "appearance_group", "first_language")
# Kim et al. sec. 4.2: "We first filtered the bounding boxes temporally as there were fluctuations
# in their sizes and positions". How is not said; ours: the median box over the track's rows
# within BOX_WINDOW frames of the chosen frame (about a second at VoxCeleb's 25 fps), and a track
# is dropped when more than JUMP_SHARE of those rows lie far from it (IoU < JUMP_IOU): it jumps
# (to another face, across a cut), so none of its boxes can be trusted
BOX_WINDOW, JUMP_IOU, JUMP_SHARE = 12, 0.5, 0.25
BOX_FILTERS = ("median", "first")


@dataclass
class Speaker:
    vox_id: str
    name: str
    gender: str
    nationality: str


@dataclass(frozen=True)
class CorpusVoxcelebOptions:
    wav_root: Path  # the folder holding wav/<id>/...
    faces_root: Path  # the folder holding unzippedFaces/<Name>/1.6/...
    meta: Path  # vox1_meta.csv
    out: Path
    seed: int = 0  # the seed of Kim et al.'s random split
    val: int = 0  # identities moved from Kim's train split to a validation split
    pins_splits: Path | None = None  # Learnable-PINs identity_splits.txt; replaces Kim's split
    annotations: Path | None = None  # CSV of per-identity demographics
    frames: str = "first"  # first | all
    txt_root: Path | None = None  # the folder holding txt/<id>/<ytid>/<clip>.txt, the per-clip face tracks
    box_frames: bool = False  # the face images are whole video frames: record each clip's box
    box_filter: str = "median"  # with box_frames: "median" over the track (Kim 4.2) or the track's "first" box
    box_window: int = BOX_WINDOW  # frames each side of the chosen frame that the median takes
    workers: int = 2


@dataclass(frozen=True)
class CorpusVoxcelebResult:
    out: Path
    info: CorpusInfo  # what corpus.json holds
    skipped: list[dict]  # skipped.csv's rows: identity, path, reason

    def summary(self) -> str:
        d = self.info.details
        lines = [f"VoxCeleb1 corpus ({d['split']}):", *count_lines(self.info.counts),
                 f"skipped:    {len(self.skipped)} (see skipped.csv)"]
        lines += [f"  {r['identity']} {r['path']}: {r['reason']}" for r in self.skipped[:10]]
        if len(self.skipped) > 10:
            lines.append(f"  ... and {len(self.skipped) - 10} more")
        return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = CorpusVoxcelebOptions
    p.add_argument("--wav-root", type=Path, required=True, help="folder holding wav/<id>/...")
    p.add_argument("--faces-root", type=Path, required=True,
                   help="folder holding unzippedFaces/<Name>/1.6/...")
    p.add_argument("--meta", type=Path, required=True, help="vox1_meta.csv")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=d.seed, help="seed of Kim et al.'s random split")
    p.add_argument("--val", type=int, default=d.val,
                   help="identities moved from Kim's train split to a validation split")
    p.add_argument("--pins-splits", type=Path,
                   help="Learnable-PINs identity_splits.txt; replaces Kim's split")
    p.add_argument("--annotations", type=Path,
                   help="CSV of per-identity demographics (identity or name column, and any of "
                        + ", ".join(ANNOTATED) + ")")
    p.add_argument("--frames", choices=("first", "all"), default=d.frames,
                   help="face frames: the first of each clip (Kim 4.2; of each video without --txt-root) or all")
    p.add_argument("--txt-root", type=Path,
                   help="folder holding txt/<id>/<ytid>/<clip>.txt, VoxCeleb1's per-clip face tracks (FRAME X Y W H)")
    p.add_argument("--box-frames", action="store_true",
                   help="the face images are whole video frames: record each clip's box (the media "
                        "pipeline enlarges it 1.5x, Kim 4.2); without it they are VGGFace1's crops, no box")
    p.add_argument("--box-filter", choices=BOX_FILTERS, default=d.box_filter,
                   help="with --box-frames: the median box over the track about the chosen frame, tracks "
                        "that jump dropped (Kim 4.2's temporal filtering; default), or each track's first box")
    p.add_argument("--box-window", type=int, default=d.box_window,
                   help="frames each side of the chosen frame that the median takes")
    p.add_argument("--workers", type=int, default=d.workers)


def read_meta(path: Path) -> list[Speaker]:
    """vox1_meta.csv: tab-separated, header `VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set`."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FormatError(f"{path}: cannot read VoxCeleb1's metadata ({getattr(e, 'strerror', None) or e})") from e
    if not rows or len(rows[0]) < 4:
        raise FormatError(f"{path}: expected a tab-separated vox1_meta.csv with at least 4 columns")
    speakers = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) < 4 or row[2].strip().lower() not in GENDERS:
            raise FormatError(f"{path}:{n}: cannot read row {row!r}")
        speakers.append(Speaker(row[0].strip(), row[1].strip(), GENDERS[row[2].strip().lower()],
                                row[3].strip()))
    return speakers


def kim_split(ids: list[str], seed: int, n_val: int = 0) -> dict[str, str]:
    """Kim et al. sec. 4.2: 250 random test identities of 1,251 (the same share of fewer)."""
    n = len(ids)
    n_test = KIM_TEST_IDENTITIES if n >= VOXCELEB1_IDENTITIES else round(
        n * KIM_TEST_IDENTITIES / VOXCELEB1_IDENTITIES)
    if n_val + n_test >= n:
        raise UsageError(f"--val {n_val} leaves no training identities of {n}")
    return assign_splits(ids, (n - n_test - n_val, n_val, n_test), seed)


def _by_name_or_id(speakers: list[Speaker]) -> dict[str, str]:
    """VGGFace1 name or VoxCeleb1 ID -> VoxCeleb1 ID: split and annotation files use either."""
    return {s.name: s.vox_id for s in speakers} | {s.vox_id: s.vox_id for s in speakers}


def pins_split(path: Path, speakers: list[Speaker]) -> dict[str, str]:
    """identity_splits.txt lines `$name $set` (1 train, 2 val, 3 seen-heard test, 4 unseen-unheard
    test); $name may be the VGGFace1 name or the VoxCeleb1 ID."""
    by_key = _by_name_or_id(speakers)
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in PINS_SETS:
            raise FormatError(f"{path}:{n}: expected `name set` with set 1-4, got {line!r}")
        if parts[0] in by_key:
            out[by_key[parts[0]]] = PINS_SETS[parts[1]]
    return out


def read_annotations(path: Path, speakers: list[Speaker]) -> dict[str, dict[str, str]]:
    by_key = _by_name_or_id(speakers)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for row in rows:
        key = row.get("identity") or row.get("name") or ""
        if key in by_key:
            out[by_key[key]] = {k: row[k] for k in ANNOTATED if row.get(k)}
    return out


def _probe(job: tuple[str, Path]) -> str | None:
    """None if the file decodes through the media pipeline, else why not."""
    modality, path = job
    try:
        data = path.read_bytes()
        (decode_audio if modality == "voice" else decode_image)(data)
    except (OSError, MediaError) as e:
        return f"{type(e).__name__}: {e}"
    return None


@dataclass
class Track:
    """A clip's face track from its VoxCeleb1 txt file: every row's frame and box, in order."""

    frames: list[int]
    boxes: list[Box]

    @property
    def frame(self) -> int:
        """The clip's first frame."""
        return self.frames[0]

    @property
    def box(self) -> Box:
        """The first frame's box."""
        return self.boxes[0]


def read_track(path: Path) -> Track:
    """The `FRAME X Y W H` rows after the header of a VoxCeleb1 clip txt file."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    header = next((n for n, line in enumerate(lines) if line.split()[:1] == ["FRAME"]), None)
    rows = [line.split() for line in lines[header + 1:] if line.strip()] if header is not None else []
    frames, boxes = [], []
    try:
        for row in rows:
            frame, *box = row[:5]
            x, y, w, h = (float(v) for v in box)
            frames.append(int(frame))
            boxes.append((x, y, w, h))
    except ValueError as e:
        raise FormatError(f"{path}: cannot read the FRAME X Y W H row {' '.join(row)!r}") from e
    if not frames:
        raise FormatError(f"{path}: expected a FRAME X Y W H table with at least one row")
    return Track(frames, boxes)


@dataclass(frozen=True)
class TrackBox:
    """A box filtered over a track: the box, the rows it was taken over, how many lie far from it."""

    box: Box
    rows: int
    outliers: int
    jumps: bool  # more than JUMP_SHARE of the rows are outliers


def filtered_box(track: Track, frame: int, window: int = BOX_WINDOW) -> TrackBox:
    """Kim et al. 4.2's temporal filtering, ours in detail: over the track's rows within `window`
    frames of `frame` (the nearest end of the track when `frame` lies outside it), the median of
    the boxes' centres, widths and heights, so a jittering box is steadied and a few wrong rows do
    not move it; rows with IoU < JUMP_IOU against it are counted as outliers."""
    frames = np.array(track.frames)
    at = min(max(frame, int(frames.min())), int(frames.max()))
    near = np.abs(frames - at) <= window
    b = np.array(track.boxes, dtype=float)[near]
    cx, cy = np.median(b[:, 0] + b[:, 2] / 2), np.median(b[:, 1] + b[:, 3] / 2)
    w, h = np.median(b[:, 2]), np.median(b[:, 3])
    box = (float(cx - w / 2), float(cy - h / 2), float(w), float(h))
    outliers = sum(iou(tuple(r), box) < JUMP_IOU for r in b)
    return TrackBox(box, len(b), outliers, outliers > JUMP_SHARE * len(b))


def pixel_box(image: Path, box: Box) -> Box:
    """A track box in pixels: VoxCeleb1 writes pixels, VoxCeleb2 fractions of the frame (all <= 1)."""
    if max(box) > 1.0:
        return box
    from PIL import Image

    with Image.open(image) as img:
        w, h = img.size
    return (box[0] * w, box[1] * h, box[2] * w, box[3] * h)


def _first_frame_of_clip(frames: list[Path], track: Track) -> Path:
    """The video's face image at the clip's first frame, else the first one after it (else the last)."""
    after = [f for f in frames if f.stem.isdigit() and int(f.stem) >= track.frame]
    return after[0] if after else frames[-1]


def _track_box(path: Path, track: Track, box_filter: str, window: int) -> tuple[Box | None, str]:
    """The clip's box for its face image at `path` ("first" or "median"), or None and why not."""
    if box_filter == "first":
        return track.box, ""
    frame = int(path.stem) if path.stem.isdigit() else track.frame
    found = filtered_box(track, frame, window)
    return (None, f"face track jumps: {found.outliers} of its {found.rows} boxes within {window} frames of frame "
                  f"{frame} are far from their median (IoU < {JUMP_IOU})") if found.jumps else (found.box, "")


def _faces(s: Speaker, faces_root: Path, txt_root: Path | None, frames: str, box_filter: str = "first",
           window: int = BOX_WINDOW):
    """(path, clip, box) for the speaker's face items: per clip (its first frame) with --txt-root,
    else per video, or every frame; and (track path, why) for clips whose track was dropped."""
    out, dropped = [], []
    for video in sorted(p for p in (faces_root / "unzippedFaces" / s.name / "1.6").glob("*") if p.is_dir()):
        jpgs = sorted(video.glob("*.jpg"))
        tracks = sorted((txt_root / "txt" / s.vox_id / video.name).glob("*.txt")) if txt_root else []
        if not jpgs:
            continue
        if frames == "all":
            out += [(f, "", None) for f in jpgs]
        elif tracks:
            for t in tracks:
                track = read_track(t)
                image = _first_frame_of_clip(jpgs, track)
                box, why = _track_box(image, track, box_filter, window)
                if why:
                    dropped.append((t.relative_to(txt_root).as_posix(), why))
                else:
                    out.append((image, t.stem, box))
        else:
            out.append((jpgs[0], "", None))
    return out, dropped


def _candidates(speakers: list[Speaker], wav_root: Path, faces_root: Path, frames: str, txt_root: Path | None,
                box_filter: str = "first", window: int = BOX_WINDOW):
    """(speaker, modality, absolute path, path inside the corpus, clip, box) for every media item
    found, plus (speaker, what, why) for speakers with nothing on disk and dropped tracks."""
    found, missing = [], []
    for s in speakers:
        wavs = sorted((wav_root / "wav" / s.vox_id).glob("*/*.wav"))
        faces, dropped = _faces(s, faces_root, txt_root, frames, box_filter, window)
        missing += [(s, track, why) for track, why in dropped]
        if not wavs:
            missing.append((s, "voice", f"no wav/{s.vox_id}/*/*.wav"))
        if not faces:
            missing.append((s, "face", f"no unzippedFaces/{s.name}/1.6/*/*.jpg"))
        found += [(s, "voice", w, w.relative_to(wav_root).as_posix(), w.stem, None) for w in wavs]
        found += [(s, "face", f, f.relative_to(faces_root).as_posix(), clip, box) for f, clip, box in faces]
    return found, missing


def _link(out: Path, name: str, target: Path) -> None:
    link = out / name
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target.resolve() / name, link)


def corpus_voxceleb(opts: CorpusVoxcelebOptions) -> CorpusVoxcelebResult:
    """`corpus voxceleb`: VoxCeleb1's media, put through the media pipeline and linked, as the
    corpus at `opts.out`."""
    if opts.box_filter not in BOX_FILTERS:
        raise UsageError(f"--box-filter must be one of {', '.join(BOX_FILTERS)}")
    if opts.box_window < 0:
        raise UsageError("--box-window must be 0 or more frames")
    speakers = read_meta(opts.meta)
    ids = [s.vox_id for s in speakers]
    split_of = pins_split(opts.pins_splits, speakers) if opts.pins_splits else kim_split(
        ids, opts.seed, opts.val)
    notes = read_annotations(opts.annotations, speakers) if opts.annotations else {}
    speakers = [s for s in speakers if s.vox_id in split_of]
    # boxes are filtered, and jumping tracks dropped, only where boxes are recorded
    box_filter = opts.box_filter if opts.box_frames else "first"
    found, missing = _candidates(speakers, opts.wav_root, opts.faces_root, opts.frames, opts.txt_root,
                                 box_filter, opts.box_window)
    jobs = [(modality, path) for _, modality, path, *_ in found]
    with mp.get_context("fork").Pool(max(1, opts.workers)) as pool:
        verdicts = list(tqdm(pool.imap(_probe, jobs, chunksize=16), total=len(jobs),
                             desc="checking media", unit="file"))
    opts.out.mkdir(parents=True, exist_ok=True)
    _link(opts.out, "wav", opts.wav_root)
    _link(opts.out, "unzippedFaces", opts.faces_root)
    items, skipped = [], [{"identity": s.vox_id, "path": what, "reason": why}
                          for s, what, why in missing]
    for (s, modality, path, rel, clip, box), why in zip(found, verdicts, strict=True):
        if why:
            skipped.append({"identity": s.vox_id, "path": rel, "reason": why})
            continue
        video, stem = Path(rel).parts[-2], Path(rel).stem
        item_id = f"{s.vox_id}-{modality}-{video}-{clip or stem}"
        box_text = " ".join(f"{v:g}" for v in pixel_box(path, box)) if box and opts.box_frames else ""
        items.append(Item(item_id, s.vox_id, modality, rel, split_of[s.vox_id], gender=s.gender,
                          nationality=s.nationality, video=video, box=box_text, **notes.get(s.vox_id, {})))
    write_manifest(opts.out, items)
    write_csv(opts.out / IDENTITIES, [
        {"identity": s.vox_id, "name": s.name, "gender": s.gender, "nationality": s.nationality,
         "split": split_of[s.vox_id], **{k: notes.get(s.vox_id, {}).get(k, "") for k in ANNOTATED}}
        for s in speakers])
    write_csv(opts.out / "skipped.csv", skipped, ("identity", "path", "reason"))
    info = _info(opts, speakers, split_of, items, skipped)
    info.write(opts.out)
    return CorpusVoxcelebResult(opts.out, info, skipped)


def run(args: argparse.Namespace) -> int:
    print(corpus_voxceleb(options(CorpusVoxcelebOptions, args)).summary())
    return 0


def _info(opts: CorpusVoxcelebOptions, speakers, split_of, items, skipped) -> CorpusInfo:
    splits = [s for s in (*SPLITS, "seen_test") if s in set(split_of.values())]
    frames_of = "clip" if opts.txt_root and opts.frames == "first" else "video"
    return CorpusInfo(
        generator="facevoice corpus voxceleb",
        counts=corpus_counts(items, {sp.vox_id: split_of[sp.vox_id] for sp in speakers}, splits, ("face", "voice")),
        details={
            "split": "learnable-pins" if opts.pins_splits else f"kim2018 seed {opts.seed}",
            "frames": f"{opts.frames} of each {frames_of}",
            "boxes": _boxes(opts),
            "skipped": len(skipped),
        })


def _boxes(opts: CorpusVoxcelebOptions) -> str:
    if not opts.box_frames:
        return "none (face crops)"
    if opts.box_filter == "first":
        return "each clip's first box, enlarged 1.5x when cropped"
    return (f"each clip's median box over its track within {opts.box_window} frames of the chosen frame "
            f"(tracks that jump dropped: over {JUMP_SHARE:.0%} of those boxes at IoU < {JUMP_IOU}), "
            "enlarged 1.5x when cropped")
