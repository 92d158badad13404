"""Face detection and alignment (issue 17, section 1) on the photos packages ship, and through
the service for a model whose front end detects."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import skimage
from matplotlib import cbook
from PIL import Image

from facevoice.service import checksums
from facevoice.service.build import IndexBuildOptions, index_build
from facevoice.service.media.errors import InvalidSignalError
from facevoice.service.media.faces import align, detect_faces
from facevoice.service.media.frontends import from_dict, to_dict
from facevoice.service.media.image import FaceImage, decode_image, face_input_used
from facevoice.service.repository import REPOSITORY_MANIFEST
from facevoice.v1 import facevoice_pb2 as pb
from tests.serving import start_service

HOPPER = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()
LOGO = Path(cbook.get_sample_data("logo2.png", asfileobj=False)).read_bytes()
# Grace Hopper's face in grace_hopper.jpg (512x600), read off the picture: eyes at about
# (222, 194) and (307, 190), the chin near y 330
FACE_CENTRE, EYES = (265, 235), ((222, 194), (307, 190))
# Eileen Collins in scikit-image's astronaut.png (512x512), read off the picture the same way:
# eyes at about (202, 102) and (247, 102), the nose tip near (225, 120), the chin near y 172
ASTRONAUT = (Path(skimage.__file__).parent / "data" / "astronaut.png").read_bytes()
ASTRONAUT_NOSE, ASTRONAUT_EYES = (225, 120), ((202, 102), (247, 102))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def on_canvas(*placements: tuple[float, tuple[int, int]], size=(1400, 900)) -> Image.Image:
    """Grace Hopper pasted at (scale, (x, y)) on a grey canvas: off centre, several faces."""
    canvas = Image.new("RGB", size, (128, 128, 128))
    hopper = decode_image(HOPPER)
    for scale, at in placements:
        canvas.paste(hopper.resize((round(512 * scale), round(600 * scale))), at)
    return canvas


def inside(point, box) -> bool:
    x, y, w, h = box
    return x <= point[0] <= x + w and y <= point[1] <= y + h


def test_the_detected_box_lies_on_the_face():
    (face,) = detect_faces(decode_image(HOPPER))
    assert inside(FACE_CENTRE, face.box) and all(inside(e, face.box) for e in EYES)
    assert 120 < face.box[2] < 260 and face.score > 0.5
    for found, truth in zip(face.eyes, EYES, strict=True):
        assert math.dist(found, truth) < 15


def test_the_astronaut_photo_gives_one_face_on_her_face():
    """A second real photo, in PNG, with a helmet ring and a suit below the face: one face,
    where it is, and the front end crops that face rather than the centre of the picture."""
    (face,) = detect_faces(decode_image(ASTRONAUT))
    assert inside(ASTRONAUT_NOSE, face.box) and all(inside(e, face.box) for e in ASTRONAUT_EYES)
    assert 60 < face.box[2] < 140 and face.score > 0.5
    for found, truth in zip(face.eyes, ASTRONAUT_EYES, strict=True):
        assert math.dist(found, truth) < 10
    x, used = face_input_used(ASTRONAUT, FaceImage(size=64, detector="hog"))
    assert used.source == "detected" and inside(ASTRONAUT_NOSE, used.box)
    assert not np.allclose(x, face_input_used(ASTRONAUT, FaceImage(size=64))[0])


def test_an_off_centre_face_is_found_where_the_centre_crop_misses_it():
    canvas = on_canvas((0.6, (1000, 400)))  # bottom right of a 1400x900 frame
    x, used = face_input_used(png(canvas), FaceImage(size=64, detector="hog"))
    assert used.source == "detected" and inside((1000 + 265 * 0.6, 400 + 235 * 0.6), used.box)
    centre = face_input_used(png(canvas), FaceImage(size=64))[0]
    assert used.score > 0 and not np.allclose(x, centre)
    # and the detected crop is the one a client's box of the same face gives (no rotation here)
    client = face_input_used(png(canvas), FaceImage(size=64, align=False), box=used.box)[0]
    unaligned = face_input_used(png(canvas), FaceImage(size=64, detector="hog", align=False))[0]
    assert np.abs(unaligned - client).max() < 1e-6


def test_several_faces_largest_first_and_the_request_can_name_one():
    canvas = png(on_canvas((1.0, (50, 100)), (0.4, (900, 300))))
    big, small = detect_faces(decode_image(canvas))
    assert big.box[2] > 2 * small.box[2] and big.box[0] < 600 < small.box[0]
    cfg = FaceImage(size=64, detector="hog")
    assert face_input_used(canvas, cfg)[1].box == big.box
    assert face_input_used(canvas, cfg, face_index=1)[1].box == small.box
    with pytest.raises(InvalidSignalError, match="face 2 asked for, 2 found"):
        face_input_used(canvas, cfg, face_index=2)


def test_no_face_is_refused_unless_the_client_sends_a_box():
    cfg = FaceImage(size=64, detector="hog")
    with pytest.raises(InvalidSignalError, match="no face found"):
        face_input_used(LOGO, cfg)
    assert face_input_used(LOGO, cfg, box=(10, 10, 100, 100))[1].source == "client"
    with pytest.raises(InvalidSignalError, match="no face found"):  # guarded without detection too
        face_input_used(LOGO, FaceImage(size=64))
    assert face_input_used(HOPPER, FaceImage(size=64))[1].source == "centre"  # a model without detection


def test_alignment_levels_the_eyes():
    tilted = decode_image(HOPPER).rotate(15, resample=Image.BICUBIC, center=FACE_CENTRE, fillcolor=(128, 128, 128))
    (face,) = detect_faces(tilted)
    (x1, y1), (x2, y2) = face.eyes
    assert abs(math.degrees(math.atan2(y2 - y1, x2 - x1))) > 10
    (after,) = detect_faces(align(tilted, face)[0])
    (x1, y1), (x2, y2) = after.eyes
    assert abs(math.degrees(math.atan2(y2 - y1, x2 - x1))) < 4


def test_the_shipped_detectors_record_reads_back(tmp_path):
    """`train face-detector` writes its record beside the detector through DetectorRecord: the
    shipped one reads back as the default settings gave it, and writes back byte for byte."""
    from facevoice.service.errors import FormatError
    from facevoice.service.media.faces import SYNTH_DETECTOR
    from facevoice.training.corpus.face_detector import DetectorConfig, DetectorRecord, TrainFaceDetectorResult

    record = DetectorRecord.read(SYNTH_DETECTOR)
    assert record.config == dataclasses.asdict(DetectorConfig())
    assert record.evaluation["new_people"]["found_iou_0.5"] >= 0.98  # the target the summary names
    copy = tmp_path / "d.svm"
    assert record.write(copy) == tmp_path / "d.json"
    assert (tmp_path / "d.json").read_text() == SYNTH_DETECTOR.with_suffix(".json").read_text()
    assert DetectorRecord.read(copy) == record
    text = TrainFaceDetectorResult(copy, record).summary()
    assert f"detector written to {copy}" in text and "its record beside it (d.json)" in text
    assert "faces found at IoU 0.5" in text and "real faces: astronaut.png 1, grace_hopper.jpg 1" in text
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(FormatError, match=r"bad\.json: not a face detector.s record"):
        DetectorRecord.read(tmp_path / "bad.svm")


def test_the_front_end_records_the_detector():
    cfg = FaceImage(size=224, detector="hog", min_score=0.2)
    assert from_dict(to_dict(cfg)) == cfg and from_dict({"kind": "face_image"}).detector == ""
    from facevoice.training.association.config import FaceConfig

    assert FaceConfig(detector="hog").frontend().detector == "hog"


@pytest.fixture
def detecting_repo(stack, tmp_path):
    """The stack's models, with the face spaces' front ends set to detect (as a model trained
    with `--set face.detector=hog` records)."""
    repo = tmp_path / "repo"
    shutil.copytree(stack.repo, repo)
    manifest = json.loads((repo / REPOSITORY_MANIFEST).read_text())
    for space in ("face", "face_feature"):
        manifest["spaces"][space]["frontend"]["detector"] = "hog"
    (repo / REPOSITORY_MANIFEST).write_text(json.dumps(manifest))
    checksums.write(repo)  # the service refuses a hand-edited manifest until its checksums are written anew
    return dataclasses.replace(stack, repo=repo)


def test_the_service_detects_for_a_model_that_was_trained_to(detecting_repo):
    running, stub = start_service(detecting_repo)
    photo = png(on_canvas((0.6, (1000, 400))))
    try:
        found = stub.SearchVoices(pb.SearchVoicesRequest(face=pb.Image(data=photo), top_k=3))
        assert found.query_face.source == "detected" and found.query_face.score > 0
        assert inside((1000 + 265 * 0.6, 400 + 235 * 0.6), (found.query_face.box.x, found.query_face.box.y,
                                                           found.query_face.box.width, found.query_face.box.height))
        emb = stub.Embed(pb.EmbedRequest(media=pb.Media(image=pb.Image(data=photo, box=pb.FaceBox(
            x=1000, y=400, width=300, height=300)))))
        assert emb.face.source == "client"
        with pytest.raises(grpc.RpcError) as e:
            stub.SearchVoices(pb.SearchVoicesRequest(face=pb.Image(data=LOGO), top_k=3))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no face found" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            stub.SearchVoices(pb.SearchVoicesRequest(face=pb.Image(data=photo, face_index=-1), top_k=3))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        match = stub.Match(pb.MatchRequest(probe=pb.Media(audio=pb.Audio(data=(detecting_repo.corpus / "toy001" /
                                                                              "0.wav").read_bytes())),
                                           candidates=[pb.Media(image=pb.Image(data=photo))] * 2))
        assert [f.source for f in match.faces] == ["detected", "detected"]
        frontends = stub.GetIndexInfo(pb.GetIndexInfoRequest()).frontends
        assert json.loads(frontends["face"])["detector"] == "hog" and json.loads(frontends["voice"])["kind"]
    finally:
        running.stop(0)


def test_index_build_detects_and_skips_photos_without_a_face(detecting_repo, tmp_path):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    (gallery / "hopper.png").write_bytes(png(on_canvas((0.6, (1000, 400)))))
    (gallery / "logo.png").write_bytes(LOGO)
    (gallery / "manifest.csv").write_text("item_id,identity,modality,path,split\n"
                                          "hopper,gh,face,hopper.png,test\nlogo,none,face,logo.png,test\n")
    out = tmp_path / "indexes"
    index_build(IndexBuildOptions(gallery=gallery / "manifest.csv", model_repo=detecting_repo.repo, out=out,
                                  modalities=("face",), no_progress=True))
    skipped = (out / "skipped-face.csv").read_text()
    assert "logo" in skipped and "no face found" in skipped and "hopper" not in skipped
