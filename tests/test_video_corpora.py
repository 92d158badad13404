"""`facevoice corpus voxceleb2` and `corpus avspeech` end to end on trees of real MP4 files made
in the test (a face video with an espeak-ng speech track), with clips that must be skipped."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image, ImageOps

from devtools.media_samples import av_clip, speech
from facevoice.service.corpus import CorpusInfo, read_manifest
from facevoice.service.media import face_input
from facevoice.service.media.faces import detect_faces
from facevoice.training.corpus.avspeech import CorpusAvspeechOptions, corpus_avspeech
from facevoice.training.corpus.voxceleb2 import CorpusVoxceleb2Options, corpus_voxceleb2

HOPPER = Image.open(Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))).convert("RGB")
LOGO = Image.open(Path(cbook.get_sample_data("logo2.png", asfileobj=False))).convert("RGB")


def person(k: int) -> Image.Image:
    """Two detectable "people": Grace Hopper, and her mirror image in another tint."""
    return HOPPER if k == 0 else Image.merge("RGB", ImageOps.mirror(HOPPER).split()[::-1])


def framed(face: Image.Image, at: tuple[int, int], size=(640, 480)) -> Image.Image:
    canvas = Image.new("RGB", size, (90, 90, 90))
    canvas.paste(face.resize((256, 300)), at)
    return canvas


@pytest.fixture(scope="module")
def voice():
    return speech("Faces and voices, learnt together from video.")


@pytest.fixture(scope="module")
def vox2(tmp_path_factory, voice):
    x, sr = voice
    root = tmp_path_factory.mktemp("vox2")
    for k, ident in enumerate(("id00001", "id00002")):
        for v, video in enumerate(("vidA", "vidB")):
            d = root / "dev" / "mp4" / ident / video
            d.mkdir(parents=True)
            av_clip(d / "00001.mp4", framed(person(k), (60 + 200 * v, 80)), x, sr)
    bad = root / "dev" / "mp4" / "id00003" / "vidC"
    bad.mkdir(parents=True)
    av_clip(bad / "00001.mp4", framed(LOGO.resize((300, 150)), (100, 100)), x, sr)  # no face
    quiet = (np.random.default_rng(0).standard_normal(3 * sr) * 0.002).astype(np.float32)
    av_clip(bad / "00002.mp4", framed(person(0), (100, 80)), quiet, sr)  # no speech
    (bad / "00003.mp4").write_bytes(b"\0\0\0\x18ftypisom" + bytes(range(256)) * 8)  # unreadable
    (root / "vox2_meta.csv").write_text("VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set \n"
                                        "id00001 ,n000001 ,f ,dev \nid00002 ,n000002 ,m ,test \n"
                                        "id00003 ,n000003 ,m ,dev \n")
    return root


def test_voxceleb2_ingest_end_to_end(vox2, tmp_path):
    out = tmp_path / "corpus"
    opts = CorpusVoxceleb2Options(root=vox2, meta=vox2 / "vox2_meta.csv", out=out, frames=2, workers=1,
                                  no_progress=True)
    result = corpus_voxceleb2(opts)
    printed = result.summary()
    items = read_manifest(out)
    by = {m: [i for i in items if i.modality == m] for m in ("face", "voice", "canonical_face")}
    assert {i.identity for i in items} == {"id00001", "id00002"}
    assert len(by["voice"]) == 4 and len(by["face"]) == 8 and len(by["canonical_face"]) == 2
    assert {i.video for i in by["voice"]} == {"vidA", "vidB"} and all(i.box for i in by["face"])
    assert {i.identity: i.split for i in by["canonical_face"]} == {"id00001": "train", "id00002": "test"}
    assert {i.gender for i in by["voice"]} == {"female", "male"}
    # the stored region and its box give the media pipeline's crop of the face
    for item in by["face"]:
        region = Image.open(out / item.path)
        _, _, w, h = item.face_box()
        assert region.width == region.height and 1.9 * max(w, h) < region.width < 2.1 * max(w, h)
        assert face_input((out / item.path).read_bytes(), box=item.face_box()).shape == (3, 224, 224)
    assert len(detect_faces(Image.open(out / by["canonical_face"][0].path))) == 1  # a face, aligned
    skipped = list(csv.DictReader((out / "skipped.csv").read_text().splitlines()))
    assert sorted(r["reason"].split(":")[0] for r in skipped) == ["no face", "no speech", "unreadable"]
    info = CorpusInfo.read(out)
    assert result.out == out and result.info == info and result.skipped_csv == out / "skipped.csv"
    assert info.details["clips"] == 7 and info.details["clips_kept"] == 4
    assert info.counts["items"] == {"face": 8, "voice": 4, "canonical_face": 2}  # as the manifest holds
    assert "4 of 7 clips kept" in printed and "no face 1" in printed
    # resumable: a second run reuses every finished clip and writes the same manifest
    before = (out / "manifest.csv").read_text()
    assert corpus_voxceleb2(opts).info == info
    assert (out / "manifest.csv").read_text() == before
    # Speech2Face's face decoder trains on it: the canonical faces are its targets
    from facevoice.training.speech2face.decoder import TrainFaceDecoderOptions, train_face_decoder
    from facevoice.training.speech2face.features import TrainFaceFeaturesOptions, train_face_features
    from tests.serving import S2F_TINY

    tiny = (*(s for s in S2F_TINY if not s.startswith("face.attributes")), "face.attributes=[]")
    common = dict(corpus=out, workers=1, no_progress=True, threads=2, cache_dir=tmp_path / "cache", set=tiny)
    train_face_features(TrainFaceFeaturesOptions(**common, out=tmp_path / "face"))
    train_face_decoder(TrainFaceDecoderOptions(**common, out=tmp_path / "decoder",
                                               face_net=tmp_path / "face" / "face_net.pt"))
    assert (tmp_path / "decoder" / "decoder.pt").exists()


def test_avspeech_ingest_takes_the_face_nearest_the_published_centre(tmp_path, voice):
    x, sr = voice
    clips = tmp_path / "clips"
    clips.mkdir()
    two = Image.new("RGB", (800, 480), (90, 90, 90))
    two.paste(person(0).resize((256, 300)), (20, 80))  # left: Grace Hopper
    two.paste(person(1).resize((220, 258)), (540, 100))  # right: the other, smaller
    av_clip(clips / "yt_two_0.000_3.000.mp4", two, x[: 3 * sr], sr)
    av_clip(clips / "yt_whole.mp4", framed(person(1), (200, 80)), np.r_[x, x], sr)
    (tmp_path / "avspeech.csv").write_text("yt_two,0.000000,3.000000,0.85,0.5\n"
                                           "yt_whole,1.000000,4.500000,0.5,0.5\nyt_gone,0,3,0.5,0.5\n")
    out = tmp_path / "corpus"
    corpus_avspeech(CorpusAvspeechOptions(csv=tmp_path / "avspeech.csv", clips=clips, out=out, frames=2, workers=1,
                                          split=(0.5, 0.0, 0.5), no_progress=True))
    items = read_manifest(out)
    faces = [i for i in items if i.modality == "face" and i.identity == "yt_two"]
    assert faces and all(i.video == "yt_two" for i in faces)
    # the face nearest (0.85, 0.5) of the frame is the right-hand one, the tinted person (blue over
    # red, where Grace Hopper's face is red over blue), though it is the smaller
    for f in faces:
        x0, y0, w, h = f.face_box()
        face = np.asarray(Image.open(out / f.path).convert("RGB").crop((x0, y0, x0 + w, y0 + h)), np.float32)
        r, _, b = face.reshape(-1, 3).mean(axis=0)
        assert b > r + 40, (r, b)
    voices = {i.identity: i for i in items if i.modality == "voice"}
    import soundfile as sf

    cut = sf.info(out / voices["yt_whole"].path)
    assert abs(cut.duration - 3.5) < 0.1  # cut at the row's start and end
    skipped = csv.DictReader((out / "skipped.csv").read_text().splitlines())
    assert any(r["reason"].startswith("unreadable") for r in skipped)


def test_a_rotated_phone_video_is_read_upright():
    """A portrait phone video is stored sideways with a display matrix; its frames come out as
    shown (issue 29): a 64x32 frame turned 90 degrees is 32 wide and 64 high, its white half on top."""
    import io

    import av

    from facevoice.training.corpus.video import upright

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        v = c.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 64, 32, "yuv420p"
        v.set_display_rotation(90)
        pixels = np.zeros((32, 64, 3), np.uint8)
        pixels[:, 32:] = 255  # the right half white
        for i in range(3):
            f = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            f.pts = i
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
    buf.seek(0)
    with av.open(buf) as c:
        img = upright(next(c.decode(c.streams.video[0])))
    arr = np.asarray(img).mean(axis=(1, 2))
    assert img.size == (32, 64) and arr[:24].mean() > 200 and arr[40:].mean() < 50
