"""Evaluation metrics shared by the association and Speech2Face reports: matching, verification,
retrieval, confidence intervals. Distances are Euclidean (Kim et al. 2018 sec. 4.4)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def pairwise_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] Euclidean distances, computed in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def one_of_n_correct(probe: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Kim sec. 4.4: pick the candidate closest to the probe. probe [T, D], candidates [T, N, D]
    with the true match in column 0 -> per trial 1 (right), 0 (wrong) or 1/k (k-way tie)."""
    return first_is_closest(np.linalg.norm(np.asarray(candidates, np.float64) - np.asarray(probe, np.float64)[:, None],
                                           axis=2))


def first_is_closest(d: np.ndarray) -> np.ndarray:
    """[T, N] distances with the true match in column 0 -> per trial 1, 0 or 1/k (k-way tie)."""
    best = d.min(axis=1, keepdims=True)
    ties = (d == best).sum(axis=1)
    return np.where(d[:, 0] == best[:, 0], 1.0 / ties, 0.0)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if n <= 0:
        return (0.0, 1.0)
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def cluster_bootstrap_interval(values: np.ndarray, clusters: np.ndarray, confidence: float = 0.95,
                               rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean when whole clusters (identities) are resampled: trials that
    share an identity are not independent, so this is the honest interval for a small test set."""
    values, clusters = np.asarray(values, float), np.asarray(clusters)
    ids, inverse = np.unique(clusters, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids))
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(ids), size=(rounds, len(ids)))
    means = sums[draws].sum(1) / np.maximum(counts[draws].sum(1), 1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def cluster_bootstrap_correlation(x: np.ndarray, y: np.ndarray, clusters: np.ndarray, confidence: float = 0.95,
                                  rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of Pearson r between x and y when whole clusters (speakers) are
    resampled; pairs that share a speaker are not independent, so scipy's p-value overstates."""
    x, y, clusters = np.asarray(x, float), np.asarray(y, float), np.asarray(clusters)
    ids, inverse = np.unique(clusters, return_inverse=True)
    sums = np.stack([np.bincount(inverse, weights=w, minlength=len(ids))
                     for w in (np.ones_like(x), x, y, x * x, y * y, x * y)])  # per cluster: n, Σx, Σy, Σx², Σy², Σxy
    draws = np.random.default_rng(seed).integers(len(ids), size=(rounds, len(ids)))
    n, sx, sy, sxx, syy, sxy = sums[:, draws].sum(2)
    cov, vx, vy = sxy - sx * sy / n, sxx - sx * sx / n, syy - sy * sy / n
    r = cov / np.sqrt(np.maximum(vx * vy, 1e-300))
    lo, hi = np.quantile(r, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def mean_interval(samples: np.ndarray, confidence: float = 0.99) -> tuple[float, float]:
    """Mean and half-width of a Student-t interval (Kim Table 4: 99% CI over 20 holdout trials)."""
    samples = np.asarray(samples, float)
    if len(samples) < 2:
        return float(samples.mean()), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, len(samples) - 1) * samples.std(ddof=1) / math.sqrt(len(samples))
    return float(samples.mean()), float(half)


def roc(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Verification ROC (false and true positive rates; higher score = same identity)."""
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("verification needs both same-identity and different-identity pairs")
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr


def roc_auc_eer(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Verification: area under the ROC curve and the equal error rate (higher score = same)."""
    return auc_eer(*roc(scores, labels))


def auc_eer(fpr: np.ndarray, tpr: np.ndarray) -> tuple[float, float]:
    """AUC (trapezoids, as sklearn's roc_auc_score) and EER of one ROC curve."""
    fnr = 1 - tpr
    k = int(np.argmax(fnr <= fpr))  # first point where the curves cross
    if k == 0:
        eer = float(fpr[0])
    else:  # linear interpolation between the two points around the crossing
        d0, d1 = fpr[k - 1] - fnr[k - 1], fpr[k] - fnr[k]
        w = d0 / (d0 - d1) if d0 != d1 else 0.0
        eer = float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))
    from sklearn.metrics import auc

    return float(auc(fpr, tpr)), eer


def recall_at_k(distances: np.ndarray, query_identity: np.ndarray, gallery_identity: np.ndarray,
                ks: tuple[int, ...]) -> dict[int, float]:
    """Kim Table 6: fraction of queries with an item of their identity among the K nearest."""
    return recall_from_first_hit(first_hit(distances, query_identity, gallery_identity), ks)


def recall_from_first_hit(first: np.ndarray, ks: tuple[int, ...]) -> dict[int, float]:
    """Recall@K from each query's 0-based first-hit rank (`first_hit`)."""
    return {k: float((first < k).mean()) for k in ks}


def first_hit(distances: np.ndarray, query_identity: np.ndarray, gallery_identity: np.ndarray) -> np.ndarray:
    """Per query, the 0-based rank of the first gallery item of its identity (gallery size if none)."""
    order = np.argsort(distances, axis=1, kind="stable")
    hit = np.asarray(gallery_identity)[order] == np.asarray(query_identity)[:, None]
    return np.where(hit.any(1), hit.argmax(1), distances.shape[1])


def random_recall_at_k(gallery_identity: np.ndarray, query_identity: np.ndarray,
                       ks: tuple[int, ...]) -> dict[int, float]:
    """Expected recall@K of a random ranking: 1 - C(S-m, K) / C(S, K), m = the query's matches."""
    gallery_identity = np.asarray(gallery_identity)
    size = len(gallery_identity)
    _, counts = np.unique(gallery_identity, return_counts=True)
    per_identity = dict(zip(np.unique(gallery_identity), counts, strict=True))
    m = np.array([per_identity.get(q, 0) for q in query_identity])
    out = {}
    for k in ks:
        k_eff = min(k, size)
        miss = np.array([math.comb(size - mi, k_eff) / math.comb(size, k_eff) for mi in m])
        out[k] = float((1 - miss).mean())
    return out


def one_per_identity_galleries(gallery_identity: np.ndarray) -> list[np.ndarray]:
    """Gallery rows with exactly one item per identity, as many draws as the most items any
    identity has: draw j takes each identity's j-th item (cycling where it has fewer). Every item
    is in some draw; a query's true match is then one image, as in Oh et al. Table 3."""
    gallery_identity = np.asarray(gallery_identity)
    rows = {i: np.flatnonzero(gallery_identity == i) for i in np.unique(gallery_identity)}
    draws = max(len(r) for r in rows.values())
    return [np.array([r[j % len(r)] for r in rows.values()]) for j in range(draws)]


def average_precision(ranked_relevance: np.ndarray) -> float:
    """AP of one ranked list of 0/1 relevance; 0 when nothing is relevant."""
    rel = np.asarray(ranked_relevance, float)
    if rel.sum() == 0:
        return 0.0
    precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    return float((precision * rel).sum() / rel.sum())


def retrieval_map(distances: np.ndarray, query_identity: np.ndarray, gallery_identity: np.ndarray) -> float:
    """Mean average precision over queries, relevant = same identity."""
    order = np.argsort(distances, axis=1, kind="stable")
    rel = np.asarray(gallery_identity)[order] == np.asarray(query_identity)[:, None]
    return float(np.mean([average_precision(r) for r in rel]))


def random_map(gallery_identity: np.ndarray, query_identity: np.ndarray, shuffles: int = 200) -> float:
    """Expected AP of a random ranking, estimated by shuffling (it depends only on the match count)."""
    rng = np.random.default_rng(0)
    gallery_identity = np.asarray(gallery_identity)
    by_count: dict[int, float] = {}
    aps = []
    for q in query_identity:
        rel = gallery_identity == q
        m = int(rel.sum())
        if m not in by_count:
            by_count[m] = float(np.mean([average_precision(rng.permutation(rel)) for _ in range(shuffles)]))
        aps.append(by_count[m])
    return float(np.mean(aps))
