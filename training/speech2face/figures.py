"""Oh et al. 2019's Fig. 4(b), 6 and 7 as `eval s2f` draws them, each a PNG named after the figure:

- Fig. 4(b), the data's statistics: the people of each split by gender, age group and appearance
  group (the paper's ethnicity), as the paper shows AVSpeech's (`dataset_statistics`, `fig4b`);
- Fig. 6, the effect of the input's duration: a photo of each of a few test speakers, then the
  S2F reconstruction of the same clip cut to each `--seconds` (the paper: 3 s and 6 s);
- Fig. 7, S2F -> face retrieval examples: a clip's reconstruction, then the 5 photos whose face
  feature v_f is nearest (cosine) its v_s in the one-photo-per-person gallery Table 3 queries,
  the speaker's own photo framed in green (`retrieval_examples`, `fig7`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from facevoice.service.corpus import read_manifest
from facevoice.service.media import FaceImage
from facevoice.training.association.plots import _save, plt
from facevoice.training.metrics import one_per_identity_galleries
from facevoice.training.speech2face.data import S2FSplit, rows_tensor, to_rgb
from facevoice.training.speech2face.measures import ATTRS, distances, ordered

FIG4A_PIXELS = "fig4a_pixel_classifier.png"
FIG4B = "fig4b_dataset.png"
FIG6 = "fig6_durations.png"
FIG7 = "fig7_retrieval.png"
SPLIT_ORDER = ("train", "val", "test")


def dataset_statistics(corpus: Path) -> dict:
    """{split: {"people": n, attribute: {class: people}}} over the corpus's identities (each
    counted once, with the attributes of its manifest rows), splits in train / val / test order."""
    people: dict[str, dict[str, dict]] = {}
    for item in read_manifest(Path(corpus)):
        people.setdefault(item.split, {}).setdefault(item.identity, {a: getattr(item, a) for a in ATTRS})
    splits = sorted(people, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))
    out = {}
    for split in splits:
        rows = list(people[split].values())
        out[split] = {"people": len(rows)}
        for attr in ATTRS:
            values = [r[attr] or "unknown" for r in rows]
            out[split][attr] = {c: values.count(c) for c in ordered(sorted(set(values)))}
    return out


def fig4b(stats: dict, path: Path) -> Path:
    """One panel per attribute: each class's share of each split's people (bars side by side),
    the count on each bar."""
    fig, axes = plt.subplots(1, len(ATTRS), figsize=(4.2 * len(ATTRS), 3.4), squeeze=False)
    splits = list(stats)
    width = 0.8 / max(1, len(splits))
    for ax, attr in zip(axes[0], ATTRS, strict=True):
        classes = ordered(sorted({c for s in splits for c in stats[s][attr]}))
        for j, split in enumerate(splits):
            counts = np.array([stats[split][attr].get(c, 0) for c in classes])
            x = np.arange(len(classes)) + (j - (len(splits) - 1) / 2) * width
            bars = ax.bar(x, 100 * counts / max(1, stats[split]["people"]), width,
                          label=f"{split} ({stats[split]['people']} people)")
            ax.bar_label(bars, [str(n) for n in counts], fontsize=6)
        ax.set_xticks(range(len(classes)), classes, fontsize=8)
        ax.set(title=attr.replace("_", " "), ylabel="% of the split's people")
    axes[0][0].set_ylim(0, 1.6 * axes[0][0].get_ylim()[1])  # headroom above the bars for the legend
    axes[0][0].legend(fontsize=7, loc="upper left", frameon=False)
    fig.suptitle("Dataset statistics (Oh et al. Fig. 4(b))")
    return _save(fig, path)


def image_grid(cells: list[list[np.ndarray | None]], path: Path, row_labels: list[str], col_labels: list[str],
               marked: set[tuple[int, int]] = frozenset(), title: str = "") -> Path:
    """cells[i][j] an [H, W, 3] image in [0, 1] (None: blank); `marked` cells framed in green."""
    rows, cols = len(cells), max(1, *(len(r) for r in cells))
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.5 * rows + 0.4), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            image = cells[i][j] if j < len(cells[i]) else None
            if image is None:
                ax.axis("off")
                continue
            ax.imshow(np.clip(image, 0, 1))
            if (i, j) in marked:
                for side in ax.spines.values():
                    side.set(color="limegreen", linewidth=4)
            if i == 0 and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=7)
            if j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).numpy()


def photos_rgb(split: S2FSplit, rows, frontend: FaceImage) -> np.ndarray:
    """[N, H, W, 3] in [0, 1]: the split's face rows as the face network saw them."""
    return _hwc(to_rgb(rows_tensor(split.face.data, rows), frontend))


def same_clips(test: dict[float, S2FSplit], people: int) -> tuple[list[int], dict[float, list[int]]]:
    """Up to `people` test people with a clip every duration kept, and per duration the row of
    that one clip (the same item) in its split's voices."""
    splits = list(test.values())
    first = splits[0]
    rows_by_id = [{item: k for k, item in enumerate(s.voice.item_ids)} for s in splits]
    chosen, rows = [], {s: [] for s in test}
    for person in range(len(first.identities)):
        clip = next((first.voice.item_ids[k] for k in first.items_of("voice", person)
                     if all(first.voice.item_ids[k] in r for r in rows_by_id)), None)
        if clip is None:
            continue
        chosen.append(person)
        for s, r in zip(test, rows_by_id, strict=True):
            rows[s].append(r[clip])
        if len(chosen) == people:
            break
    return chosen, rows


def fig6(test: dict[float, S2FSplit], v_s: dict[float, torch.Tensor], reconstruct: Callable, frontend: FaceImage,
         path: Path, people: int = 8) -> Path:
    """Columns: test people; rows: a photo, then the S2F reconstruction of one clip of theirs cut to
    each duration (`reconstruct`: v_s -> RGB [N, 3, H, W])."""
    split = test[list(test)[-1]]
    chosen, rows = same_clips(test, people)
    photos = photos_rgb(split, [int(split.items_of("face", p)[0]) for p in chosen], frontend)
    cells = [list(photos)] + [list(_hwc(reconstruct(v_s[s][rows[s]]))) for s in test]
    labels = [f"{split.identities[p]} {split.attributes[p].get('gender', '')[:1]}" for p in chosen]
    return image_grid(cells, path, ["photo", *(f"S2F, {s:g} s" for s in test)], labels,
                      title="The effect of input audio duration (Oh et al. Fig. 6): the same clip, cut shorter")


def retrieval_examples(v_s: torch.Tensor, v_f: torch.Tensor, split: S2FSplit, queries: int = 5, k: int = 5) -> list:
    """For the first clip of each of the first `queries` test people with a clip and a photo: the
    `k` photos nearest its v_s by cosine in the first one-photo-per-person gallery (Table 3's),
    and the 1-based rank of the speaker's photo there."""
    gallery = one_per_identity_galleries(split.face.identity)[0]
    out = []
    for person in range(len(split.identities)):
        if len(out) == queries:
            break
        clips = split.items_of("voice", person)
        if not len(clips) or person not in split.face.identity:
            continue
        clip = int(clips[0])
        d = distances(v_s[[clip]], v_f[gallery], "cosine")[0]
        order = gallery[np.argsort(d, kind="stable")]
        rank = int(np.flatnonzero(split.face.identity[order] == person)[0]) + 1
        out.append({"identity": split.identities[person], "clip": split.voice.item_ids[clip], "clip_row": clip,
                    "top": [int(r) for r in order[:k]], "true_rank": rank, "gallery": len(gallery)})
    return out


def fig7(examples: list[dict], split: S2FSplit, s2f: torch.Tensor, frontend: FaceImage, path: Path) -> Path:
    """Rows: queries; columns: the S2F reconstruction, then the top photos, the true one framed."""
    cells, marked, labels = [], set(), []
    for i, e in enumerate(examples):
        cells.append([_hwc(s2f[[e["clip_row"]]])[0], *photos_rgb(split, e["top"], frontend)])
        person = split.identities.index(e["identity"])
        marked |= {(i, j + 1) for j, r in enumerate(e["top"]) if split.face.identity[r] == person}
        labels.append(f"{e['identity']}: true at {e['true_rank']}")
    k = max((len(e["top"]) for e in examples), default=0)
    gallery = examples[0]["gallery"] if examples else 0
    return image_grid(cells, path, labels, ["S2F recon.", *(f"top {j + 1}" for j in range(k))], marked,
                      f"S2F -> face retrieval in {gallery} photos, one per person (Oh et al. Fig. 7)")
