"""PNG figures for Speech2Face runs and reports (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facevoice.training.association.plots import _save, plt
from facevoice.training.runs import read_metrics


def training_curves(metrics_csv: Path, path: Path, title: str) -> Path:
    """One panel per logged column against the step (Oh et al. Fig. 8 for the voice encoder)."""
    rows = read_metrics(metrics_csv)
    keys = [k for k in (rows[0] if rows else {}) if k != "step" and any(float(r[k] or 0) for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(3.6 * max(1, len(keys)), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r[key]]
        ax.plot(*zip(*pts, strict=True), marker="." if len(pts) < 30 else None)
        ax.set(xlabel="iteration", title=key)
    fig.suptitle(title)
    return _save(fig, path)


def face_grid(columns: dict[str, np.ndarray], path: Path, row_labels: list[str] | None = None) -> Path:
    """Images side by side: each column a [N, H, W, 3] array in [0, 1] (e.g. true | F2F | S2F, Fig. 3)."""
    names = list(columns)
    n = len(next(iter(columns.values())))
    fig, axes = plt.subplots(n, len(names), figsize=(1.5 * len(names), 1.5 * n), squeeze=False)
    for i in range(n):
        for j, name in enumerate(names):
            ax = axes[i][j]
            ax.imshow(np.clip(columns[name][i], 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
            if j == 0 and row_labels:
                ax.set_ylabel(row_labels[i], fontsize=7)
    return _save(fig, path)
