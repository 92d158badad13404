"""What the video corpus commands share (`corpus voxceleb2` in voxceleb2.py, `corpus avspeech` in
avspeech.py, each reading its own data set's metadata into clips): decoding a clip, ingesting
clips, writing the corpus.

Each clip (an MP4, or a segment of one) gives:
- its audio track, 16 kHz mono WAV, kept when WebRTC's VAD hears at least `--min-speech` s of
  speech in it (else the clip is skipped: "no speech");
- face frames: the first frame and `--frames - 1` more evenly spaced, each with a face detected
  and aligned by the media pipeline (dlib HOG + 5 landmarks; for AVSpeech the face nearest the
  published centre, else the largest). Only the region around the face is stored (a square of
  twice the face box), with the box in the manifest, so the media pipeline's 1.5x crop is what
  training and serving see. A clip with no face in any of its frames is skipped: "no face";
- the video id in the manifest's `video` column, so `train s2f` pairs a voice with a face of the
  same video (Oh et al. sec. 3; `train.pair_within_video`).
Per identity, the most frontal of its aligned faces (the nose nearest the eyes' midline) is
written as its `canonical_face`: the face decoder's target on real data. This is our deviation
from Cole et al., whose targets are frontalised and expression-normalised (docs/corpus.md).

Unreadable clips, clips with no face and clips with no speech are counted and listed in
skipped.csv. Finished clips are remembered under OUT/.ingest/, so a re-run resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing as mp
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import soundfile as sf
from PIL import Image
from tqdm import tqdm

from facevoice.service.corpus import IDENTITIES, CorpusInfo, Item, write_csv, write_manifest
from facevoice.service.errors import UsageError
from facevoice.service.media.errors import InvalidSignalError
from facevoice.service.media.faces import Detection, align, detect_faces, face_region
from facevoice.service.media.image import crop_face
from facevoice.training.corpus.splits import SPLITS, assign_splits
from facevoice.training.corpus.summary import corpus_counts, count_lines

AUDIO_RATE = 16_000
CANONICAL_SIZE = 256


@dataclass(frozen=True, kw_only=True)
class IngestOptions:
    """The arguments both video corpus commands take; each command's options add its data set's."""

    out: Path
    frames: int = 3  # face frames per clip: the first, then evenly spaced
    min_speech: float = 0.5  # seconds of speech a clip must have
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # identity fractions where the data set gives no split
    seed: int = 0
    workers: int = 2
    no_progress: bool = False


def add_ingest_arguments(p: argparse.ArgumentParser) -> None:
    d = IngestOptions
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--frames", type=int, default=d.frames,
                   help="face frames per clip: the first, then evenly spaced")
    p.add_argument("--min-speech", type=float, default=d.min_speech, help="seconds of speech a clip must have")
    p.add_argument("--split", type=float, nargs=3, default=d.split, metavar=("TRAIN", "VAL", "TEST"),
                   help="identity fractions where the data set gives no split")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--no-progress", action="store_true")


@dataclass(frozen=True)
class IngestResult:
    """A video corpus written; each command's result names its data set (TITLE)."""

    out: Path
    info: CorpusInfo  # what corpus.json holds: counts, clips, clips kept, skipped per reason
    TITLE: ClassVar[str] = "video corpus"

    @property
    def skipped_csv(self) -> Path:
        return self.out / "skipped.csv"

    def summary(self) -> str:
        d = self.info.details
        why = ", ".join(f"{k} {v}" for k, v in d["skipped"].items()) or "none"
        return "\n".join([f"{self.TITLE}: {d['clips_kept']} of {d['clips']} clips kept", *count_lines(self.info.counts),
                          f"skipped:    {why} (see {self.skipped_csv})"])


@dataclass
class Clip:
    identity: str
    video: str
    clip: str
    path: Path
    start: float | None = None  # seconds; None = the whole file
    end: float | None = None
    centre: tuple[float, float] | None = None  # AVSpeech: the face centre, as fractions of the frame


@dataclass
class ClipResult:
    """One clip ingested, as remembered under OUT/.ingest/ (read and written only here)."""

    reason: str = ""  # empty when kept
    voice: str = ""
    faces: list[dict] = field(default_factory=list)  # {path, box, frontal}

    @classmethod
    def read(cls, path: Path) -> ClipResult:
        return cls(**json.loads(path.read_text()))

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))


def frontality(face: Detection) -> float:
    """How frontal a face is: 1 when the nose tip is on the eyes' perpendicular bisector, lower
    as the head turns (the nose's offset from it over the eye distance)."""
    if face.eyes is None or face.nose is None:
        return 0.0
    (x1, y1), (x2, y2) = face.eyes
    d = math.dist((x1, y1), (x2, y2)) or 1.0
    mx, my = (x1 + x2) / 2, (y1 + y2) / 2
    ux, uy = (x2 - x1) / d, (y2 - y1) / d  # along the eyes
    offset = abs((face.nose[0] - mx) * ux + (face.nose[1] - my) * uy)
    return float(max(0.0, 1.0 - offset / d))


def read_clip(clip: Clip, frames: int) -> tuple[np.ndarray, list[Image.Image]]:
    """The clip's audio (mono float32 at AUDIO_RATE) and `frames` frames: the first and evenly
    spaced ones after it, between start and end."""
    import av

    with av.open(str(clip.path)) as container:
        audio = next((s for s in container.streams if s.type == "audio"), None)
        video = next((s for s in container.streams if s.type == "video"), None)
        if audio is None or video is None:
            raise InvalidSignalError(f"no {'audio' if audio is None else 'video'} track")
        start = clip.start or 0.0
        duration = (float(container.duration) / 1e6) if container.duration else None
        end = clip.end if clip.end is not None else duration
        if end is None or end <= start:
            raise InvalidSignalError("no duration")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        blocks = []
        for frame in container.decode(audio):
            t = float(frame.time or 0.0)
            if t > end:
                break
            for out in resampler.resample(frame):
                if t + out.samples / AUDIO_RATE >= start:
                    blocks.append(out.to_ndarray().reshape(-1))
        samples = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
        samples = samples[: int((end - start) * AUDIO_RATE)]
        container.seek(0)
        targets = [start + (end - start) * k / frames for k in range(frames)]
        images = []
        for frame in container.decode(video):
            t = float(frame.time or 0.0)
            if t > end or not targets:
                break
            if t + 1e-6 >= targets[0]:
                images.append(upright(frame))
                targets.pop(0)
    return samples.astype(np.float32), images


def upright(frame) -> Image.Image:
    """A video frame as it is shown: turned by its display matrix's rotation (a phone's portrait
    video is stored sideways and says so there), counter-clockwise as FFmpeg's angle is."""
    img = frame.to_image().convert("RGB")
    angle = round(frame.rotation or 0) % 360
    return img.rotate(angle, expand=True) if angle else img


def pick_face(faces: list[Detection], size: tuple[int, int], centre: tuple[float, float] | None) -> Detection | None:
    if not faces:
        return None
    if centre is None:
        return faces[0]  # the largest
    cx, cy = centre[0] * size[0], centre[1] * size[1]
    return min(faces, key=lambda f: math.dist((f.box[0] + f.box[2] / 2, f.box[1] + f.box[3] / 2), (cx, cy)))


def ingest_clip(job: tuple[Clip, Path, int, float]) -> tuple[Clip, ClipResult]:
    """One clip -> its WAV and face regions under out/media/ (or why it was skipped)."""
    from facevoice.service.media.speech import trim_to_speech

    clip, out, frames, min_speech = job
    done = out / ".ingest" / (hashlib.sha1(f"{clip.path}|{clip.start}|{clip.end}|{frames}".encode()).hexdigest()
                              + ".json")
    if done.exists():
        return clip, ClipResult.read(done)
    result = ClipResult()
    try:
        samples, images = read_clip(clip, frames)
        trim_to_speech(samples, AUDIO_RATE, min_speech)  # refuses a clip without speech
    except InvalidSignalError as e:
        result.reason = "no speech" if "no speech" in str(e) else f"unreadable: {e}"
    except Exception as e:  # FFmpeg's complaints about a damaged file, as one reason
        result.reason = f"unreadable: {type(e).__name__}: {str(e)[:200]}"
    if not result.reason:
        rel = Path("media") / clip.identity / clip.video
        (out / rel).mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(images):
            face = pick_face(detect_faces(img), img.size, clip.centre)
            if face is None:
                continue
            region, box = face_region(img, face)
            name = rel / f"{clip.clip}-{k}.jpg"
            region.save(out / name, "JPEG", quality=92)
            result.faces.append({"path": name.as_posix(), "box": " ".join(f"{v:.1f}" for v in box),
                                 "frontal": frontality(face)})
        if not result.faces:
            result.reason = "no face"
        else:
            result.voice = (rel / f"{clip.clip}.wav").as_posix()
            sf.write(out / result.voice, samples, AUDIO_RATE, subtype="PCM_16")
    result.write(done)
    return clip, result


def canonical_face(out: Path, face: dict) -> Image.Image:
    """An identity's most frontal face, aligned (eyes level) and cut with the 1.5x margin."""
    region = Image.open(out / face["path"]).convert("RGB")
    x, y, w, h = (float(v) for v in face["box"].split())
    found = detect_faces(region)
    if found:  # re-detect in the stored region for the landmarks, then align
        best = min(found, key=lambda f: math.dist((f.box[0], f.box[1]), (x, y)))
        region, (x, y, w, h) = align(region, best)
    return crop_face(region, (x, y, w, h), 1.5).resize((CANONICAL_SIZE, CANONICAL_SIZE), Image.BICUBIC)


def ingest(clips: list[Clip], opts: IngestOptions, split_of: dict[str, str], attrs: dict[str, dict],
           generator: str, missing: list[dict] | None = None) -> CorpusInfo:
    """Every clip ingested (in `opts.workers` processes), the manifest, identities.csv, skipped.csv,
    corpus.json written under `opts.out`; returns what corpus.json holds. `missing`: clips the
    metadata names and the disk lacks, listed in skipped.csv as they are."""
    out, frames = opts.out, opts.frames
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(c, out, frames, opts.min_speech) for c in clips]
    with mp.get_context("fork").Pool(max(1, opts.workers)) as pool:
        results = list(tqdm(pool.imap(ingest_clip, jobs), total=len(jobs), desc="ingesting clips", unit="clip",
                            disable=opts.no_progress))
    items, skipped, best = [], list(missing or []), {}
    for clip, r in results:
        if r.reason:
            skipped.append({"identity": clip.identity, "path": str(clip.path), "reason": r.reason})
            continue
        a = attrs.get(clip.identity, {})
        split = split_of[clip.identity]
        items.append(Item(f"{clip.identity}-voice-{clip.video}-{clip.clip}", clip.identity, "voice", r.voice, split,
                          video=clip.video, **a))
        for k, f in enumerate(r.faces):
            items.append(Item(f"{clip.identity}-face-{clip.video}-{clip.clip}-{k}", clip.identity, "face", f["path"],
                              split, video=clip.video, box=f["box"], **a))
            if f["frontal"] > best.get(clip.identity, ({}, -1.0))[1]:
                best[clip.identity] = (f, f["frontal"])
    for identity, (face, _) in sorted(best.items()):
        path = Path("canonical") / f"{identity}.jpg"
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        canonical_face(out, face).save(out / path, "JPEG", quality=95)
        items.append(Item(f"{identity}-canonical", identity, "canonical_face", path.as_posix(), split_of[identity],
                          **attrs.get(identity, {})))
    write_manifest(out, items)
    kept = sorted({i.identity for i in items})
    write_csv(out / IDENTITIES, [{"identity": i, "split": split_of[i], **attrs.get(i, {})} for i in kept],
              ("identity", "split", *dict.fromkeys(k for a in attrs.values() for k in a)))
    write_csv(out / "skipped.csv", skipped, ("identity", "path", "reason"))
    reasons = {}
    for s in skipped:
        key = s["reason"].split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    total = len(clips) + len(missing or [])
    info = CorpusInfo(generator=generator, config={"frames_per_clip": frames},
                      counts=corpus_counts(items, {i: split_of[i] for i in kept}, list(SPLITS),
                                           ("face", "voice", "canonical_face")),
                      details={"clips": total, "clips_kept": total - len(skipped), "skipped": reasons,
                               "canonical_faces": "the most frontal aligned face of each identity"})
    info.write(out)
    return info


def random_split(identities: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    n = len(identities)
    n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
    if n - n_val - n_test < 1:
        raise UsageError(f"--split {fractions} leaves no training identities of {n}")
    return assign_splits(identities, (n - n_val - n_test, n_val, n_test), seed)
