"""Speech2Face evaluation metrics on constructed features with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.association.data import Modality
from training.speech2face.data import S2FSplit
from training.speech2face.evaluate import attribute_agreement, cross_check, feature_similarity, retrieval


def _split(people: int = 10, per: int = 2) -> S2FSplit:
    ident = np.repeat(np.arange(people), per)
    attrs = [{"gender": "male" if i % 2 else "female", "age_group": "30s" if i < people // 2 else "50s",
              "appearance_group": "AB"[i % 2]} for i in range(people)]
    mod = lambda: Modality(np.zeros((len(ident), 1)), ident.copy(), [str(k) for k in range(len(ident))])  # noqa: E731
    return S2FSplit([f"p{i}" for i in range(people)], attrs, mod(), mod(), None)


def _features(split: S2FSplit, seed: int = 0) -> torch.Tensor:
    """One well-separated direction per person (+ small noise per item)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(len(split.identities), 16) * 5
    return centres[split.face.identity] + 0.01 * torch.randn(len(split.face.identity), 16, generator=g)


def test_similarity_perfect_and_unrelated():
    s = _split()
    v_f = _features(s)
    perfect = feature_similarity(v_f.clone(), v_f, s)
    assert perfect["angle_deg"]["same_person"] < 1 and perfect["angle_deg"]["other_people"] > 85
    assert perfect["l2"]["same_person"] < perfect["l2"]["other_people"]


def test_retrieval_perfect_random_and_reversed():
    s = _split()
    v_f = _features(s)
    r = retrieval(v_f.clone(), v_f, s)
    for metric in ("l1", "l2", "cosine"):
        assert r[metric][1] == 1.0
    # 20 photos, 2 per person: a random ranking finds one of the 2 in the top 1 with p = 2/20
    assert r["random"][1] == pytest.approx(0.1)
    assert r["random"][10] == pytest.approx(1 - (10 * 9) / (20 * 19))
    # reversed: each voice points at the next person's face -> never in the top 1
    shifted = _features(s)[(np.arange(20) + 2) % 20]
    assert retrieval(shifted, v_f, s)["cosine"][1] == 0.0


def test_attribute_agreement_identical_and_flipped():
    s = _split()
    train_vf = _features(s, seed=1)
    v_f = _features(s)
    same = attribute_agreement(s, train_vf, s, v_f, v_f.clone())
    assert same["gender"]["agreement"] == 1.0 and same["gender"]["photo_accuracy"] == 1.0
    assert np.trace(np.array(same["gender"]["confusion"])) == sum(map(sum, same["gender"]["confusion"]))
    # reconstructions that look like the next person: gender alternates, so it always disagrees
    flipped = v_f[(np.arange(20) + 2) % 20]
    assert attribute_agreement(s, train_vf, s, v_f, flipped)["gender"]["agreement"] == 0.0


def test_cross_check_perfect_and_reversed():
    s = _split()
    v_f = _features(s)
    good = cross_check(s, v_f.clone(), v_f.clone(), v_f, n=200, seed=0)
    assert good["via_feature"]["accuracy"] == 1.0 and good["via_reconstruction"]["trials"] == 200
    lo, hi = good["via_feature"]["ci95"]
    assert lo < 1.0 <= hi + 1e-9
    wrong = cross_check(s, -v_f, -v_f, v_f, n=200, seed=0)  # pointing away from the speaker's face
    assert wrong["via_feature"]["accuracy"] < 0.5
