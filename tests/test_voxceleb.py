"""VoxCeleb1 ingest on a tiny fixture tree made here, with missing and unreadable files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from devtools.media_samples import wav_bytes
from facevoice.service.corpus import CorpusInfo, read_identities, read_manifest
from facevoice.service.errors import FormatError
from facevoice.service.media.errors import InvalidSignalError
from facevoice.training.corpus import voxceleb
from facevoice.training.corpus.voxceleb import CorpusVoxcelebOptions, corpus_voxceleb
from tests.conftest import image_bytes, tone

SPEAKERS = [  # VoxCeleb1 ID, VGGFace1 ID, gender, nationality
    ("id10001", "A.J._Buckley", "m", "Ireland"),
    ("id10002", "A.R._Rahman", "m", "India"),
    ("id10003", "Aamir_Khan", "m", "India"),
    ("id10004", "Aaron_Tveit", "m", "USA"),
    ("id10005", "Aaron_Yoo", "m", "USA"),
    ("id10006", "Abbie_Cornish", "f", "Australia"),
    ("id10007", "Abigail_Breslin", "f", "USA"),
    ("id10008", "Adam_Beach", "m", "Canada"),  # has faces, no audio
]


@pytest.fixture
def tree(tmp_path):
    wav, faces = tmp_path / "vox1", tmp_path / "vggface"
    good_wav = wav_bytes(tone(sr=16_000, seconds=1.0), 16_000)
    good_jpg = image_bytes(Image.new("RGB", (64, 64), (180, 140, 120)), "JPEG")
    for vox_id, name, *_ in SPEAKERS:
        for yt in ("1zcIwhmdeo4", "7w0IBEWc9Qw"):
            if vox_id != "id10008":
                d = wav / "wav" / vox_id / yt
                d.mkdir(parents=True)
                (d / "00001.wav").write_bytes(good_wav)
                (d / "00002.wav").write_bytes(good_wav)
            f = faces / "unzippedFaces" / name / "1.6" / yt
            f.mkdir(parents=True)
            (f / "0000375.jpg").write_bytes(good_jpg)
            (f / "0000400.jpg").write_bytes(good_jpg)
    (wav / "wav/id10002/1zcIwhmdeo4/00002.wav").write_text("this is not audio\n")  # text as .wav
    (wav / "wav/id10003/1zcIwhmdeo4/00001.wav").write_bytes(good_wav[:30])  # truncated header
    (faces / "unzippedFaces/Aamir_Khan/1.6/7w0IBEWc9Qw/0000375.jpg").write_bytes(good_jpg[:200])
    meta = tmp_path / "vox1_meta.csv"
    meta.write_text("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
                    + "".join(f"{a}\t{b}\t{c}\t{d}\tdev\n" for a, b, c, d in SPEAKERS))
    return tmp_path, wav, faces, meta


def _opts(tmp_path, wav, faces, meta, **extra) -> CorpusVoxcelebOptions:
    return CorpusVoxcelebOptions(wav_root=wav, faces_root=faces, meta=meta, out=tmp_path / "corpus", **extra)


def test_manifest_and_skipped_report(tree):
    tmp_path, wav, faces, meta = tree
    result = corpus_voxceleb(_opts(tmp_path, wav, faces, meta))
    out = tmp_path / "corpus"
    assert result.out == out and result.info == CorpusInfo.read(out)
    items = read_manifest(out)
    by = Counter(i.modality for i in items)
    # 7 speakers x 2 videos x 2 clips, less the 2 unreadable; first frame of 8 x 2 videos, less 1
    assert by == {"voice": 26, "face": 15}
    skipped = (out / "skipped.csv").read_text()
    assert "id10002,wav/id10002/1zcIwhmdeo4/00002.wav,MediaDecodeError" in skipped
    assert "wav/id10003/1zcIwhmdeo4/00001.wav" in skipped
    assert "unzippedFaces/Aamir_Khan/1.6/7w0IBEWc9Qw/0000375.jpg" in skipped
    assert "id10008,voice,no wav/id10008/*/*.wav" in skipped
    assert len(result.skipped) == 4 and result.info.details["skipped"] == 4
    printed = result.summary()
    assert "skipped:    4" in printed and "id10008" in printed
    for item in items:  # documented layout, reachable through the corpus's links
        assert (out / item.path).is_file()
        assert item.path.startswith("wav/id1" if item.modality == "voice" else "unzippedFaces/")
    first = [i for i in items if i.identity == "id10001" and i.modality == "face"]
    assert all(i.path.endswith("0000375.jpg") for i in first)


def test_kim_split_is_seeded_and_identity_disjoint(tree):
    tmp_path, wav, faces, meta = tree
    corpus_voxceleb(_opts(tmp_path, wav, faces, meta, seed=3))
    rows = read_identities(tmp_path / "corpus")
    assert Counter(r["split"] for r in rows) == {"train": 6, "test": 2}  # 250/1251 of 8, rounded
    split = {r["identity"]: r["split"] for r in rows}
    assert all(split[i.identity] == i.split for i in read_manifest(tmp_path / "corpus"))
    full = Counter(voxceleb.kim_split([f"id{i}" for i in range(1251)], 0).values())
    assert full == {"train": 1001, "test": 250}
    assert voxceleb.kim_split(sorted(split), 3) == split


def test_learnable_pins_split_and_annotations(tree):
    tmp_path, wav, faces, meta = tree
    pins = tmp_path / "identity_splits.txt"
    pins.write_text("A.J._Buckley 1\nA.R._Rahman 1\nAamir_Khan 2\nid10004 4\nAaron_Yoo 3\n")
    notes = tmp_path / "notes.csv"
    notes.write_text("name,age_group,appearance_group,first_language\n"
                     "A.J._Buckley,40s,white,native\n")
    corpus_voxceleb(_opts(tmp_path, wav, faces, meta, pins_splits=pins, annotations=notes))
    rows = {r["identity"]: r for r in read_identities(tmp_path / "corpus")}
    assert {k: r["split"] for k, r in rows.items()} == {
        "id10001": "train", "id10002": "train", "id10003": "val", "id10004": "test",
        "id10005": "seen_test"}
    assert rows["id10001"]["age_group"] == "40s"
    item = next(i for i in read_manifest(tmp_path / "corpus") if i.identity == "id10001")
    assert (item.gender, item.nationality, item.first_language) == ("male", "Ireland", "native")
    assert CorpusInfo.read(tmp_path / "corpus").details["split"] == "learnable-pins"


@pytest.mark.parametrize("content,message", [
    ("", "tab-separated"),
    ("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\nid1\tX\tq\tUSA\tdev\n", "cannot read row"),
])
def test_bad_meta_file_is_a_clear_error(tmp_path, content, message):
    meta = tmp_path / "meta.csv"
    meta.write_text(content)
    with pytest.raises(FormatError, match=message):
        voxceleb.read_meta(meta)


def test_bad_pins_line_is_a_clear_error(tmp_path):
    pins = tmp_path / "s.txt"
    pins.write_text("Someone 7\n")
    with pytest.raises(FormatError, match="set 1-4"):
        voxceleb.pins_split(pins, [voxceleb.Speaker("id1", "Someone", "male", "USA")])


def test_all_frames_option(tree):
    tmp_path, wav, faces, meta = tree
    corpus_voxceleb(_opts(tmp_path, wav, faces, meta, frames="all"))
    assert Counter(i.modality for i in read_manifest(tmp_path / "corpus"))["face"] == 31


def test_the_options_default_to_the_issue_flags():
    opts = CorpusVoxcelebOptions(wav_root=Path("a"), faces_root=Path("b"), meta=Path("m"), out=Path("o"))
    assert (opts.frames, opts.seed, opts.val, opts.pins_splits) == ("first", 0, 0, None)


def _tracks(tmp_path, first_frames: dict[str, int]) -> object:
    """VoxCeleb1 txt files for id10001's clips of video 1zcIwhmdeo4, boxes in pixels."""
    txt = tmp_path / "txt_root"
    d = txt / "txt" / "id10001" / "1zcIwhmdeo4"
    d.mkdir(parents=True)
    for clip, frame in first_frames.items():
        (d / f"{clip}.txt").write_text("Identity  : \tid10001\nReference : \t1zcIwhmdeo4\nOffset    : \t1\n\n"
                                       f"FRAME \tX \tY \tW \tH \n{frame:06d} \t10 \t12 \t30 \t28 \n"
                                       f"{frame + 1:06d} \t11 \t12 \t30 \t28 \n")
    return txt


def test_first_frame_of_each_clip_with_its_box(tree):
    """Kim sec. 4.2: the first frame of each clip, its box enlarged 1.5x; the box reaches the
    manifest, so training and serving crop the same face."""
    import numpy as np

    from facevoice.service.media import FaceImage, face_input
    from facevoice.training.association.data import EXACT, decode_items

    tmp_path, wav, faces, meta = tree
    gradient = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)[..., None].repeat(3, axis=2) * 2
    for frame in ("0000375", "0000400"):  # a picture whose crop differs from its centre square
        Image.fromarray(gradient).save(faces / "unzippedFaces/A.J._Buckley/1.6/1zcIwhmdeo4" / f"{frame}.jpg")
    txt = _tracks(tmp_path, {"00001": 375, "00002": 390})  # clip 2 starts between the two frames
    # the first box of each track (--box-filter first); the default median is tested below
    corpus_voxceleb(_opts(tmp_path, wav, faces, meta, txt_root=txt, box_frames=True, box_filter="first", seed=1))
    out = tmp_path / "corpus"
    items = read_manifest(out)
    clips = sorted((i for i in items if i.identity == "id10001" and i.modality == "face" and i.video == "1zcIwhmdeo4"),
                   key=lambda i: i.item_id)
    assert [i.item_id for i in clips] == ["id10001-face-1zcIwhmdeo4-00001", "id10001-face-1zcIwhmdeo4-00002"]
    assert [i.path.rsplit("/", 1)[1] for i in clips] == ["0000375.jpg", "0000400.jpg"]
    assert all(i.box == "10 12 30 28" and i.face_box() == (10.0, 12.0, 30.0, 28.0) for i in clips)
    other = next(i for i in items if i.identity == "id10001" and i.modality == "face" and i.video == "7w0IBEWc9Qw")
    assert other.box == "" and other.path.endswith("0000375.jpg")  # no txt: the video's first frame
    assert {i.video for i in items if i.identity == "id10001" and i.modality == "voice"} == {"1zcIwhmdeo4",
                                                                                              "7w0IBEWc9Qw"}
    trained = decode_items(out, clips, FaceImage(), tmp_path / "cache", "k", workers=1, progress=False, store=EXACT)
    served = np.stack([face_input((out / i.path).read_bytes(), FaceImage(), i.face_box()) for i in clips])
    assert np.array_equal(trained, served)
    with pytest.raises(InvalidSignalError, match="no face found"):  # without its box, the drawn frame has no face
        face_input((out / clips[0].path).read_bytes(), FaceImage())
    details = CorpusInfo.read(out).details
    assert details["frames"] == "first of each clip" and details["boxes"].startswith("each clip's first box")


def test_a_track_file_without_rows_is_a_clear_error(tmp_path):
    bad = tmp_path / "00001.txt"
    bad.write_text("Identity  : \tid10001\n\nFRAME \tX \tY \tW \tH \n")
    with pytest.raises(FormatError, match="FRAME X Y W H"):
        voxceleb.read_track(bad)


def _track_file(txt_root: Path, clip: str, rows: list[tuple[int, float, float, float, float]]) -> None:
    """A VoxCeleb1 txt file for id10001's clip `clip` of video 1zcIwhmdeo4: FRAME X Y W H rows."""
    d = txt_root / "txt" / "id10001" / "1zcIwhmdeo4"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{clip}.txt").write_text("Identity  : \tid10001\nReference : \t1zcIwhmdeo4\nOffset    : \t1\n\n"
                                   "FRAME \tX \tY \tW \tH \n"
                                   + "".join(f"{f:06d} \t{x:g} \t{y:g} \t{w:g} \t{h:g} \n" for f, x, y, w, h in rows))


def _clip_boxes(tmp_path, wav, faces, meta, **extra) -> dict[str, str]:
    corpus_voxceleb(_opts(tmp_path, wav, faces, meta, txt_root=tmp_path / "txt_root", box_frames=True, seed=1,
                          **extra))
    return {i.item_id.rsplit("-", 1)[1]: i.box for i in read_manifest(tmp_path / "corpus")
            if i.identity == "id10001" and i.modality == "face" and i.video == "1zcIwhmdeo4"}


# a face centred at (32, 30), 30 x 28 px, whose box jitters: centre by up to ±2 px, size by up to
# ±3 px, in a five-frame cycle whose median is no jitter at all
JITTER = [(-2, 1, 3, -2), (2, -1, -3, 2), (-1, 2, 0, 1), (1, -2, 2, -1), (0, 0, -2, 0)]


def _jittering(first: int, last: int) -> list[tuple[int, float, float, float, float]]:
    rows = []
    for f in range(first, last + 1):
        dx, dy, dw, dh = JITTER[f % 5]
        w, h = 30 + dw, 28 + dh
        rows.append((f, 32 + dx - w / 2, 30 + dy - h / 2, w, h))
    return rows


def test_a_jittering_track_gives_its_median_box(tree):
    """Kim sec. 4.2: "We first filtered the bounding boxes temporally as there were fluctuations in
    their sizes and positions". By default each clip's box is the median over its track's rows
    within 12 frames of the chosen frame (frame 375, the clip's first face image): the steady
    box (17, 16, 30, 28), not the first row's."""
    tmp_path, wav, faces, meta = tree
    _track_file(tmp_path / "txt_root", "00001", _jittering(360, 390))
    first_row = _jittering(360, 360)[0]  # frame 360: centre (30, 31), 30 + 3 x 28 - 2 px
    assert _clip_boxes(tmp_path, wav, faces, meta) == {"00001": "17 16 30 28"}
    assert _clip_boxes(tmp_path, wav, faces, meta, box_filter="first") == {
        "00001": " ".join(f"{v:g}" for v in first_row[1:])} == {"00001": "13.5 18 33 26"}
    track = voxceleb.read_track(tmp_path / "txt_root/txt/id10001/1zcIwhmdeo4/00001.txt")
    found = voxceleb.filtered_box(track, 375)
    assert found.rows == 25 and found.outliers == 0 and not found.jumps  # frames 363-387
    assert voxceleb.filtered_box(track, 375, window=0).box == track.boxes[15]  # frame 375's own box
    details = CorpusInfo.read(tmp_path / "corpus").details
    assert details["boxes"].startswith("each clip's first box")  # the last run was --box-filter first


def test_an_outlier_frame_does_not_move_the_box(tree):
    """A steady track with one wild row, at the chosen frame itself: the median ignores it and the
    track is kept (1 of 25 rows far from the median, under the quarter that drops a track)."""
    tmp_path, wav, faces, meta = tree
    rows = [(f, 17.0, 16.0, 30.0, 28.0) for f in range(360, 391)]
    rows[15] = (375, 40.0, 2.0, 20.0, 20.0)  # the detector on something else for one frame
    _track_file(tmp_path / "txt_root", "00001", rows)
    assert _clip_boxes(tmp_path, wav, faces, meta) == {"00001": "17 16 30 28"}
    found = voxceleb.filtered_box(voxceleb.read_track(tmp_path / "txt_root/txt/id10001/1zcIwhmdeo4/00001.txt"), 375)
    assert (found.rows, found.outliers, found.jumps) == (25, 1, False)
    assert "each clip's median box over its track within 12 frames" in CorpusInfo.read(tmp_path / "corpus").details[
        "boxes"]


def test_a_track_that_jumps_is_dropped_and_reported(tree):
    """A track whose box moves to another place halfway through the window (a cut, another face)
    is no face to trust: the clip's face is left out and listed in skipped.csv; with
    --box-filter first it is kept with its first box, as before."""
    tmp_path, wav, faces, meta = tree
    rows = [(f, 4.0 if f < 375 else 30.0, 16.0, 30.0, 28.0) for f in range(360, 391)]
    _track_file(tmp_path / "txt_root", "00001", rows)
    _track_file(tmp_path / "txt_root", "00002", _jittering(395, 420))  # a steady clip beside it
    assert _clip_boxes(tmp_path, wav, faces, meta) == {"00002": "17 16 30 28"}
    skipped = (tmp_path / "corpus" / "skipped.csv").read_text()
    assert "id10001,txt/id10001/1zcIwhmdeo4/00001.txt,face track jumps: 12 of its 25 boxes" in skipped
    assert _clip_boxes(tmp_path, wav, faces, meta, box_filter="first") == {"00001": "4 16 30 28",
                                                                          "00002": "13.5 18 33 26"}


def test_a_track_with_a_bad_row_is_a_clear_error(tmp_path):
    bad = tmp_path / "00001.txt"
    bad.write_text("Identity  : \tid10001\n\nFRAME \tX \tY \tW \tH \n000001 \t1 \t2 \t3 \t4 \n000002 \t1 \tx \t3 \n")
    with pytest.raises(FormatError, match="cannot read the FRAME X Y W H row '000002 1 x 3'"):
        voxceleb.read_track(bad)
