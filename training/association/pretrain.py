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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from facevoice.cli import options
from facevoice.service.corpus import read_manifest
from facevoice.service.errors import CorpusError, FormatError, UsageError
from facevoice.training.association.augment import augment_faces, augment_voices
from facevoice.training.association.config import AssociationConfig, load_config
from facevoice.training.association.data import SplitData, first_identities, load_split, windows
from facevoice.training.association.measures import MEASURES, measure, standardised
from facevoice.training.association.model import SoundNet, vgg_features
from facevoice.training.runs import pick_device


@dataclass(frozen=True)
class TrainBackbonesOptions:
    corpus: Path
    out: Path  # directory for face_backbone.pt, voice_backbone.pt
    config: str = "small"  # small | paper | a TOML file
    set: Sequence[str] = ()  # SECTION.KEY=VALUE overrides
    steps: int = 600  # optimiser steps per backbone
    modalities: Sequence[str] = ("face", "voice")
    batch: int = 32
    lr: float = 1e-3
    attributes: Sequence[str] = ()  # manifest attributes of the training identities also classified
    measures: bool = False  # also regress the cues measured from the media (measures.py)
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0: all cores)
    workers: int = 2
    cache_dir: Path | None = None  # decoded arrays (default OUT/cache)
    no_progress: bool = False


@dataclass(frozen=True)
class TrainBackbonesResult:
    out: Path
    identities: int  # the training identities the backbones classify
    refused: dict[str, list[str]]  # modality -> items the front end refuses, left out
    weights: dict[str, Path]  # modality -> the weight file written
    stats: dict[str, dict]  # modality -> classify_identities' figures (steps, seconds, accuracy, classes)
    unmeasured: tuple[str, ...] = ()  # modalities asked to --measures with nothing measurable

    def summary(self) -> str:
        lines = [f"backbones pretrained on {self.identities} training identities -> {self.out}"]
        lines += [f"  left out: {len(ids)} {m} item(s) the front end refuses ({', '.join(ids[:3])}"
                  f"{', ...' if len(ids) > 3 else ''})" for m, ids in self.refused.items()]
        for modality, path in self.weights.items():
            if modality in self.unmeasured:
                lines.append(f"  {modality}: nothing measurable ({', '.join(MEASURES[modality])}), no measure head")
            stats = self.stats[modality]
            lines.append(f"  {modality}: {stats['steps']} steps in {stats['seconds']:.0f} s, identity accuracy on "
                         f"training batches {100 * stats['final_train_accuracy']:.0f}% (chance "
                         f"{100 / stats['classes']:.1f}%) -> {path.name}")
        lines.append(f"  next: facevoice train association ... --face-weights {self.out / 'face_backbone.pt'} "
                     f"--voice-weights {self.out / 'voice_backbone.pt'}")
        return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--config", default=TrainBackbonesOptions.config, help="small | paper | a TOML file")
    p.add_argument("--set", action="append", default=list(TrainBackbonesOptions.set), metavar="SECTION.KEY=VALUE")
    p.add_argument("--out", type=Path, required=True, help="directory for face_backbone.pt, voice_backbone.pt")
    p.add_argument("--steps", type=int, default=TrainBackbonesOptions.steps, help="optimiser steps per backbone")
    p.add_argument("--modalities", nargs="+", choices=("face", "voice"), default=list(TrainBackbonesOptions.modalities))
    p.add_argument("--batch", type=int, default=TrainBackbonesOptions.batch)
    p.add_argument("--lr", type=float, default=TrainBackbonesOptions.lr)
    p.add_argument("--attributes", nargs="*", default=list(TrainBackbonesOptions.attributes), metavar="ATTR",
                   help="also classify these manifest attributes of the training identities "
                        "(e.g. gender age_group appearance_group): a documented deviation, see docs/association.md")
    p.add_argument("--measures", action="store_true",
                   help="also regress cues measured from the media themselves (measures.py: the face box's "
                        "aspect, the voice's F0), which keep within-gender links a demographic head ignores")
    p.add_argument("--seed", type=int, default=TrainBackbonesOptions.seed)
    p.add_argument("--device", default=TrainBackbonesOptions.device)
    p.add_argument("--threads", type=int, default=TrainBackbonesOptions.threads)
    p.add_argument("--workers", type=int, default=TrainBackbonesOptions.workers)
    p.add_argument("--cache-dir", type=Path, help="decoded arrays (default OUT/cache)")
    p.add_argument("--no-progress", action="store_true")


def _inputs(split: SplitData, modality: str, cfg: AssociationConfig, rows: np.ndarray,
            rng: np.random.Generator, faces=None) -> torch.Tensor:
    """A batch as the backbone sees it in pretraining: faces always augmented (supp. A.2.2's
    scheme with the config's shift, read from `faces`, the crops with their margins, when given),
    voices a random window each, volume jittered."""
    data = getattr(split, modality).data
    if modality == "face":
        source = data if faces is None else faces
        return augment_faces(torch.from_numpy(np.asarray(source[rows], dtype=np.float32)), rng,
                             tuple(cfg.face.augment_scale), cfg.face.augment_shift, cfg.face.size)
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
    # wider windows show the photo around the crop where load_split cached a margin (face.augment_background)
    faces = split.face.wide() if modality == "face" and split.face.wide is not None else None
    losses, correct, start = [], [], time.perf_counter()
    bar = tqdm(range(steps), desc=f"pretrain {modality} backbone", disable=not progress, dynamic_ncols=True)
    for step in bar:
        rows = rng.integers(len(labels), size=batch)
        y = torch.from_numpy(labels[rows]).long().to(device)
        pooled = encoder(_inputs(split, modality, cfg, rows, rng, faces).to(device)).mean(dim=pool)
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


BACKBONES_INFO = "backbones.json"


@dataclass(frozen=True)
class BackbonesInfo:
    """backbones.json beside the weight files of `train backbones`: per weight file name, what it
    was trained on (corpus, split, identities, attributes, measures and the fit's figures), so a
    report can say which labels its backbones saw. Read and written only here."""

    weights: dict[str, dict] = field(default_factory=dict)  # file name -> what it was trained on

    def with_weights(self, name: str, info: dict) -> BackbonesInfo:
        return replace(self, weights={**self.weights, name: info})

    def write(self, folder: Path) -> Path:
        path = Path(folder) / BACKBONES_INFO
        tmp = path.with_name(f".{BACKBONES_INFO}.tmp")
        tmp.write_text(json.dumps(self.weights, indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, folder: Path) -> BackbonesInfo:
        """FormatError naming the file when it is missing or not a backbones.json."""
        path = Path(folder) / BACKBONES_INFO
        try:
            d = json.loads(path.read_text())
            if not isinstance(d, dict) or not all(isinstance(v, dict) for v in d.values()):
                raise ValueError("expected {weight file: what it was trained on}")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise FormatError(f"{path}: not a {BACKBONES_INFO} of `train backbones` ({type(e).__name__}: {e})") from e
        return cls(d)

    @classmethod
    def find(cls, folder: Path) -> BackbonesInfo | None:
        """The folder's record, or None where it has none (a user's own weight files)."""
        return cls.read(folder) if (Path(folder) / BACKBONES_INFO).exists() else None


def provenance(weights: Path | None) -> dict | None:
    """The backbones.json entry of a weight file, or None (a user's own file)."""
    if weights is None:
        return None
    info = BackbonesInfo.find(Path(weights).parent)
    return info.weights.get(Path(weights).name) if info else None


def train_backbones(opts: TrainBackbonesOptions) -> TrainBackbonesResult:
    """`train backbones`: each chosen backbone trained to classify the training identities (and
    `attributes`, and with `measures` the measured cues), saved as OUT/MODALITY_backbone.pt and
    recorded in OUT/backbones.json."""
    unknown = sorted(set(opts.modalities) - {"face", "voice"})
    if unknown:
        raise UsageError(f"modalities must be face and/or voice, not {', '.join(unknown)}")
    cfg = load_config(opts.config, list(opts.set))
    device = pick_device(opts.device, local_rank=0)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    opts.out.mkdir(parents=True, exist_ok=True)
    progress = not opts.no_progress
    train = first_identities(load_split(opts.corpus, "train", cfg, opts.cache_dir or opts.out / "cache",
                                        opts.workers, progress, skip_refused=True), cfg.train.identities)
    weights, stats, unmeasured = {}, {}, []
    for modality in opts.modalities:
        measured = None
        if opts.measures:
            chosen = {i.item_id: i for i in read_manifest(opts.corpus)}
            m = getattr(train, modality)
            measured = measure(modality, m.data, [chosen[k] for k in m.item_ids], cfg.voice.sample_rate)
            if not np.isfinite(measured).all(1).any():  # e.g. a corpus without face boxes
                unmeasured.append(modality)
                measured = None
        encoder, stats[modality] = classify_identities(train, modality, cfg, opts.steps, opts.batch, opts.lr,
                                                       opts.seed, device, progress, list(opts.attributes), measured)
        path = weights[modality] = opts.out / f"{modality}_backbone.pt"
        torch.save({k: v.cpu() for k, v in encoder.state_dict().items()}, path)
        record = BackbonesInfo.find(opts.out) or BackbonesInfo()
        record.with_weights(path.name, {
            "corpus": str(opts.corpus.resolve()), "split": "train", "identities": len(train.identities),
            "attributes": list(opts.attributes), "measures": list(MEASURES[modality]) if measured is not None else [],
            **{k: v for k, v in stats[modality].items() if k != "seconds"}}).write(opts.out)
    return TrainBackbonesResult(opts.out, len(train.identities), train.refused, weights, stats, tuple(unmeasured))


def run(args: argparse.Namespace) -> int:
    print(train_backbones(options(TrainBackbonesOptions, args)).summary())
    return 0
