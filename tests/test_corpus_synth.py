"""A 20-identity synthetic corpus: counts, identity-disjoint splits, decodable media, determinism."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from facevoice.service.corpus import CorpusInfo, read_identities, read_manifest
from facevoice.service.errors import UsageError
from facevoice.service.media import decode_audio, decode_image
from facevoice.training.corpus.faces import FACE_RENDER
from facevoice.training.corpus.oracle import corpus_people
from facevoice.training.corpus.people import person_from_row, sample_population
from facevoice.training.corpus.splits import assign_splits, split_counts
from facevoice.training.corpus.synth import CorpusSynthOptions, SynthConfig, build_corpus, corpus_synth
from tests.conftest import SMALL


def test_counts_per_identity_and_modality(corpus):
    out, result = corpus
    items = read_manifest(out)
    per = Counter((i.identity, i.modality) for i in items)
    assert len({i.identity for i in items}) == 20
    assert set(per.values()) == {1, 2}  # one canonical face, 2 faces, 2 clips each
    assert result.info.counts["items"] == {"face": 40, "canonical_face": 20, "voice": 40}
    assert result.info.counts["identities"] == {"test": 4, "train": 14, "val": 2}  # 70/10/20


def test_splits_are_identity_disjoint(corpus):
    out, _ = corpus
    split_of = {}
    for item in read_manifest(out):
        assert split_of.setdefault(item.identity, item.split) == item.split
    rows = read_identities(out)
    assert {r["identity"]: r["split"] for r in rows} == split_of


def test_every_file_decodes_through_the_media_pipeline(corpus):
    out, _ = corpus
    for item in read_manifest(out):
        data = (out / item.path).read_bytes()
        if item.modality == "voice":
            x, sr = decode_audio(data)
            assert sr == 22_050 and 2.0 < len(x) / sr < 30.0
        else:
            assert decode_image(data).size == (128, 128)


def test_attributes_in_manifest_match_identities(corpus):
    out, _ = corpus
    people = {r["identity"]: person_from_row(r) for r in read_identities(out)}
    for item in read_manifest(out):
        s = people[item.identity].shared
        assert (item.gender, item.age_group, item.appearance_group, item.first_language) == \
            (s.gender, s.age_group, s.appearance_group, s.first_language)


def test_canonical_face_is_plain_and_frontal(corpus):
    out, _ = corpus
    img = np.asarray(Image.open(out / "faces" / "id00000" / "canonical.png"))
    assert (img[2, 2] == (232, 232, 232)).all() and (img[2, -3] == (232, 232, 232)).all()


def _iou(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


def test_the_manifest_records_where_each_face_was_drawn(corpus):
    """drawn_box is the generator's truth: it agrees with a real detector where that finds the
    face, and it is not a crop box, so the synthetic front end stays the centre square."""
    from facevoice.service.media.faces import detect_faces

    out, _ = corpus
    faces = [i for i in read_manifest(out) if i.modality != "voice"]
    overlaps = []
    for item in faces:
        box = tuple(float(v) for v in item.drawn_box.split())
        assert len(box) == 4 and item.face_box() is None
        x, y, w, h = box
        assert 20 < w < 110 and 30 < h < 120 and -20 < x < x + w < 148 and -20 < y < y + h < 148
        found = detect_faces(decode_image((out / item.path).read_bytes()), "hog", 0.0)
        if found:
            overlaps.append(_iou(found[0].box, box))
    assert len(overlaps) >= len(faces) // 4, "HOG found too few of the cartoon faces to compare"
    assert np.median(overlaps) > 0.55 and min(overlaps) > 0.3, overlaps


def test_corpus_json_oracle_and_summary(corpus):
    out, result = corpus
    stored = CorpusInfo.read(out)
    assert stored.seed == 7 and stored.face_render == FACE_RENDER
    assert json.loads((out / "corpus.json").read_text())["format_version"] == CorpusInfo.VERSION == 1
    assert result.out == out and result.info == stored  # what the verb returns is what corpus.json holds
    assert CorpusInfo.from_dict(stored.to_dict()) == stored  # one JSON form
    acc = stored.oracle["population"]["accuracy"]
    assert acc["v2f"]["-"] > acc["v2f"]["G"] > 0.5
    text = result.summary()
    assert "oracle 1:2 matching accuracy" in text and "identities: test 4, train 14, val 2" in text
    assert Image.open(out / "contact_sheet.png").size[0] > 128 * 3
    assert "<audio" in (out / "listen.html").read_text()


def test_written_corpus_gives_back_its_generator(corpus):
    """Evaluation rebuilds the oracle from corpus.json + identities.csv: the same model and people."""
    out, _ = corpus
    model, people = corpus_people(out)
    assert model == SMALL.model
    expected = sample_population(SMALL.identities, SMALL.seed, SMALL.model).people
    assert sorted(people) == [p.identity for p in expected]
    for p in expected:
        assert people[p.identity].voice.pitch == pytest.approx(p.voice.pitch, abs=1e-5)
    assert corpus_people(out / "missing") is None


def _digest(path):
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_deterministic_per_seed(corpus, tmp_path):
    out, _ = corpus
    again = build_corpus(tmp_path / "again", SMALL, progress=False)
    assert again.info.counts == corpus[1].info.counts
    assert _digest(tmp_path / "again") == _digest(out)
    build_corpus(tmp_path / "other", replace(SMALL, seed=8, oracle_trials=0), progress=False)
    assert _digest(tmp_path / "other")["manifest.csv"] != _digest(out)["manifest.csv"]


def test_refuses_to_overwrite_without_force(corpus):
    out, _ = corpus
    with pytest.raises(UsageError, match="--force"):
        build_corpus(out, SMALL, progress=False)
    with pytest.raises(UsageError, match="--force"):
        corpus_synth(CorpusSynthOptions(out=out, identities=20, seed=7), progress=False)


@pytest.mark.parametrize("settings,message", [
    ({"identities": 1}, "--identities must be at least 2"),
    ({"faces": 0}, "--faces and --clips must be at least 1"),
    ({"clips": 0}, "--faces and --clips must be at least 1"),
    ({"face_size": 64}, "--face-size must be at least 128 pixels"),
    ({"prevalence": ("B",)}, "expected GROUP=WEIGHT"),
    ({"p_male": 1.5}, "--p-male is in 0..1"),
])
def test_settings_that_cannot_work_are_usage_errors(tmp_path, settings, message):
    with pytest.raises(UsageError, match=message):
        corpus_synth(CorpusSynthOptions(out=tmp_path / "c", **settings), progress=False)
    assert not (tmp_path / "c").exists()  # refused before anything is written


def test_the_options_make_the_generators_settings(tmp_path):
    """`corpus synth`'s defaults are the generator's, and each option reaches its setting."""
    assert CorpusSynthOptions(out=tmp_path).config() == SynthConfig()
    cfg = CorpusSynthOptions(out=tmp_path, identities=9, seed=4, faces=3, clips=5, face_size=160,
                             split=[0.5, 0.25, 0.25], workers=1, oracle_trials=0, face_render=1, unguarded=True,
                             p_male=0.2, prevalence=("A=0",)).config()
    assert (cfg.identities, cfg.seed, cfg.faces, cfg.clips, cfg.face_size, cfg.splits, cfg.workers,
            cfg.oracle_trials, cfg.face_render, cfg.guarded) == (9, 4, 3, 5, 160, (0.5, 0.25, 0.25), 1, 0, 1, False)
    assert cfg.model.p_male == 0.2 and {g.name: g.prevalence for g in cfg.model.groups}["A"] == 0


def test_split_arithmetic():
    assert split_counts(300, (0.7, 0.1, 0.2)) == (210, 30, 60)
    assert split_counts(7, (0.7, 0.1, 0.2)) == (5, 1, 1)
    with pytest.raises(ValueError):
        split_counts(10, (0.5, 0.5, 0.5))
    split = assign_splits(list("abcdefghij"), (7, 1, 2), 0)
    assert Counter(split.values()) == {"train": 7, "val": 1, "test": 2}
    assert split == assign_splits(list("jihgfedcba"), (7, 1, 2), 0)  # order of input irrelevant


@pytest.mark.parametrize("score", [-6.0, 6.0])
def test_faces_render_at_extreme_geometry_scores(score):
    """Scores are standard normal, so at thousands of people one lands past -4.5 sd; a size that
    went negative there used to crash `corpus synth` (seen at 1,500 identities)."""
    from facevoice.training.corpus.faces import FaceNuisance, render_face
    from facevoice.training.corpus.people import sample_population

    face = sample_population(1, seed=0).people[0].face
    geometry = ("face_width", "nose_width", "face_height", "jaw", "nose_length", "eye_spacing", "eye_size",
                "lip_thickness", "mouth_width", "brow_thickness", "brow_height")
    extreme = replace(face, **{k: score for k in geometry})
    for nuisance in (FaceNuisance.canonical(), FaceNuisance.sample(np.random.default_rng(0))):
        img = render_face(extreme, nuisance, 128, np.random.default_rng(0))
        assert img.size == (128, 128) and np.asarray(img).std() > 10


def test_a_population_of_another_attribute_mix_for_cross_dataset_tests():
    """Kim et al. Table 8 tests across datasets; here, across populations: other shares of men
    and of appearance groups, everything else the generator's."""
    from facevoice.training.corpus.people import PopulationModel, sample_population
    from facevoice.training.corpus.synth import parse_prevalence, population

    shifted = population(0.2, parse_prevalence(["A=0", "B=3"]))
    people = sample_population(2000, 0, shifted).people
    women = sum(p.shared.gender == "female" for p in people) / len(people)
    groups = Counter(p.shared.appearance_group for p in people)
    assert 0.75 < women < 0.85 and groups["A"] == 0 and groups["B"] > groups["C"] * 2
    assert population(None, {}) == PopulationModel()
    for bad in (lambda: parse_prevalence(["B"]), lambda: population(1.5, {}), lambda: population(None, {"Z": 1})):
        with pytest.raises(UsageError):
            bad()
