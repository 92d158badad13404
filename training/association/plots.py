"""PNG figures for the association run and report (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from facevoice.training.corpus.people import ordered


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves(metrics_csv: Path, path: Path) -> Path:
    """Loss and validation 1:2 accuracy against iterations."""
    with Path(metrics_csv).open() as f:
        rows = list(csv.DictReader(f))
    step = [int(r["step"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(step, [float(r["loss"]) for r in rows])
    a.set(xlabel="iteration", ylabel="eq. (1) loss", title="training loss")
    for key in ("val_v2f", "val_f2v"):  # empty without a validation split
        pts = [(s, float(r[key])) for s, r in zip(step, rows, strict=True) if r[key]]
        if pts:
            b.plot(*zip(*pts, strict=True), label=key[4:].replace("2", "→").upper())
    b.axhline(0.5, color="grey", ls=":", label="chance")
    b.set(xlabel="iteration", ylabel="1:2 accuracy", ylim=(0.4, 1.0),
          title="validation" if any(r["val_v2f"] or r["val_f2v"] for r in rows) else "no validation split")
    b.legend()
    hard = [s for s, r in zip(step, rows, strict=True) if r["hard"] == "1"]
    for ax in (a, b):
        if hard:
            ax.axvline(hard[0], color="red", ls="--", lw=0.8)
    return _save(fig, path)


def matching_bars(table: dict, oracle: dict | None, path: Path) -> Path:
    """Chance | model | oracle 1:2 accuracy per control, one panel per direction (Table 3)."""
    fig, axes = plt.subplots(1, len(table), figsize=(5 * len(table), 3.6), squeeze=False)
    for ax, (direction, cells) in zip(axes[0], table.items(), strict=True):
        controls = list(cells)
        x = np.arange(len(controls))
        acc = [cells[c]["accuracy"] if cells[c] else np.nan for c in controls]
        err = np.array([[cells[c]["accuracy"] - cells[c]["ci95"][0], cells[c]["ci95"][1] - cells[c]["accuracy"]]
                        if cells[c] else [0, 0] for c in controls]).T.clip(min=0)  # float round-off at 0 or 1
        ax.bar(x - 0.2, acc, 0.4, yerr=err, capsize=3, label="model")
        if oracle and direction in oracle:
            ax.bar(x + 0.2, [oracle[direction].get(c) or np.nan for c in controls], 0.4, label="oracle",
                   color="tab:green", alpha=0.7)
        ax.axhline(0.5, color="grey", ls=":", label="chance")
        ax.set_xticks(x, [c.replace(" ", "\n") for c in controls])  # "largest group" on two lines
        ax.set(ylim=(0.3, 1.0), ylabel="1:2 accuracy", title=direction.replace("2", "→").upper())
        ax.legend(fontsize=8)
    return _save(fig, path)


def one_of_n_curve(curves: dict[str, dict[int, float]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for direction, acc in curves.items():
        ns = sorted(acc)
        ax.plot(ns, [acc[n] for n in ns], "o-", label=direction.replace("2", "→").upper())
    ns = sorted(next(iter(curves.values())))
    ax.plot(ns, [1 / n for n in ns], ":", color="grey", label="chance 1/N")
    ax.set(xlabel="N candidates", ylabel="accuracy", title="1:N matching")
    ax.legend()
    return _save(fig, path)


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="verification ROC")
    ax.legend(fontsize=8)
    return _save(fig, path)


def recall_curves(recall: dict, random: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for direction, by_size in recall.items():
        for size, rk in by_size.items():
            ks = sorted(rk)
            ax.plot(ks, [rk[k] for k in ks], "o-",
                    label=f"{direction.replace('2', '→').upper()}, set {size}")
    for size, rk in random.items():
        ks = sorted(rk)
        ax.plot(ks, [rk[k] for k in ks], ":", color="grey",
                label=f"random, set {size}")
    ax.set(xscale="log", xlabel="K", ylabel="recall@K", title="cross-modal retrieval")
    ax.legend(fontsize=7)
    return _save(fig, path)


def tsne_panels(points: dict[str, np.ndarray], colourings: dict[str, list], path: Path, title: str) -> Path:
    """One row per modality, one panel per colouring (categorical or numeric)."""
    names = list(colourings)
    fig, axes = plt.subplots(len(points), len(names), figsize=(3.2 * len(names), 3.2 * len(points)),
                             squeeze=False)
    for r, (modality, xy) in enumerate(points.items()):
        for c, name in enumerate(names):
            ax = axes[r][c]
            values = colourings[name][modality]
            mask = np.array([v is not None and v != "" for v in values])
            if mask.any() and all(isinstance(v, (int, float)) for v in np.asarray(values, object)[mask]):
                sc = ax.scatter(xy[mask, 0], xy[mask, 1], c=np.asarray(values, object)[mask].astype(float),
                                cmap="viridis", s=8)
                fig.colorbar(sc, ax=ax, fraction=0.046)
            else:
                for v in ordered({v for v in values if v not in (None, "")}):  # age groups youngest first
                    sel = np.array([x == v for x in values])
                    ax.scatter(xy[sel, 0], xy[sel, 1], s=8, label=str(v))
                if len({v for v in values if v not in (None, "")}) <= 6:
                    ax.legend(fontsize=6, markerscale=1.5)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{modality}: {name}", fontsize=9)
    fig.suptitle(title)
    return _save(fig, path)


def corpus_tsne(points: dict[str, np.ndarray], labels: dict[str, list[str]], path: Path, title: str) -> Path:
    """Kim et al. Fig. 3's layout: one panel per modality side by side, each point coloured by the
    corpus it came from (in the order the corpora first appear)."""
    fig, axes = plt.subplots(1, len(points), figsize=(4.2 * len(points), 4.2), squeeze=False)
    for ax, (modality, xy) in zip(axes[0], points.items(), strict=True):
        names = np.asarray(labels[modality])
        for name in dict.fromkeys(labels[modality]):
            sel = names == name
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, alpha=0.7, label=f"{name} ({int(sel.sum())})")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{modality} distribution", fontsize=9)
        ax.legend(fontsize=7, markerscale=1.5)
    fig.suptitle(title)
    return _save(fig, path)
