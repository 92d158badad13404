"""The media oracle (training.corpus.media_oracle) and the read-out scoring of `facevoice eval
media-ceiling` (training.association.ceiling)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from facevoice.training.association import ceiling
from facevoice.training.corpus import media_oracle as mo
from facevoice.training.corpus.oracle import log_voice_given_face, log_voice_marginal
from facevoice.training.corpus.people import PopulationModel, sample_population


@pytest.fixture(scope="module")
def population():
    pop = sample_population(40, seed=11)
    return pop.model, pop.people


def test_exact_readouts_are_the_parameter_oracle(population):
    """With no error, every pair's score is the parameter oracle's, and so is each marginal."""
    model, people = population
    face, voice = mo.exact_readouts(model, people)
    vi, fi = np.meshgrid(np.arange(len(people)), np.arange(len(people)), indexing="ij")
    got = mo.pair_scores(model, face, voice, vi.ravel(), fi.ravel()).reshape(vi.shape)
    want = np.array([[log_voice_given_face(model, v.voice, f.face) for f in people] for v in people])
    gender = np.array([p.shared.gender for p in people])
    same = gender[:, None] == gender[None, :]
    assert (got[~same] == mo.MISMATCH).all() and (~same).any()
    # the rest agree, impossible pairs (an accent the face's group never has) included
    assert np.isneginf(want[same]).any()
    np.testing.assert_allclose(got[same], want[same], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(mo.voice_marginals(model, voice), [log_voice_marginal(model, p.voice) for p in people],
                               rtol=1e-9, atol=1e-9)


def test_score_matrix_directions(population):
    model, people = population
    face, voice = mo.exact_readouts(model, people)
    v2f, f2v = (mo.score_matrix(model, face, voice, d, chunk=7) for d in ("v2f", "f2v"))
    np.testing.assert_allclose(f2v, v2f - mo.voice_marginals(model, voice)[:, None])


def _accuracy(model, face, voice, people) -> float:
    """V->F 1:2 within gender over every (true, impostor) pair of one gender."""
    s = mo.score_matrix(model, face, voice, "v2f")
    gender = np.array([p.shared.gender for p in people])
    right = [s[i, i] > s[i, j] for i in range(len(people)) for j in range(len(people))
             if j != i and gender[j] == gender[i]]
    return float(np.mean(right))


def test_error_costs_accuracy_and_enough_error_is_chance():
    """Blurring the read-outs lowers the oracle toward chance, never above the exact one."""
    pop = sample_population(160, seed=5)
    model, people = pop.model, pop.people
    face, voice = mo.exact_readouts(model, people)
    exact = _accuracy(model, face, voice, people)
    rng = np.random.default_rng(0)
    blurred = {}
    for sd in (0.5, 30.0):
        f = replace(face, width=face.width + rng.normal(0, sd, len(people)), width_sd=sd,
                    nose=face.nose + rng.normal(0, sd, len(people)), nose_sd=sd,
                    age=face.age + rng.normal(0, 10 * sd, len(people)), age_sd=10 * sd)
        v = replace(voice, pitch=voice.pitch + rng.normal(0, 10 * sd, len(people)), pitch_sd=10 * sd,
                    speed=voice.speed + rng.normal(0, 10 * sd, len(people)), speed_sd=10 * sd)
        blurred[sd] = _accuracy(model, f, v, people)
    assert exact > blurred[0.5] > blurred[30.0] - 0.02
    # with nothing continuous left, what remains is the accent and the variant classes, which
    # stay exact here: above chance, well below the exact oracle
    assert 0.5 < blurred[30.0] < exact - 0.05


def test_calibration_recovers_the_classical_error():
    rng = np.random.default_rng(1)
    truth = rng.normal(0, 1, 20000)
    pred = 0.3 + 0.6 * (truth + rng.normal(0, 0.5, truth.size))  # a shrunk, shifted, noisy read-out
    cal = ceiling.calibration(pred, truth)
    assert cal["error_sd"] == pytest.approx(0.5, rel=0.05)
    np.testing.assert_allclose(ceiling.unbias(pred, cal).mean(), truth.mean(), atol=0.02)


def test_confusion_rows_are_probabilities():
    truth = np.array([0, 0, 1, 2, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 2, 2, 0]]
    c = ceiling.confusion(truth, probs, 3, alpha=0.0)
    np.testing.assert_allclose(c.sum(1), 1)
    assert c[0, 0] == 0.5 and c[2, 2] == pytest.approx(2 / 3)


def test_within_gender_r_ignores_the_gender_difference():
    """A read-out that only knows gender scores r = 0 inside each gender."""
    rng = np.random.default_rng(2)
    gender = np.repeat([0, 1], 500)
    truth = rng.normal(0, 1, 1000) + 5 * gender
    only_gender = 5 * gender + rng.normal(0, 1e-3, 1000)
    assert abs(ceiling.within_gender_r(only_gender, truth, gender)) < 0.1
    assert ceiling.within_gender_r(truth + rng.normal(0, 0.1, 1000), truth, gender) > 0.99


def test_pitch_residual_is_the_size_score():
    model = PopulationModel()
    pop = sample_population(300, seed=3)
    rows = [{"gender": p.shared.gender, "age": str(p.shared.age), "voice_pitch": str(p.voice.pitch)}
            for p in pop.people]
    resid = np.array([ceiling.pitch_residual(r, model) for r in rows])
    z = np.array([p.shared.z_size for p in pop.people])
    # -pitch residual = r * z + noise, r = 0.55 (people.PopulationModel.size_voice_r)
    assert np.corrcoef(-resid, z)[0, 1] == pytest.approx(model.size_voice_r, abs=0.12)


def test_the_command_end_to_end(tmp_path):
    """Tiny corpora and seconds of training: the command runs through, writes its report with
    every row, and its parameter oracle row is a real 1:2 (above chance on these people)."""
    from facevoice.training.corpus.synth import SynthConfig, build_corpus

    train = tmp_path / "train"
    build_corpus(train, SynthConfig(identities=30, seed=5, faces=2, clips=2, oracle_trials=0), progress=False)
    out = tmp_path / "report"
    common = dict(train_corpus=train, corpora=tmp_path / "held", seeds=[9001], identities=16, trials=300,
                  no_progress=True, workers=1)
    done = ceiling.eval_media_ceiling(ceiling.EvalMediaCeilingOptions(out=out, face_minutes=0.05, voice_minutes=0.05,
                                                                      **common))
    saved = ceiling.EvalMediaCeilingResult.read(out)
    result = saved.record
    assert set(result["matching"]) == {"parameter oracle", "media oracle"}
    assert result["matching"]["parameter oracle"]["v2f"]["-"]["accuracy"] > 0.6
    assert 0 <= result["matching"]["media oracle"]["v2f"]["G"]["accuracy"] <= 1
    text = saved.text
    assert "| face | face width |" in text and "| media oracle | V→F |" in text
    assert done.summary().startswith(text) and "media ceiling: 1 held-out corpora" in done.summary()
    assert (out / "face_readout.pt").exists() and (out / "voice_readout.pt").exists()
    # a second run reuses the read-outs
    ceiling.eval_media_ceiling(ceiling.EvalMediaCeilingOptions(out=out, **common))
    again = ceiling.EvalMediaCeilingResult.read(out).record
    assert again["readouts"]["face"]["training"] == result["readouts"]["face"]["training"]
    # a step budget trains exactly that many steps, however busy the machine is
    steps = tmp_path / "steps"
    ceiling.eval_media_ceiling(ceiling.EvalMediaCeilingOptions(out=steps, face_steps=3, voice_steps=2, **common))
    readouts = ceiling.EvalMediaCeilingResult.read(steps).record["readouts"]
    assert readouts["face"]["training"]["steps"] == 3 and readouts["voice"]["training"]["steps"] == 2
