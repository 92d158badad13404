"""The frozen-encoder baseline (`facevoice eval frozen`, training.association.frozen): its linear
heads, its two shipped encoders on real files, and the command end to end on tiny corpora."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from facevoice.training.association import frozen


def _pairs(people: int, seed: int, linked: bool = True):
    """Items of people whose face and voice share a latent (or not): 2 items per side each."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((people, 6))
    a, b = np.random.default_rng(0).standard_normal((2, 6, 20))
    ident = np.repeat(np.arange(people), 2)
    face = z[ident] @ a + 0.5 * rng.standard_normal((2 * people, 20))
    other = rng.standard_normal((people, 6)) if not linked else z
    voice = other[ident] @ b + 0.5 * rng.standard_normal((2 * people, 20))
    return face, voice, ident


def _one_of_two(head: frozen.Head, face, voice, ident, direction: str) -> float:
    """1:2 by hand: the true person's item against the next person's, for every probe."""
    e = head.embeddings(face, voice, direction)
    probe, gallery = (e.voice, e.face) if direction == "v2f" else (e.face, e.voice)
    people = ident.max() + 1
    true = np.linalg.norm(probe - gallery, axis=1)
    other = np.linalg.norm(probe - gallery[(np.arange(len(ident)) + 2) % (2 * people)], axis=1)
    return float((true < other).mean())


@pytest.mark.parametrize("kind, size", [("ridge", 10.0), ("cca", 4), ("pls", 4)])
def test_a_head_fitted_on_training_people_matches_new_ones(kind, size):
    face, voice, ident = _pairs(200, seed=1)
    head = frozen.fit_head(kind, size, face, ident, voice, ident, 200)
    new_face, new_voice, new_ident = _pairs(100, seed=2)
    for d in ("v2f", "f2v"):
        assert _one_of_two(head, new_face, new_voice, new_ident, d) > 0.85
    # where face and voice share nothing, the same head is at chance
    lone_face, lone_voice, lone_ident = _pairs(100, seed=3, linked=False)
    assert abs(_one_of_two(head, lone_face, lone_voice, lone_ident, "v2f") - 0.5) < 0.1


def test_person_means_average_each_persons_items():
    x = np.array([[1.0, 0], [3, 0], [0, 5]])
    assert np.allclose(frozen.person_means(x, np.array([0, 0, 2]), 3), [[2, 0], [0, 0], [0, 5]])


def test_the_encoders_embed_real_files_and_refuse_what_holds_nothing(tiny_corpus, tmp_path):
    from facevoice.service.corpus import read_manifest

    items = read_manifest(tiny_corpus)
    faces = [i for i in items if i.modality == "face"][:20]  # 10 people, 2 photos each
    dlib_faces = frozen.DlibFaces()
    v = np.stack([dlib_faces(tiny_corpus / i.path, i.face_box()) for i in faces])
    assert v.shape == (20, 128) and np.isfinite(v).all()
    who = np.array([i.identity for i in faces])
    d = np.linalg.norm(v[:, None] - v[None], axis=-1)
    same, other = who[:, None] == who[None], who[:, None] != who[None]
    np.fill_diagonal(same, False)
    assert d[same].mean() < d[other].mean()  # two photos of one person lie nearer than two people
    voice = next(i for i in items if i.modality == "voice")
    enc = frozen.ResemblyzerVoices()
    e = enc(tiny_corpus / voice.path)
    assert e.shape == (256,) and abs(np.linalg.norm(e) - 1) < 1e-3
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(22050 * 3, np.float32), 22050)
    assert enc(silence) is None


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    from facevoice.training.corpus.synth import SynthConfig, build_corpus

    path = tmp_path_factory.mktemp("frozen") / "train"
    build_corpus(path, SynthConfig(identities=30, seed=5, faces=2, clips=2, oracle_trials=0, workers=1),
                 progress=False)
    return path


def test_the_command_end_to_end(tiny_corpus, tmp_path):
    """Every head is fitted, sized on val, scored under every control on a held-out corpus, and the
    links are probed; the embeddings are kept and a rerun gives the same figures from them."""
    out = tmp_path / "report"
    opts = frozen.EvalFrozenOptions(train_corpus=tiny_corpus, corpora=tmp_path / "held", seeds=[9001], identities=16,
                                    trials=300, out=out, no_progress=True, workers=1, threads=1)
    done = frozen.eval_frozen(opts)
    saved = frozen.EvalFrozenResult.read(out)
    result = saved.record
    assert set(result["heads"]) == set(frozen.HEADS)
    assert result["heads"]["ridge"]["chosen"] in frozen.ALPHAS
    for kind in frozen.HEADS:
        cell = result["matching"][kind]["v2f"]["-"]
        assert 0 <= cell["accuracy"] <= 1 and cell["identities"] == 16
    assert set(result["links"]["face"]) == set(frozen.FACE_VALUES)
    assert all(-1 <= r <= 1 for r in result["links"]["voice"].values())
    text = saved.text
    assert "| cca (" in text and "| face | nose width |" in text
    assert done.summary().startswith(text) and "frozen encoders: heads fitted on" in done.summary()
    assert (out / "embeddings" / "heldout-9001-16-test.npz").exists()
    frozen.eval_frozen(opts)
    assert frozen.EvalFrozenResult.read(out).record["matching"] == result["matching"]
