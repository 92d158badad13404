"""The learning issue's switches: InfoNCE over a batch of distinct people, same-gender negatives
as a curriculum, training on the first N identities, the within-gender link probe, and
`eval heldout` on corpora of people no run has seen."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from facevoice.service.errors import FormatError, UsageError
from facevoice.training.association.config import load_config
from facevoice.training.association.data import Modality, SplitData, TupleSampler, first_identities
from facevoice.training.association.heldout import EvalHeldoutOptions, HeldoutResults, eval_heldout
from facevoice.training.association.loss import info_nce
from facevoice.training.association.protocol import Embeddings, link_probes
from facevoice.training.association.train import TrainAssociationOptions, train_association
from facevoice.training.corpus.synth import build_corpus
from facevoice.training.runs import RunInfo
from tests.conftest import SMALL
from tests.toy_corpus import TINY, build_toy_corpus


def test_info_nce_prefers_the_true_pairs_and_has_a_gradient_at_zero_distance():
    torch.manual_seed(0)
    faces = torch.randn(6, 8)
    right = info_nce(faces.clone(), faces, "both")
    wrong = info_nce(faces.roll(1, 0), faces, "both")
    assert right.shape == (6,) and (right < wrong).all()
    # hand-computed for two people: logits -d^2, row 0 = [0, -|f0 - f1|^2]
    v = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    f = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    v2f = info_nce(v, f, "v2f")
    assert v2f[0].item() == pytest.approx(np.log(1 + np.exp(-9.0)), abs=1e-6)
    assert v2f[1].item() == pytest.approx(-np.log(np.exp(-4.0) / (np.exp(-1.0) + np.exp(-4.0))), rel=1e-5)
    assert info_nce(v, f, "f2v")[1].item() == pytest.approx(-np.log(np.exp(-4.0) / (np.exp(-4.0) + np.exp(-9.0))),
                                                             rel=1e-5)
    x = torch.zeros(3, 4, requires_grad=True)
    info_nce(x, x.detach().clone(), "both").sum().backward()
    assert torch.isfinite(x.grad).all()


def _split(n: int = 12) -> SplitData:
    ident = np.repeat(np.arange(n), 2)
    video = np.array([f"{i}-{k}" for i in range(n) for k in range(2)])
    attrs = [{"gender": "female" if i % 3 else "male"} for i in range(n)]
    voices = Modality(np.zeros((2 * n, 400), np.float16), ident, [f"v{k}" for k in range(2 * n)], video)
    faces = Modality(np.zeros((2 * n, 3, 64, 64), np.float16), ident, [f"f{k}" for k in range(2 * n)], video[::-1])
    return SplitData([f"p{i:02d}" for i in range(n)], attrs, faces, voices)


def test_a_people_batch_holds_distinct_people_paired_in_order():
    split = _split()
    sampler = TupleSampler(split, load_config("small", ["voice.seconds=0.01"]), "v2f", seed=0)
    for _ in range(20):
        b = sampler.draw_people(8)
        assert b.faces.shape[0] == 8 and b.voices.shape[0] == 8
        assert (b.positive == torch.arange(8)).all() and (b.anchor == torch.arange(8) + 8).all()
    picked = []
    original = sampler._item
    sampler._item = lambda modality, identity: picked.append(identity) or original(modality, identity)
    sampler.draw_people(12)
    assert sorted(picked) == list(range(12))  # every person once


def test_same_gender_batches_and_the_curriculum_switch():
    split = _split()
    gender = np.array([a["gender"] for a in split.attributes])
    sampler = TupleSampler(split, load_config("small", ["voice.seconds=0.01", "train.negatives=curriculum"]),
                           "both", seed=1)
    seen_mixed = False
    picked = []
    original = sampler._item

    def spy(modality, identity):
        picked.append(identity)
        return original(modality, identity)

    sampler._item = spy
    for _ in range(10):
        picked.clear()
        sampler.draw_people(4)
        seen_mixed |= len(set(gender[picked])) > 1
    assert seen_mixed  # before the switch a batch mixes genders
    sampler.restrict(True)
    for _ in range(30):
        picked.clear()
        sampler.draw_people(4)
        assert len(set(gender[picked])) == 1
    # tuples draw their impostor from these peers once restricted
    for i, peers in sampler.peers["same-gender"].items():
        assert (gender[peers] == gender[i]).all() and i not in peers


def test_first_identities_cuts_items_and_reads_lazily():
    split = _split(10)
    cut = first_identities(split, 4)
    assert cut.identities == split.identities[:4] and len(cut.attributes) == 4
    assert (cut.face.identity < 4).all() and len(cut.face.identity) == 8
    assert cut.voice.data.shape == (8, 400) and cut.voice.data[[0, 7]].shape == (2, 400)
    assert cut.voice.data[3, 10:20].shape == (10,)
    assert first_identities(split, 0) is split and first_identities(split, 50) is split
    with pytest.raises(UsageError, match="identities"):
        load_config("small", ["train.identities=-1"])
    with pytest.raises(UsageError, match="negatives"):
        load_config("small", ["train.negatives=nearest"])
    with pytest.raises(UsageError, match="temperature"):
        load_config("small", ["train.temperature=0"])
    with pytest.raises(UsageError, match="augment_scale"):
        load_config("small", ["face.augment_scale=[1.2, 0.9]"])
    assert load_config("small", ["face.augment_scale=[1.0, 1.0]"]).face.augment_scale == (1.0, 1.0)


def test_the_link_probe_reads_what_an_embedding_encodes_within_gender():
    """A face embedding that carries face width (plus a gender offset bigger than everything else)
    reads it with r near 1; a voice embedding that only separates gender reads about 0."""
    rng = np.random.default_rng(0)
    n = 60
    split = _split(n)
    width = rng.standard_normal(n)
    people = {name: {"face_width": f"{width[i]:.4f}", "voice_pitch": f"{rng.normal(50, 10):.3f}"}
              for i, name in enumerate(split.identities)}
    male = np.array([a["gender"] == "male" for a in split.attributes], float)
    face = np.stack([width, 10 * male, *rng.standard_normal((6, n))], 1)[split.face.identity]
    face = face + 0.1 * rng.standard_normal(face.shape)
    voice = np.stack([10 * male, *rng.standard_normal((7, n))], 1)[split.voice.identity]
    links = link_probes(Embeddings(face, voice), split, people, trials=10)
    assert links["face"]["face_width"]["r"] > 0.8
    assert abs(links["voice"]["voice_pitch"]["r"]) < 0.3
    assert "face_nose_width" not in links["face"]  # not in the table: not probed
    assert link_probes(Embeddings(face, voice), split, {}) == {}


def test_heldout_evaluates_runs_on_new_people_and_draws_the_curve(tmp_path):
    toy = build_toy_corpus(tmp_path / "toy")
    runs = []
    for n in (4, 0):
        out = tmp_path / f"run-{n}"
        sets = [*TINY, "train.iterations=20", "train.loss=infonce", "train.batch=6", f"train.identities={n}"]
        assert train_association(TrainAssociationOptions(
            corpus=toy, out=out, config="small", direction="both", workers=1, no_progress=True, threads=2,
            set=sets)).steps == 20
        runs.append(out)
    assert RunInfo.read(runs[0]).train_identities == 4
    corpora = tmp_path / "corpora"
    for seed in (91, 92):  # what --seeds would generate, built smaller here
        build_corpus(corpora / f"heldout-{seed}-16", replace(SMALL, identities=16, seed=seed, splits=(0, 0, 1)),
                     progress=False)
    report = tmp_path / "report"
    done = eval_heldout(EvalHeldoutOptions(out=report, run=runs, seeds=[91, 92], identities=16, corpora=corpora,
                                           trials=200, probe_trials=3, curve=True, workers=1, no_progress=True))
    results = HeldoutResults.read(report / "heldout.json").runs
    assert [r["train_identities"] for r in results] == [4, 12]
    for r in results:
        assert set(r["corpora"]) == {"heldout-91-16", "heldout-92-16"}
        pooled = r["pooled"]["v2f"]["-"]
        assert pooled["trials"] == 400 and pooled["identities"] == 32
        assert r["corpora"]["heldout-91-16"]["matching"]["f2v"]["G"]["trials"] == 200
        assert set(r["pooled_links"]["voice"]) >= {"voice_pitch", "voice_variant_score", "z_size"}
        assert r["pooled_oracle"]["v2f"]["-"] > 0.5
    assert (report / "curve.png").stat().st_size > 10_000
    text = (report / "heldout.md").read_text()
    assert "**pooled** | 32 |" in text and "oracle (mean of the corpora)" in text
    assert "held-out evaluation of 2 run(s) on 2 corpora" in done.summary()
    # the same table and curve again from the saved results, without evaluating
    again = tmp_path / "again"
    eval_heldout(EvalHeldoutOptions(out=again, results=[report / "heldout.json"], curve=True, no_progress=True))
    assert (again / "heldout.md").read_text() == text and (again / "curve.png").exists()
    with pytest.raises(UsageError, match="--run RUN"):
        eval_heldout(EvalHeldoutOptions(out=again))
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    with pytest.raises(FormatError, match=r"not a heldout\.json"):
        eval_heldout(EvalHeldoutOptions(out=again, results=[tmp_path / "bad.json"]))


def test_heldout_refuses_the_seed_a_run_trained_on(tmp_path, corpus):
    directory, _ = corpus
    out = tmp_path / "run"
    assert train_association(TrainAssociationOptions(
        corpus=directory, out=out, config="small", workers=1, no_progress=True, threads=2,
        set=[*TINY, "train.iterations=2", "train.eval_every=2"])).steps == 2
    with pytest.raises(UsageError, match=r"seed\(s\) \[7\]"):
        eval_heldout(EvalHeldoutOptions(out=tmp_path / "r", run=[out], seeds=[SMALL.seed], corpora=tmp_path / "c",
                                        no_progress=True))


def test_a_held_out_corpus_of_an_older_face_painter_is_built_again(tmp_path, capsys):
    """A corpus left by an earlier version (face painter 1) is not reused as today's new people."""
    from facevoice.training.association.heldout import heldout_corpus
    from facevoice.training.corpus.faces import FACE_RENDER
    from facevoice.training.corpus.oracle import face_render
    from facevoice.training.corpus.synth import SynthConfig

    old = tmp_path / "heldout-9003-4"
    build_corpus(old, SynthConfig(identities=4, seed=9003, splits=(0.0, 0.0, 1.0), oracle_trials=0, workers=1,
                                  face_render=1), progress=False)
    assert face_render(old) == 1
    assert heldout_corpus(tmp_path, 9003, 4, False) == old
    assert face_render(old) == FACE_RENDER and "building it again" in capsys.readouterr().out
    stamp = (old / "corpus.json").stat().st_mtime_ns
    assert heldout_corpus(tmp_path, 9003, 4, False) == old and (old / "corpus.json").stat().st_mtime_ns == stamp
