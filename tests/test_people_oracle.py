"""The population model's links and the oracle that evaluates it."""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pytest

from facevoice.service.corpus import CorpusInfo
from facevoice.training.corpus.oracle import (
    CONTROLS,
    log_voice_given_face,
    oracle_accuracy,
    sample_trials,
    shared_attrs,
)
from facevoice.training.corpus.people import (
    AGE_GROUPS,
    ENGLISH_ACCENTS,
    PopulationModel,
    age_group,
    person_from_row,
    person_row,
    population_model_from_dict,
    sample_population,
)

POP = sample_population(3000, 0)


def _col(get):
    return np.array([get(p) for p in POP.people], float)


def test_age_groups_follow_the_paper():
    assert [age_group(a) for a in (18, 29, 30, 45, 59, 60, 79)] == \
        ["<30", "<30", "30s", "40s", "50s", ">=60", ">=60"]
    assert set(AGE_GROUPS) == {p.shared.age_group for p in POP.people}


def test_deterministic_per_seed_and_stable_in_n():
    a, b = sample_population(30, 5), sample_population(60, 5)
    assert [person_row(p) for p in a.people] == [person_row(p) for p in b.people[:30]]
    assert person_row(sample_population(1, 6).people[0]) != person_row(a.people[0])


def test_continuous_links_have_the_configured_correlation():
    m = POP.model
    male = _col(lambda p: p.shared.gender == "male") == 1
    fw = _col(lambda p: p.face.face_width)
    resid = _col(lambda p: p.voice.pitch - m.pitch_base[1]
                 - m.pitch_age_slope[1] * (p.shared.age - 45)) / m.pitch_sd
    r = np.corrcoef(fw[male], resid[male])[0, 1]
    assert r == pytest.approx(-m.size_face_r * m.size_voice_r, abs=0.06)  # -0.30
    nose, score = _col(lambda p: p.face.nose_width), _col(lambda p: p.voice.variant_score)
    assert np.corrcoef(nose, score)[0, 1] == pytest.approx(m.nasal_face_r * m.nasal_voice_r, abs=0.05)


def test_independent_parameters_carry_no_link():
    height, pitch = _col(lambda p: p.face.face_height), _col(lambda p: p.voice.pitch_range)
    assert abs(np.corrcoef(height, pitch)[0, 1]) < 0.06


def test_accent_tells_first_language():
    for p in POP.people:
        assert (p.voice.accent in ENGLISH_ACCENTS) == (p.shared.first_language == "native")


def test_identities_csv_round_trip():
    for p in POP.people[:50]:
        q = person_from_row(person_row(p))
        assert q.shared.age == p.shared.age and q.face.skin_rgb == p.face.skin_rgb
        assert q.voice.accent == p.voice.accent and q.face.beard == p.face.beard
        assert q.voice.pitch == pytest.approx(p.voice.pitch, abs=1e-6)


def test_population_model_json_round_trip(tmp_path):
    """corpus.json stores asdict(model); evaluation rebuilds the very same model from it."""
    model = replace(PopulationModel(), pitch_sd=7.5)
    CorpusInfo(generator="facevoice corpus synth", population_model=asdict(model)).write(tmp_path)
    assert population_model_from_dict(CorpusInfo.read(tmp_path).population_model) == model


def test_trials_respect_their_control():
    attrs = shared_attrs(POP.people)
    for control, keys in CONTROLS.items():
        t = sample_trials(attrs, control, 500, np.random.default_rng(1))
        assert (t.anchor != t.impostor).all()
        for a, b in zip(t.anchor, t.impostor, strict=True):
            assert all(attrs[a][k] == attrs[b][k] for k in keys)


def test_gender_mismatch_is_impossible_for_the_oracle():
    man = next(p for p in POP.people if p.shared.gender == "male")
    woman = next(p for p in POP.people if p.shared.gender == "female")
    assert log_voice_given_face(POP.model, man.voice, woman.face) == -np.inf
    assert np.isfinite(log_voice_given_face(POP.model, man.voice, man.face))


def test_oracle_is_calibrated_to_published_voxceleb_levels():
    """About 88% unconstrained and 78% same gender, the best published VoxCeleb levels (docs/corpus.md)."""
    m = POP.model
    for d in ("v2f", "f2v"):
        assert 0.84 < oracle_accuracy(m, POP.people, d, "-", 3000) < 0.93
        assert 0.72 < oracle_accuracy(m, POP.people, d, "G", 3000) < 0.84


def test_without_links_the_oracle_is_at_chance_within_gender():
    groups = tuple(replace(g, p_non_native=0.0, accent_weights=(1,) * len(ENGLISH_ACCENTS))
                   for g in PopulationModel().groups)
    m = PopulationModel(groups=groups, size_face_r=0.0, nasal_face_r=0.0, face_age_sd=1e6,
                        pitch_age_slope=(0.0, 0.0), speed_age_slope=0.0, accent_group_mix=0.0)
    people = sample_population(1500, 3, m).people
    assert oracle_accuracy(m, people, "v2f", "G", 3000) == pytest.approx(0.5, abs=0.03)
    assert oracle_accuracy(m, people, "v2f", "-", 3000) == pytest.approx(0.75, abs=0.03)


def test_association_retrieval_reports_the_oracle_per_set():
    """Kim Table 6's sets get the oracle on the very same queries and galleries: a perfect model
    reaches 1.0 while the oracle, which sees only the linked factors, stays between chance and 1."""
    from facevoice.training.association.data import Modality, SplitData
    from facevoice.training.association.protocol import Embeddings, retrieval
    from facevoice.training.corpus.oracle import identity_scores

    people = POP.people[:40]
    ident = np.repeat(np.arange(40), 2)
    mod = lambda: Modality(np.zeros((80, 1)), ident.copy(), [str(k) for k in range(80)])  # noqa: E731
    split = SplitData([p.identity for p in people], [{} for _ in people], mod(), mod())
    emb = Embeddings(face=np.eye(40)[ident] * 5, voice=np.eye(40)[ident] * 5)
    oracle = {d: identity_scores(POP.model, people, d) for d in ("v2f", "f2v")}
    r = retrieval(emb, split, seed=0, sizes=(80,), ks=(1, 10), oracle=oracle)
    assert r["v2f"][80][1] == 1.0
    for d in ("oracle_v2f", "oracle_f2v"):
        assert r["random"][80][10] < r[d][80][10] < 1.0
