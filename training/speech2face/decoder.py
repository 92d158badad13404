"""`facevoice train face-decoder`: the face decoder of Oh et al. 2019 sec. 3 (after Cole et al.
2017), trained apart from the voice encoder and fixed afterwards. Input: the face network's
feature of a training photo; target: that person's canonical face (frontal, neutral, plain
background; the synthetic corpus ships it). Loss: pixel L1 + decoder.feature_weight x the
normalised squared L2 between the face network's feature of the decoded image and the input
feature (Cole et al.'s feature consistency). Writes OUT/decoder.pt, metrics.csv, training.png,
f2f_val.png."""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from facevoice.cli import options
from facevoice.service.errors import CorpusError
from facevoice.training.association.augment import augment_faces
from facevoice.training.association.data import has_items
from facevoice.training.runs import RunLog, save_checkpoint
from facevoice.training.speech2face.checkpoints import load_face_net
from facevoice.training.speech2face.config import S2FConfig
from facevoice.training.speech2face.data import S2FSplit, load_s2f_split, rows_tensor, to_normalised, to_rgb
from facevoice.training.speech2face.features import (
    S2FOptions,
    add_common,
    config_with,
    face_features,
    setup,
    write_run_json,
)
from facevoice.training.speech2face.loss import normalised_l2
from facevoice.training.speech2face.model import FaceDecoder, FaceNet

FIELDS = ("step", "loss", "pixel_l1", "feature_l2", "val_pixel_l1")


@dataclass(frozen=True, kw_only=True)
class TrainFaceDecoderOptions(S2FOptions):
    face_net: Path  # face_net.pt from `train face-features`


@dataclass(frozen=True)
class TrainFaceDecoderResult:
    decoder: Path  # OUT/decoder.pt
    face_net: Path
    config: str  # the config's name
    steps: int
    seconds: float
    val_pixel_l1: float | None  # to the canonical face, RGB in [0, 1]; None without validation identities
    picture: Path  # photo | canonical | F2F of up to 8 people (val identities, else training ones)

    def summary(self) -> str:
        return "\n".join([
            f"face decoder ({self.config}): {self.steps} steps in {self.seconds:.0f} s -> {self.decoder}",
            f"  validation pixel L1 to the canonical face {self.val_pixel_l1:.4f} (RGB in [0, 1])"
            if self.val_pixel_l1 is not None else
            "  no validation split: no held-out L1; the picture shows training identities",
            f"  look: {self.picture}",
            f"  next: facevoice train s2f --face-net {self.face_net} --decoder {self.decoder} ...",
        ])


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--face-net", type=Path, required=True, help="face_net.pt from `train face-features`")


def canonical_targets(split: S2FSplit, rows: np.ndarray, cfg: S2FConfig) -> torch.Tensor:
    """The canonical face (RGB in [0, 1]) of each face row's identity."""
    if split.canonical is None:
        raise CorpusError("the corpus has no canonical_face items: the decoder needs them as targets")
    ids = split.face.identity[rows]
    return to_rgb(torch.from_numpy(np.asarray(split.canonical[ids], dtype=np.float32)), cfg.face.frontend())


def decoder_losses(decoder: FaceDecoder, net: FaceNet, v_f: torch.Tensor, target: torch.Tensor,
                   cfg: S2FConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, pixel L1, feature term), each averaged over the batch."""
    out = decoder(v_f)
    pixel = (out - target).abs().mean()
    feature = normalised_l2(v_f, net.features(to_normalised(out, cfg.face.frontend()))).mean()
    return pixel + cfg.decoder.feature_weight * feature, pixel, feature


@torch.no_grad()
def validation_l1(decoder: FaceDecoder, net: FaceNet, split: S2FSplit, cfg: S2FConfig, device) -> float:
    decoder.eval()
    v_f = face_features(net, split.face.data, device).to(device)
    rows = np.arange(len(v_f))
    l1 = (decoder(v_f).cpu() - canonical_targets(split, rows, cfg)).abs().mean().item()
    decoder.train()
    return l1


def train_face_decoder(opts: TrainFaceDecoderOptions) -> TrainFaceDecoderResult:
    """`train face-decoder`: the decoder from the face network's feature to the canonical face -> OUT/decoder.pt."""
    flags, device, cache = setup(opts)
    net, trained = load_face_net(opts.face_net, device)
    cfg = config_with(flags, trained, ("face",))
    progress = not opts.no_progress
    d = cfg.decoder
    train = load_s2f_split(opts.corpus, "train", cfg, cache, opts.workers, progress, modalities=("face",))
    held_out = has_items(opts.corpus, "val", ("face",))  # Kim et al.'s split has no validation identities
    val = load_s2f_split(opts.corpus, "val", cfg, cache, opts.workers, progress, modalities=("face",)) \
        if held_out else None
    rng = np.random.default_rng(opts.seed)
    decoder = FaceDecoder(d, cfg.face.fc).to(device)
    opt = torch.optim.Adam(decoder.parameters(), d.lr)
    write_run_json(opts, cfg, device, face_net=str(opts.face_net), train_identities=len(train.identities))
    log = RunLog(opts.out, False, FIELDS)
    hist: dict[str, list[float]] = {"loss": [], "pixel_l1": [], "feature_l2": []}
    val_l1, start = float("nan"), time.perf_counter()
    bar = tqdm(range(1, d.steps + 1), desc="train face-decoder", disable=not progress, dynamic_ncols=True)
    for step in bar:
        if d.lr_schedule == "cosine":
            opt.param_groups[0]["lr"] = d.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / d.steps))
        rows = rng.integers(len(train.face.identity), size=d.batch)
        x = rows_tensor(train.face.data, rows)
        x = (augment_faces(x, rng) if cfg.face.augment else x).to(device)
        with torch.no_grad():
            v_f = net.features(x)
        loss, pixel, feature = decoder_losses(decoder, net, v_f, canonical_targets(train, rows, cfg).to(device), cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for k, v in zip(hist, (loss, pixel, feature), strict=True):
            hist[k].append(v.item())
        if step % max(1, d.steps // 20) == 0 or step == d.steps:
            if held_out:
                val_l1 = validation_l1(decoder, net, val, cfg, device)
            log.write({"step": step, **{k: float(np.mean(v)) for k, v in hist.items()},
                       "val_pixel_l1": val_l1 if held_out else ""})
            bar.set_postfix(loss=f"{np.mean(hist['loss']):.3f}", val_l1=f"{val_l1:.3f}")
            hist = {k: [] for k in hist}
    log.close()
    decoder.eval()
    path = opts.out / "decoder.pt"
    save_checkpoint(path, model=decoder.state_dict(), config=cfg.to_dict(), face_net=str(opts.face_net))
    from facevoice.training.speech2face.plots import face_grid, training_curves
    training_curves(opts.out / "metrics.csv", opts.out / "training.png", "face decoder")
    shown = val if held_out else train
    first = [int(np.flatnonzero(shown.face.identity == i)[0]) for i in range(min(8, len(shown.identities)))]
    with torch.no_grad():
        f2f = decoder(face_features(net, shown.face.data[first], device).to(device)).cpu()
    hwc = lambda t: t.permute(0, 2, 3, 1).numpy()  # noqa: E731
    grid = face_grid({"photo": hwc(to_rgb(rows_tensor(shown.face.data, first), cfg.face.frontend())),
                      "canonical": hwc(canonical_targets(shown, np.array(first), cfg)), "F2F": hwc(f2f)},
                     opts.out / ("f2f_val.png" if held_out else "f2f_train.png"))
    return TrainFaceDecoderResult(path, opts.face_net, cfg.name, d.steps, time.perf_counter() - start,
                                  val_l1 if held_out else None, grid)


def run(args: argparse.Namespace) -> int:
    print(train_face_decoder(options(TrainFaceDecoderOptions, args)).summary())
    return 0
