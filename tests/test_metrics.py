"""Evaluation metrics on constructed inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from facevoice.training.metrics import (
    cluster_bootstrap_interval,
    mean_interval,
    one_of_n_correct,
    pairwise_l2,
    random_map,
    random_recall_at_k,
    recall_at_k,
    retrieval_map,
    roc_auc_eer,
    wilson_interval,
)


def test_one_of_n_perfect_reversed_and_tied():
    probe = np.zeros((3, 2))
    near, far = np.array([0.1, 0.0]), np.array([5.0, 0.0])
    assert one_of_n_correct(probe, np.stack([[near, far]] * 3)).tolist() == [1, 1, 1]
    assert one_of_n_correct(probe, np.stack([[far, near]] * 3)).tolist() == [0, 0, 0]
    assert one_of_n_correct(probe[:1], np.array([[near, near, far]])).tolist() == [0.5]


def test_wilson_interval_known_case():
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    lo, hi = wilson_interval(2000, 4000)
    assert hi - lo == pytest.approx(2 * 1.96 * 0.5 / np.sqrt(4000), rel=1e-3)


def test_mean_interval_uses_student_t():
    mean, half = mean_interval(np.array([1.0, 2.0, 3.0]), 0.99)
    assert mean == 2.0 and half == pytest.approx(9.9248 / np.sqrt(3), rel=1e-4)


def test_cluster_bootstrap_collapses_on_constant_values_and_widens_with_few_clusters():
    assert cluster_bootstrap_interval(np.ones(50), np.arange(50) % 5) == (1.0, 1.0)
    values = np.repeat([1.0, 0.0], 100)
    few = cluster_bootstrap_interval(values, np.repeat([0, 1], 100))
    many = cluster_bootstrap_interval(values, np.arange(200))
    assert few[1] - few[0] > many[1] - many[0]


def test_auc_and_eer_perfect_reversed_random():
    labels = np.array([1, 1, 1, 0, 0, 0])
    assert roc_auc_eer(np.array([6, 5, 4, 3, 2, 1.0]), labels) == (1.0, 0.0)
    assert roc_auc_eer(np.array([1, 2, 3, 4, 5, 6.0]), labels) == (0.0, 1.0)
    rng = np.random.default_rng(0)
    auc, eer = roc_auc_eer(rng.normal(size=20000), rng.integers(0, 2, 20000))
    assert abs(auc - 0.5) < 0.02 and abs(eer - 0.5) < 0.02
    with pytest.raises(ValueError, match="both"):
        roc_auc_eer(np.ones(3), np.ones(3))


def test_recall_and_map_perfect_and_reversed():
    ident = np.arange(4)
    emb = np.eye(4)
    d = pairwise_l2(emb, emb)
    assert recall_at_k(d, ident, ident, (1, 2)) == {1: 1.0, 2: 1.0}
    assert retrieval_map(d, ident, ident) == 1.0
    assert recall_at_k(-d, ident, ident, (1, 3, 4)) == {1: 0.0, 3: 0.0, 4: 1.0}
    assert retrieval_map(-d, ident, ident) == pytest.approx(0.25)


def test_random_baselines():
    # 4 items, one match: recall@1 = 1/4; two matches of 4: recall@1 = 1/2, recall@2 = 1 - 1/6
    assert random_recall_at_k(np.arange(4), np.array([0]), (1, 4)) == {1: 0.25, 4: 1.0}
    assert random_recall_at_k(np.array([0, 0, 1, 2]), np.array([0]), (1, 2)) == {1: 0.5, 2: pytest.approx(5 / 6)}
    # one relevant of 4: AP of a random rank r is 1/r, mean (1 + 1/2 + 1/3 + 1/4) / 4
    assert random_map(np.arange(4), np.array([0]), shuffles=4000) == pytest.approx(25 / 48, abs=0.02)


def test_cluster_bootstrap_correlation_brackets_r_and_widens_with_fewer_speakers():
    from facevoice.training.metrics import cluster_bootstrap_correlation

    rng = np.random.default_rng(0)
    speaker = np.repeat(np.arange(200), 4)
    x = rng.standard_normal(200)[speaker] + 0.5 * rng.standard_normal(800)
    y = x + rng.standard_normal(800)
    r = np.corrcoef(x, y)[0, 1]
    lo, hi = cluster_bootstrap_correlation(x, y, speaker)
    assert lo < r < hi and hi - lo < 0.15
    few = speaker < 20
    lo20, hi20 = cluster_bootstrap_correlation(x[few], y[few], speaker[few])
    assert hi20 - lo20 > hi - lo
    # perfectly related within every draw
    assert cluster_bootstrap_correlation(x, 2 * x + 1, speaker) == pytest.approx((1.0, 1.0))
