"""Identity-disjoint splits: every item of a person lands in that person's split."""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")


def split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """(train, val, test) identity counts that add up to n."""
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
    return n - n_val - n_test, n_val, n_test


def assign_splits(identities: list[str], counts: tuple[int, int, int], seed: int) -> dict[str, str]:
    """identity -> split, by a seeded shuffle of the sorted identities."""
    if sum(counts) != len(identities):
        raise ValueError(f"split counts {counts} do not add up to {len(identities)} identities")
    order = sorted(identities)
    np.random.default_rng(seed).shuffle(order)
    names = [s for s, c in zip(SPLITS, counts, strict=True) for _ in range(c)]
    return dict(zip(order, names, strict=True))
