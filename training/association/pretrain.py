"""`facevoice train backbones`: our offline stand-in for the pretrained VGG16 and SoundNet that
Kim et al. 2018 sec. 4.3 fine-tune. No weights can be downloaded here, so each backbone is first
trained to classify the *training* identities from its own modality alone (as VGG-Face and
speaker-ID networks are), then saved as a weight file that `train association --face-weights /
--voice-weights` loads like a user's VGG16 / SoundNet file. It sees no test identity; with
`--attributes` it also learns the training identities' demographic labels. backbones.json beside
the weights records which. docs/association.md lists both among the deviations.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from facevoice.service.corpus import read_manifest
from facevoice.service.errors import CorpusError
from facevoice.training.association.augment import augment_faces, augment_voices
from facevoice.training.association.config import AssociationConfig, load_config
from facevoice.training.association.data import SplitData, first_identities, load_split, windows
from facevoice.training.association.measures import MEASURES, measure, standardised
from facevoice.training.association.model import SoundNet, vgg_features
from facevoice.training.runs import pick_device


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--config", default="small", help="small | paper | a TOML file")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--out", type=Path, required=True, help="directory for face_backbone.pt, voice_backbone.pt")
    p.add_argument("--steps", type=int, default=600, help="optimiser steps per backbone")
    p.add_argument("--modalities", nargs="+", choices=("face", "voice"), default=["face", "voice"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--attributes", nargs="*", default=[], metavar="ATTR",
                   help="also classify these manifest attributes of the training identities "
                        "(e.g. gender age_group appearance_group): a documented deviation, see docs/association.md")
    p.add_argument("--measures", action="store_true",
                   help="also regress cues measured from the media themselves (measures.py: the face box's "
                        "aspect, the voice's F0), which keep within-gender links a demographic head ignores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, help="decoded arrays (default OUT/cache)")
    p.add_argument("--no-progress", action="store_true")


def _inputs(split: SplitData, modality: str, cfg: AssociationConfig, rows: np.ndarray,
            rng: np.random.Generator) -> torch.Tensor:
    data = getattr(split, modality).data
    if modality == "face":
        return augment_faces(torch.from_numpy(np.asarray(data[rows], dtype=np.float32)), rng,
                             tuple(cfg.face.augment_scale))
    n = cfg.voice.frontend().samples
    starts = rng.integers(data.shape[1] - n + 1, size=len(rows))
    return augment_voices(torch.from_numpy(windows(data, rows, starts, n)), rng)


def attribute_targets(split: SplitData, attributes: list[str]) -> dict[str, np.ndarray]:
    """identity index -> class index of each attribute, classes sorted by name."""
    out = {}
    for attr in attributes:
        values = [a.get(attr, "") for a in split.attributes]
        classes = sorted(set(values))
        if len(classes) < 2:
            raise CorpusError(f"attribute {attr!r}: the training split has {len(classes)} value(s) of it, need 2+ "
                             "(leave it out of the attributes)")
        out[attr] = np.array([classes.index(v) for v in values])
    return out


def attribute_loss(heads: nn.ModuleDict, targets: dict[str, np.ndarray], feature: torch.Tensor,
                   identities: np.ndarray) -> torch.Tensor | float:
    """Sum of the attribute heads' cross-entropies for a batch of these identity indices (0
    without heads)."""
    loss = 0.0
    for attr, head in heads.items():
        if attr == "measured":
            continue
        y = torch.from_numpy(targets[attr][identities]).to(feature.device)
        loss = loss + nn.functional.cross_entropy(head(feature), y)
    return loss


def classify_identities(split: SplitData, modality: str, cfg: AssociationConfig, steps: int, batch: int,
                        lr: float, seed: int, device: torch.device, progress: bool,
                        attributes: list[str] = (), measured: np.ndarray | None = None) -> tuple[nn.Module, dict]:
    """Softmax over the training identities on top of the backbone's pooled features; with
    `attributes`, one more softmax head per attribute, their cross-entropies added with weight 1;
    with `measured` ([items, k] z-scores, NaN where not measured), a linear regression head whose
    mean squared error is added with weight 1."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    encoder = (vgg_features(cfg.face, pool5=cfg.face.pool == "pool5") if modality == "face"
               else SoundNet(cfg.voice)).to(device)  # pooled as the association model pools it
    width = cfg.face.widths[-1] if modality == "face" else cfg.voice.widths[-1]
    labels = getattr(split, modality).identity
    classifier = nn.Linear(width, len(split.identities)).to(device)
    targets = attribute_targets(split, list(attributes))
    heads = nn.ModuleDict({a: nn.Linear(width, int(t.max()) + 1) for a, t in targets.items()}).to(device)
    if measured is not None:
        z, usable = standardised(measured)
        heads["measured"] = nn.Linear(width, z.shape[1]).to(device)
    opt = torch.optim.Adam([*encoder.parameters(), *classifier.parameters(), *heads.parameters()], lr)
    pool = (2, 3) if modality == "face" else (2,)
    losses, correct, start = [], [], time.perf_counter()
    bar = tqdm(range(steps), desc=f"pretrain {modality} backbone", disable=not progress, dynamic_ncols=True)
    for step in bar:
        rows = rng.integers(len(labels), size=batch)
        y = torch.from_numpy(labels[rows]).long().to(device)
        pooled = encoder(_inputs(split, modality, cfg, rows, rng).to(device)).mean(dim=pool)
        logits = classifier(pooled)
        loss = nn.functional.cross_entropy(logits, y) + attribute_loss(heads, targets, pooled, labels[rows])
        if measured is not None and usable[rows].any():
            keep = torch.from_numpy(usable[rows]).to(device)
            guess = heads["measured"](pooled)[keep]
            loss = loss + nn.functional.mse_loss(guess, torch.from_numpy(z[rows][usable[rows]]).float().to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        correct.append((logits.argmax(1) == y).float().mean().item())
        if step % 20 == 19:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", acc=f"{np.mean(correct[-20:]):.2f}")
    return encoder, {"steps": steps, "final_loss": float(np.mean(losses[-50:])),
                     "final_train_accuracy": float(np.mean(correct[-50:])), "classes": len(split.identities),
                     "seconds": time.perf_counter() - start}


PROVENANCE = "backbones.json"


def record_provenance(weights: Path, info: dict) -> None:
    """What a weight file was trained on, in backbones.json beside it (keyed by file name), so a
    report can say which labels its backbones saw."""
    path = weights.parent / PROVENANCE
    known = json.loads(path.read_text()) if path.exists() else {}
    known[weights.name] = info
    path.write_text(json.dumps(known, indent=2) + "\n")


def provenance(weights: Path | None) -> dict | None:
    """The backbones.json entry of a weight file, or None (a user's own file)."""
    if weights is None:
        return None
    path = Path(weights).parent / PROVENANCE
    return json.loads(path.read_text()).get(Path(weights).name) if path.exists() else None


def run(args: argparse.Namespace) -> int:
    device = pick_device(args.device, local_rank=0)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    args.out.mkdir(parents=True, exist_ok=True)
    train = first_identities(load_split(args.corpus, "train", cfg, args.cache_dir or args.out / "cache",
                                        args.workers, not args.no_progress, skip_refused=True), cfg.train.identities)
    lines = [f"backbones pretrained on {len(train.identities)} training identities -> {args.out}"]
    lines += [f"  left out: {len(ids)} {m} item(s) the front end refuses ({', '.join(ids[:3])}"
              f"{', ...' if len(ids) > 3 else ''})" for m, ids in train.refused.items()]
    for modality in args.modalities:
        measured = None
        if args.measures:
            chosen = {i.item_id: i for i in read_manifest(args.corpus)}
            m = getattr(train, modality)
            measured = measure(modality, m.data, [chosen[k] for k in m.item_ids], cfg.voice.sample_rate)
            if not np.isfinite(measured).all(1).any():  # e.g. a corpus without face boxes
                lines.append(f"  {modality}: nothing measurable ({', '.join(MEASURES[modality])}), no measure head")
                measured = None
        encoder, stats = classify_identities(train, modality, cfg, args.steps, args.batch, args.lr, args.seed,
                                             device, not args.no_progress, args.attributes, measured)
        path = args.out / f"{modality}_backbone.pt"
        torch.save({k: v.cpu() for k, v in encoder.state_dict().items()}, path)
        record_provenance(path, {"corpus": str(args.corpus.resolve()), "split": "train",
                                 "identities": len(train.identities), "attributes": list(args.attributes),
                                 "measures": list(MEASURES[modality]) if measured is not None else [],
                                 **{k: v for k, v in stats.items() if k != "seconds"}})
        lines.append(f"  {modality}: {stats['steps']} steps in {stats['seconds']:.0f} s, identity accuracy on "
                     f"training batches {100 * stats['final_train_accuracy']:.0f}% (chance "
                     f"{100 / stats['classes']:.1f}%) -> {path.name}")
    lines.append(f"  next: facevoice train association ... --face-weights {args.out / 'face_backbone.pt'} "
                 f"--voice-weights {args.out / 'voice_backbone.pt'}")
    print("\n".join(lines))
    return 0
