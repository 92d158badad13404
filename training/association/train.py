"""`facevoice train association`: Kim et al. 2018 sec. 4.3, one loop for CPU, GPU and torchrun DDP.

Read top to bottom: config, data, model, optimiser, loop (tuples -> eq. (1) -> hard negatives
after `hard_after`), validation 1:2 accuracy for model selection, checkpoint.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from facevoice.cli import options
from facevoice.service.errors import UsageError
from facevoice.training.association.config import AssociationConfig, load_config
from facevoice.training.association.data import (
    Batch,
    SplitData,
    TupleSampler,
    first_identities,
    has_items,
    load_split,
)
from facevoice.training.association.embed import split_embeddings
from facevoice.training.association.loss import (
    contrastive_loss,
    hardest,
    info_nce,
    pair_classification_loss,
    triplet_loss,
)
from facevoice.training.association.model import AssociationModel, load_face_backbone, load_voice_backbone
from facevoice.training.association.pretrain import provenance
from facevoice.training.association.protocol import matching_cell
from facevoice.training.runs import (
    RunInfo,
    RunLog,
    configure_cuda,
    finish_distributed,
    pick_device,
    read_metrics,
    restore,
    save_checkpoint,
)

DIRECTIONS = ("v2f", "f2v", "both")
CSV_FIELDS = ("step", "loss", "lr_head", "lr_face_backbone", "lr_voice_backbone", "triplets_per_s", "hard", "val_v2f",
              "val_f2v")


@dataclass(frozen=True)
class TrainAssociationOptions:
    corpus: Path
    out: Path  # the run directory
    config: str = "small"  # small | paper | a TOML file
    set: Sequence[str] = ()  # SECTION.KEY=VALUE overrides, e.g. train.iterations=500
    direction: str = "v2f"  # v2f | f2v | both
    seed: int = 0
    resume: bool = False  # continue from OUT/checkpoints/last.pt
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0: all cores)
    workers: int = 2  # processes that decode the corpus once
    cache_dir: Path | None = None  # decoded arrays (default OUT/cache)
    face_weights: Path | None = None  # VGG16 / VGG-Face conv weights (state dict)
    voice_weights: Path | None = None  # SoundNet conv1..conv6 weights (state dict)
    no_progress: bool = False


@dataclass(frozen=True)
class TrainAssociationResult:
    """What one rank of a run did; only rank 0 writes, and only its summary says anything."""

    out: Path
    direction: str
    steps: int  # iterations done (the schedule's, also after --resume)
    best: float | None  # best validation score; None: no validation split, best.pt is the last model
    best_step: int
    last_val: dict[str, float] = field(default_factory=dict)  # the last validation's 1:2 accuracies
    throughput: float | None = None  # median triplets/s over the logged windows (None: none logged)
    windows: int = 0  # logged windows the throughput is the median of
    rank: int = 0
    world_size: int = 1

    def summary(self) -> str:
        if self.rank != 0:
            return ""
        return "\n".join([
            f"association model ({self.direction}) trained {self.steps} iterations -> {self.out}",
            f"  no validation split: the whole schedule ran and best.pt is the last model (step {self.best_step}; "
            "sec. 4.3 describes no model selection)" if self.best is None else
            f"  best validation 1:2 accuracy {self.best:.3f} at step {self.best_step} (saved as best.pt); "
            f"last {', '.join(f'{k} {v:.3f}' for k, v in self.last_val.items())}",
            f"  throughput {self.throughput:.1f} triplets/s (median of {self.windows} windows)"
            if self.throughput is not None else "",
            f"  metrics.csv, tensorboard/, training.png; next: facevoice eval association --run {self.out}",
        ])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--config", default=TrainAssociationOptions.config, help="small | paper | a TOML file")
    p.add_argument("--set", action="append", default=list(TrainAssociationOptions.set), metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. train.iterations=500")
    p.add_argument("--direction", choices=DIRECTIONS, default=TrainAssociationOptions.direction)
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--seed", type=int, default=TrainAssociationOptions.seed)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--device", default=TrainAssociationOptions.device, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=TrainAssociationOptions.threads,
                   help="torch CPU threads (0: all cores)")
    p.add_argument("--workers", type=int, default=TrainAssociationOptions.workers,
                   help="processes that decode the corpus once")
    p.add_argument("--cache-dir", type=Path, help="decoded arrays (default OUT/cache)")
    p.add_argument("--face-weights", type=Path, help="VGG16 / VGG-Face conv weights (state dict)")
    p.add_argument("--voice-weights", type=Path, help="SoundNet conv1..conv6 weights (state dict)")
    p.add_argument("--no-progress", action="store_true")


class TripletNet(nn.Module):
    """Wraps the two encoders so one forward gives every tuple's loss (and DDP sees one call):
    eq. (1), or Table 7's baselines: train.loss = "contrastive" (the Siamese net) or "classifier",
    or "infonce" over a batch of distinct people (`TupleSampler.draw_people`)."""

    def __init__(self, model: AssociationModel, loss: str = "triplet", margin: float = 1.0,
                 direction: str = "v2f", temperature: float = 1.0):
        super().__init__()
        self.model, self.loss, self.margin = model, loss, margin
        self.direction, self.temperature = direction, temperature

    def forward(self, batch: Batch) -> torch.Tensor:
        if self.loss == "classifier":
            return self._classification(batch)
        f, v = self.model(batch.faces, batch.voices)
        if self.loss == "infonce":
            return info_nce(v.float(), f.float(), self.direction, self.temperature)
        e = torch.cat([f, v]).float()
        a, p, n = e[batch.anchor], e[batch.positive], e[batch.negative]
        return triplet_loss(a, p, n) if self.loss == "triplet" else contrastive_loss(a, p, n, self.margin)

    def _classification(self, batch: Batch) -> torch.Tensor:
        """Each tuple's (anchor, positive) and (anchor, negative) pairs through the classifier, on
        the pooled features; a pair's face is whichever of its two rows indexes a face."""
        f = self.model.pooled("face", batch.faces).float()
        v = self.model.pooled("voice", batch.voices).float()
        nf = len(batch.faces)

        def pair(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            face, voice = torch.where(x < nf, x, y), torch.where(x < nf, y, x) - nf
            return self.model.classifier(f[face], v[voice])

        return pair_classification_loss(pair(batch.anchor, batch.positive), pair(batch.anchor, batch.negative))


def build_optimizer(model: AssociationModel, cfg: AssociationConfig, loaded: set[str]) -> torch.optim.Adam:
    """Sec. 4.3: Adam(0.9, 0.999); FC layers at lr_head; each backbone in a group of its own, at
    lr_backbone when its own weights were loaded (`loaded` holds "face" / "voice"), at
    lr_backbone_scratch when it trains from scratch (our deviation; 1e-3, the head rate)."""
    t = cfg.train
    return torch.optim.Adam([
        {"params": model.head_parameters(), "lr": t.lr_head},
        *({"params": model.backbone_parameters(m), "lr": t.lr_backbone if m in loaded else t.lr_backbone_scratch}
          for m in ("face", "voice")),
    ], betas=(0.9, 0.999))


def lr_factor(step: int, cfg: AssociationConfig) -> float:
    """Sec. 4.3: x0.1 every 80k iterations (lr_decay every lr_decay_every)."""
    return cfg.train.lr_decay ** (step // cfg.train.lr_decay_every)


def validate(model: AssociationModel, val: SplitData, cfg: AssociationConfig, device) -> dict[str, float]:
    """1:2 accuracy without demographic control on the validation identities (model selection),
    by the same protocol code as the evaluation."""
    emb = split_embeddings(model, cfg, val, device)
    return {f"val_{d}": matching_cell(emb, val, d, "-", cfg.train.val_trials, seed=1)["accuracy"]
            for d in ("v2f", "f2v")}


def selection_score(val: dict[str, float], direction: str) -> float:
    if direction == "both":
        return (val["val_v2f"] + val["val_f2v"]) / 2
    return val[f"val_{direction}"]


def train_association(opts: TrainAssociationOptions) -> TrainAssociationResult:
    """`train association`: the whole run on this process. Under torchrun every rank calls it (one
    process group of WORLD_SIZE); rank 0 alone validates, writes the run directory and says what
    was done in its result's summary."""
    if opts.direction not in DIRECTIONS:
        raise UsageError(f"direction must be one of {', '.join(DIRECTIONS)}, not {opts.direction!r}")
    cfg = load_config(opts.config, list(opts.set))  # a config that cannot work stops here, before any file
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(opts.device, local_rank)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    configure_cuda(device)
    main = rank == 0
    out: Path = opts.out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed + rank)
    progress = main and not opts.no_progress

    cache = opts.cache_dir or out / "cache"
    # an item the service's front end refuses (a face its guard does not find) is left out, as
    # `index build` leaves it out; run.json lists them
    train = first_identities(load_split(opts.corpus, "train", cfg, cache, opts.workers, progress, skip_refused=True),
                             cfg.train.identities)
    # Kim's own split (sec. 4.2) has no validation identities: then the whole schedule runs and
    # the last model is kept, as sec. 4.3 describes no model selection
    selecting = has_items(opts.corpus, "val", ("face", "voice"))
    val = (load_split(opts.corpus, "val", cfg, cache, opts.workers, progress, skip_refused=True)
           if main and selecting else None)

    model = AssociationModel(cfg)
    loaded = set()
    if opts.face_weights:
        load_face_backbone(model.face_encoder, opts.face_weights)
        loaded.add("face")
    if opts.voice_weights:
        load_voice_backbone(model.voice_encoder, opts.voice_weights)
        loaded.add("voice")
    model.to(device)
    if device.type == "cuda":
        model.face_encoder.to(memory_format=torch.channels_last)
    net: nn.Module = TripletNet(model, cfg.train.loss, cfg.train.margin, opts.direction, cfg.train.temperature)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, cfg, loaded)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    sampler = TupleSampler(train, cfg, opts.direction, seed=opts.seed * 1000 + rank)

    step, best, best_step = 0, -1.0, 0
    last = out / "checkpoints" / "last.pt"
    if opts.resume:
        step, best, best_step = restore(last, device, model, optimizer, sampler.rng, rank)
    if main:
        RunInfo(config=cfg.to_dict(), corpus=str(opts.corpus.resolve()), seed=opts.seed, device=str(device),
                world_size=world, train_identities=len(train.identities), details={
                    "direction": opts.direction, "pretrained": bool(loaded), "pretrained_backbones": sorted(loaded),
                    "model_selection": "validation" if selecting else "last",
                    "backbones": {m: {"path": str(w), "trained_on": provenance(w)}
                                  for m, w in (("face", opts.face_weights), ("voice", opts.voice_weights)) if w},
                    "refused": {"train": train.refused, "val": val.refused if val is not None else {}}}).write(out)
    log = RunLog(out, opts.resume, CSV_FIELDS) if main else None

    t = cfg.train
    amp = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    bar = tqdm(total=t.iterations, initial=step, desc=f"train {opts.direction}", unit="it",
               disable=not progress, dynamic_ncols=True)
    window_start, window_tuples, losses = time.perf_counter(), 0, []
    val_scores: dict[str, float] = {}
    net.train()
    people = t.loss == "infonce"  # a batch of distinct people; its softmax weighs the hard negatives itself
    while step < t.iterations:
        late = step >= t.hard_after
        hard = late and not people
        if t.negatives == "curriculum":
            sampler.restrict(late)
        for g, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            g["lr"] = lr * lr_factor(step, cfg)
        batch = (sampler.draw_people(t.batch) if people else
                 sampler.draw(t.batch * (t.hard_pool if hard else 1))).to(device)
        if device.type == "cuda":
            batch.faces = batch.faces.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            per_tuple = net(batch)
        loss = per_tuple[hardest(per_tuple.detach(), t.batch)].mean() if hard else per_tuple.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        losses.append(loss.item())
        window_tuples += t.batch * world
        bar.update()
        if main and (step % t.eval_every == 0 or step == t.iterations):
            if device.type == "cuda":
                torch.cuda.synchronize()
            rate = window_tuples / (time.perf_counter() - window_start)
            if selecting:
                val_scores = validate(model, val, cfg, device)
                score = selection_score(val_scores, opts.direction)
                if score > best:
                    best, best_step = score, step
                    save_checkpoint(out / "best.pt", model=model.state_dict(), config=cfg.to_dict(),
                                    direction=opts.direction, step=step, val=val_scores)
            elif step == t.iterations:  # no validation split: the last model is the one kept
                best_step = step
                save_checkpoint(out / "best.pt", model=model.state_dict(), config=cfg.to_dict(),
                                direction=opts.direction, step=step, val={})
            log.write({"step": step, "loss": float(np.mean(losses)), "lr_head": optimizer.param_groups[0]["lr"],
                       "lr_face_backbone": optimizer.param_groups[1]["lr"],
                       "lr_voice_backbone": optimizer.param_groups[2]["lr"], "triplets_per_s": rate,
                       "hard": int(hard), **val_scores})
            bar.set_postfix(loss=f"{np.mean(losses):.4f}", best=f"{best:.3f}", tps=f"{rate:.0f}", **(
                {"val": f"{score:.3f}"} if selecting else {}))
            losses, window_tuples = [], 0
            net.train()
            window_start = time.perf_counter()
        if main and (step % t.checkpoint_every == 0 or step == t.iterations):
            rngs = [sampler.rng.bit_generator.state]
            save_checkpoint(last, model=model.state_dict(), optimizer=optimizer.state_dict(), step=step,
                            best=best, best_step=best_step, sampler_rng=rngs, torch_rng=torch.get_rng_state(),
                            config=cfg.to_dict(), direction=opts.direction)
    bar.close()
    rates: list[float] = []
    if main:
        log.close()
        from facevoice.training.association.plots import training_curves
        training_curves(out / "metrics.csv", out / "training.png")
        # every logged window, those before a --resume too
        rates = [float(r["triplets_per_s"]) for r in read_metrics(out / "metrics.csv") if r["triplets_per_s"]]
    if world > 1:
        finish_distributed()
    return TrainAssociationResult(out, opts.direction, step, best if selecting else None, best_step, val_scores,
                                  float(np.median(rates)) if rates else None, len(rates), rank, world)


def run(args: argparse.Namespace) -> int:
    print(train_association(options(TrainAssociationOptions, args)).summary())
    return 0
