"""Decode and face-detection speed of the media pipeline -> docs/benchmarks.md.

    python -m bench.media_formats --model-repo models/demo --index-root demo/indexes [--smoke] [--doc PATH]

- Audio: the association front end (decode, resample, tile) of 4.3 s of espeak-ng speech as
  WAV (the baseline) and as MP3, M4A, WebM/Opus, Ogg/Opus and the audio track of MP4 / MKV video.
- Faces: the face front end of grace_hopper.jpg (512x600) and of the same face off centre on
  1400x900 and 2800x1800 frames, without detection (the baseline: the centre square) and with
  dlib's HOG detector + alignment; then SearchVoices through the service, with and without
  detection, to give detection's share of a call: private copies of the model repository whose
  face front ends detect otherwise (their manifest written by its owner, their checksums recorded
  again), beside the repository as released.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from matplotlib import cbook
from PIL import Image

from bench.report import MADE, machine, parse, publish, smoke_release
from devtools.media_samples import FORMATS, encode, speech, wav_bytes
from facevoice.cli import run_script
from facevoice.service import checksums
from facevoice.service.media.audio import AssociationAudio, association_waveform
from facevoice.service.media.image import FaceImage, decode_image, face_input_used
from facevoice.service.repository import open_repository, read_repository_manifest, write_repository_manifest
from facevoice.service.serve import Running, ServeConfig
from facevoice.v1 import facevoice_pb2 as pb
from facevoice.v1 import facevoice_pb2_grpc as pb_grpc


def median_ms(fn, n: int) -> float:
    fn()  # warm: models load, caches fill
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def photos() -> dict[str, bytes]:
    hopper = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()
    face = decode_image(hopper)
    out = {"grace_hopper.jpg 512x600": hopper}
    for w, h in ((1400, 900), (2800, 1800)):
        canvas = Image.new("RGB", (w, h), (128, 128, 128))
        canvas.paste(face.resize((307, 360)), (w - 400, h - 450))
        out[f"face off centre, {w}x{h} JPEG"] = png(canvas)
    return out


def audio_rows(n: int) -> list[str]:
    x, sr = speech()
    cfg = AssociationAudio()
    files = {"WAV (baseline)": wav_bytes(x, sr), **{name: encode(x, sr, name) for name in FORMATS}}
    rows, base = [], None
    for name, data in files.items():
        ms = median_ms(lambda d=data: association_waveform(d, cfg), n)
        base = base or ms
        rows.append(f"| {name} | {len(data) / 1024:.0f} KB | {ms:.2f} | {ms / base:.2f} |")
    return ["| input (4.3 s of speech) | size | ms per clip | ratio to WAV |", "|---|---|---|---|", *rows]


def face_rows(n: int) -> list[str]:
    rows = ["| photo | centre square (baseline), ms | HOG detection + alignment, ms | ratio | images/s detected |",
            "|---|---|---|---|---|"]
    for name, data in photos().items():
        plain = median_ms(lambda d=data: face_input_used(d, FaceImage(size=224)), n)
        detect = median_ms(lambda d=data: face_input_used(d, FaceImage(size=224, detector="hog")), n)
        rows.append(f"| {name} | {plain:.1f} | {detect:.1f} | {detect / plain:.1f} | {1000 / detect:.1f} |")
    return rows


def with_detector(src: Path, dst: Path, detector: str) -> Path:
    """A private copy of the model repository `src` whose face front ends detect with `detector`
    ("": none, the centre square once the guard has found a face): its manifest written by its
    owner, and its checksums recorded again for the files they listed (`src` verified first)."""
    open_repository(src)
    shutil.copytree(src, dst)
    manifest = read_repository_manifest(dst)
    spaces = {name: dataclasses.replace(space, frontend=dataclasses.replace(space.frontend, detector=detector))
              if space.modality == "face" else space for name, space in manifest.spaces.items()}
    write_repository_manifest(dst, dataclasses.replace(manifest, spaces=spaces))
    checksums.write(dst, list(checksums.read(dst)))
    return dst


def released_detector(model_repo: Path) -> str:
    return read_repository_manifest(model_repo).space("face").frontend.detector


def search_rows(model_repo: Path, index_root: Path, n: int) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="facevoice-bench-"))
    released = released_detector(model_repo)
    repos = [("model without detection (baseline)", with_detector(model_repo, work / "plain", "")),
             ("model with HOG detection", with_detector(model_repo, work / "hog", "hog"))]
    if released not in ("", "hog"):
        repos.append((f"the model as released (detector `{released}`)", model_repo))
    photo = photos()["face off centre, 1400x900 JPEG"]
    rows = ["| SearchVoices, 1400x900 photo, concurrency 1 | p50 ms | ratio |", "|---|---|---|"]
    base = None
    for label, repo in repos:
        cfg = ServeConfig(model_repo=repo, index_root=index_root, port=0, metrics_port=-1, gallery_log="file")
        root = work / f"indexes-{len(rows)}"
        shutil.copytree(index_root, root, ignore=shutil.ignore_patterns(".build", ".gallery-log"))
        running = Running(dataclasses.replace(cfg, index_root=root))
        stub = pb_grpc.FaceVoiceStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
        try:
            ms = median_ms(lambda s=stub: s.SearchVoices(pb.SearchVoicesRequest(face=pb.Image(data=photo), top_k=10)),
                           n)
        finally:
            running.stop(0)
        base = base or ms
        rows.append(f"| {label} | {ms:.1f} | {ms / base:.2f} |")
    shutil.rmtree(work, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-repo", type=Path, default=Path("models/demo"))
    p.add_argument("--index-root", type=Path, default=Path("demo/indexes"))
    p.add_argument("--repeats", type=int, default=20)
    args = smoke_release(parse(p, argv, smoke={"repeats": 2, "index_root": MADE}))
    body = "\n".join([
        "## Media pipeline: decoding formats, face detection", "",
        f"Command: `python -m bench.media_formats` on {machine()}. Median of {args.repeats} calls after one warm-up, "
        "one thread; each table's first row is its baseline, measured in the same run.", "",
        *audio_rows(args.repeats), "", *face_rows(args.repeats), "",
        *search_rows(args.model_repo, args.index_root, args.repeats)])
    publish("media-formats", body, args)
    return 0


if __name__ == "__main__":
    run_script(main, "python -m bench.media_formats")
