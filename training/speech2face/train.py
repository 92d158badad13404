"""`facevoice train s2f`: the Speech2Face voice encoder (Oh et al. 2019 sec. 3). The face network
and the face decoder are pretrained and fixed; the voice encoder (Table 1) regresses the face
feature v_f of a face of the same person from a spectrogram, with eq. (1). One loop for CPU, CUDA
(bf16 autocast) and torchrun DDP, with resume, metrics.csv, TensorBoard and a progress bar.

Read top to bottom: config, frozen networks, data (v_f of every face computed once), loop,
validation (eq. (1) loss and feature angle on held-out people), checkpoint."""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from facevoice.cli import options
from facevoice.training.association.data import has_items
from facevoice.training.association.pretrain import attribute_loss, attribute_targets
from facevoice.training.runs import RunLog, finish_distributed, read_metrics, restore, save_checkpoint
from facevoice.training.speech2face.checkpoints import load_decoder, load_face_net
from facevoice.training.speech2face.config import SELECT, S2FConfig
from facevoice.training.speech2face.data import S2FSplit, load_s2f_split, rows_tensor
from facevoice.training.speech2face.features import (
    S2FOptions,
    add_common,
    config_with,
    face_features,
    setup,
    write_run_json,
)
from facevoice.training.speech2face.loss import ranking, s2f_loss, s2f_terms
from facevoice.training.speech2face.model import FaceDecoder, FaceNet, VoiceEncoder

LOSSES = ("loss", "decoder_l1", "feature_l2", "distill", "attributes", "ranking")  # logged per window
FIELDS = ("step", *LOSSES, "lr", "pairs_per_s", "val_loss", "val_angle_deg", "val_match")


@dataclass(frozen=True, kw_only=True)
class TrainS2FOptions(S2FOptions):
    face_net: Path  # face_net.pt from `train face-features`
    decoder: Path  # decoder.pt from `train face-decoder`
    resume: bool = False  # continue from OUT/checkpoints/last.pt


@dataclass(frozen=True)
class TrainS2FResult:
    """What one rank did; only rank 0 writes the run, validates and has a summary."""

    out: Path
    steps: int  # iterations trained, in all
    best: float  # the score that selected best.pt (train.select)
    best_step: int
    last_val: dict[str, float] = field(default_factory=dict)  # the last validation's scores
    key: str = "val_loss"  # what selects best.pt (SELECT): a val_* score, or "step" for the last model
    held_out: bool = True  # the corpus has validation identities
    pairs_per_s: float | None = None  # median over the logged windows
    windows: int = 0
    rank: int = 0
    world_size: int = 1

    def summary(self) -> str:
        if self.rank != 0:
            return ""
        return "\n".join([
            f"Speech2Face voice encoder trained {self.steps} iterations -> {self.out}",
            (f"  no validation split: best.pt is the last model (step {self.best_step})" if not self.held_out else
             f"  best.pt is the model at step {self.best_step} (train.select=last); last " if self.key == "step" else
             f"  best {self.key} {self.best:.4f} at step {self.best_step} (best.pt); last ")
            + ", ".join(f"{k} {v:.3f}" for k, v in self.last_val.items()),
            f"  throughput {self.pairs_per_s:.1f} pairs/s (median of {self.windows} windows)"
            if self.pairs_per_s is not None else "",
            f"  metrics.csv, tensorboard/, training.png; next: facevoice eval s2f --run {self.out}",
        ])


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--face-net", type=Path, required=True, help="face_net.pt from `train face-features`")
    p.add_argument("--decoder", type=Path, required=True, help="decoder.pt from `train face-decoder`")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")


class PairSampler:
    """Random (voice clip, face of the same person) pairs. The paper pairs a clip with a frame of
    its own video (sec. 3): where the manifest records videos, a face of the clip's video is
    drawn when the person has one; otherwise any photo of the speaker."""

    def __init__(self, split: S2FSplit, seed: int, within_video: bool = True):
        self.split, self.within_video = split, within_video
        self.rng = np.random.default_rng(seed)
        self.faces_of = [split.items_of("face", i) for i in range(len(split.identities))]

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        voices = self.rng.integers(len(self.split.voice.identity), size=n)
        faces = np.array([self._face(int(v)) for v in voices])
        return voices, faces

    def _face(self, clip: int) -> int:
        rows = self.faces_of[self.split.voice.identity[clip]]
        clips, photos = self.split.voice.video, self.split.face.video
        if self.within_video and clips is not None and photos is not None and clips[clip]:
            same = rows[photos[rows] == clips[clip]]
            if len(same):
                rows = same
        return int(self.rng.choice(rows))


class VoiceAugment:
    """Training-time voice windows and gains (S2FTrainConfig.crop_from, gain_db); identity when off."""

    def __init__(self, cfg: S2FConfig, frames: int, rng: np.random.Generator):
        self.frames, self.rng = frames, rng
        self.gain_db, self.power = cfg.train.gain_db, cfg.voice.frontend().power

    def __call__(self, spec: torch.Tensor) -> torch.Tensor:
        """[B, 2, T_cached, F] -> [B, 2, frames, F]."""
        if spec.shape[2] > self.frames:
            starts = self.rng.integers(0, spec.shape[2] - self.frames + 1, size=len(spec))
            spec = torch.stack([s[:, o:o + self.frames] for s, o in zip(spec, starts, strict=True)])
        if self.gain_db:
            gain = 10 ** (self.rng.uniform(-self.gain_db, self.gain_db, size=(len(spec), 1, 1, 1)) / 20)
            spec = spec * torch.from_numpy((gain ** self.power).astype(np.float32))
        return spec


def lr_factor(step: int, cfg: S2FConfig) -> float:
    """Sec. 3: lr x0.95 every 10,000 iterations (exponential decay, staircase)."""
    return cfg.train.lr_decay ** (step // cfg.train.lr_decay_every)


@torch.no_grad()
def voice_features(encoder: VoiceEncoder, data: np.ndarray, device: torch.device, batch: int = 32) -> torch.Tensor:
    """v_s of every spectrogram row, eval mode, float32 on the CPU."""
    was = encoder.training
    encoder.eval()
    out = [encoder(rows_tensor(data, range(i, min(i + batch, len(data)))).to(device)).float().cpu()
           for i in range(0, len(data), batch)]
    encoder.train(was)
    return torch.cat(out)


@torch.no_grad()
def validate(encoder: VoiceEncoder, val: S2FSplit, val_vf: torch.Tensor, net: FaceNet, decoder: FaceDecoder,
             cfg: S2FConfig, device) -> dict[str, float]:
    """Eq. (1) over every (val clip, val face of the same person) pair, and the mean angle between
    v_s and the person's mean v_f."""
    v_s = voice_features(encoder, val.voice.data, device)
    pairs = [(c, f) for c, i in enumerate(val.voice.identity) for f in val.items_of("face", i)]
    c, f = map(np.array, zip(*pairs, strict=True))
    terms = s2f_terms(val_vf[f].to(device), v_s[c].to(device), decoder.first_layer, net.logits, cfg.train.temperature)
    loss = s2f_loss(terms, cfg.train.lambda1, cfg.train.lambda2).mean().item()
    means = val.face_means(val_vf)
    cos = nn.functional.cosine_similarity(v_s, means[val.voice.identity], dim=1).clamp(-1, 1)
    return {"val_loss": loss, "val_angle_deg": float(torch.rad2deg(torch.acos(cos)).mean()),
            "val_match": match_score(v_s, means, torch.as_tensor(val.voice.identity))}


def match_score(v_s: torch.Tensor, means: torch.Tensor, identity: torch.Tensor) -> float:
    """Mean over clips of the share of other people whose mean v_f is less cosine-similar to v_s
    than the clip's own person's: 0.5 at chance, 1 when every clip ranks its speaker first."""
    sim = nn.functional.normalize(v_s, dim=1) @ nn.functional.normalize(means, dim=1).T
    own = sim[torch.arange(len(sim)), identity]
    return float(((sim < own[:, None]).sum(1).float() / (sim.shape[1] - 1)).mean())


def train_s2f(opts: TrainS2FOptions) -> TrainS2FResult:
    """`train s2f`: the voice encoder against the fixed face network and decoder, eq. (1). Runs on every
    rank under torchrun (WORLD_SIZE, RANK, LOCAL_RANK); rank 0 validates and writes the run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    flags, device, cache = setup(opts, local_rank)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(opts.seed + rank)
    main = rank == 0
    progress = main and not opts.no_progress
    net, face_cfg = load_face_net(opts.face_net, device)
    decoder, dec_cfg = load_decoder(opts.decoder, face_cfg, device)
    cfg = config_with(flags, dec_cfg, ("face", "decoder"))
    t = cfg.train

    crop = t.crop_from if t.crop_from > cfg.voice.seconds else None  # longer training clips to crop from
    train = load_s2f_split(opts.corpus, "train", cfg, cache, opts.workers, progress, seconds=crop)
    # Kim et al.'s split has no validation identities: then best.pt is the last model
    held_out = has_items(opts.corpus, "val", ("face", "voice"))
    val = load_s2f_split(opts.corpus, "val", cfg, cache, opts.workers, progress) if main and held_out else None
    train_vf = face_features(net, train.face.data, device)
    means = train.face_means(train_vf)
    if cfg.train.target == "mean":  # every photo's target becomes its person's mean feature
        train_vf = means[torch.as_tensor(train.face.identity)]
    val_vf = face_features(net, val.face.data, device) if val is not None else None

    encoder = VoiceEncoder(cfg.voice, cfg.face.fc, train.voice.data.shape[-1]).to(device)
    model: nn.Module = encoder
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(encoder, device_ids=ids)
    targets = attribute_targets(train, list(t.attributes))
    heads = nn.ModuleDict({a: nn.Linear(cfg.face.fc, int(y.max()) + 1) for a, y in targets.items()}).to(device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *heads.parameters()], t.lr, betas=(t.beta1, 0.999),
                                 eps=t.eps)
    sampler = PairSampler(train, seed=opts.seed * 1000 + rank, within_video=cfg.train.pair_within_video)
    augment = VoiceAugment(cfg, cfg.voice.frontend().shape[1], sampler.rng)

    key, sign = SELECT[t.select if held_out else "last"]  # best.pt: the highest sign * validation score
    step, best, best_step = 0, -math.inf, 0
    last = opts.out / "checkpoints" / "last.pt"
    if opts.resume:
        step, best, best_step = restore(last, device, encoder, optimizer, sampler.rng, rank, {"heads": heads})
    if main:
        write_run_json(opts, cfg, device, face_net=str(opts.face_net), decoder=str(opts.decoder), world_size=world,
                       train_identities=len(train.identities))
    log = RunLog(opts.out, opts.resume, FIELDS) if main else None

    amp = device.type == "cuda"
    bar = tqdm(total=t.iterations, initial=step, desc="train s2f", unit="it", disable=not progress,
               dynamic_ncols=True)
    hist: dict[str, list[float]] = {k: [] for k in LOSSES}
    window_start, window_pairs, val_scores = time.perf_counter(), 0, {}
    encoder.train()
    while step < t.iterations:
        for g in optimizer.param_groups:
            g["lr"] = t.lr * lr_factor(step, cfg)
        voices, faces = sampler.draw(t.batch)
        spec = augment(rows_tensor(train.voice.data, voices)).to(device)
        v_f = train_vf[faces].to(device)
        with torch.autocast("cuda", torch.bfloat16, enabled=amp):
            v_s = model(spec)
        terms = s2f_terms(v_f, v_s.float(), decoder.first_layer, net.logits, t.temperature)
        loss = s2f_loss(terms, t.lambda1, t.lambda2).mean()
        if heads:
            terms["attributes"] = attribute_loss(heads, targets, v_s.float(), train.voice.identity[voices]).reshape(1)
            loss = loss + t.attribute_weight * terms["attributes"].mean()
        if t.ranking_weight:
            person = torch.from_numpy(train.voice.identity[voices]).to(device)
            terms["ranking"] = ranking(v_s.float(), means.to(device), person, t.ranking_temperature)
            loss = loss + t.ranking_weight * terms["ranking"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1 and heads:  # DDP syncs the encoder's gradients; the heads sit outside it
            for p in heads.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
        optimizer.step()
        step += 1
        hist["loss"].append(loss.item())
        for k, v in terms.items():
            hist[k].append(v.mean().item())
        window_pairs += t.batch * world
        bar.update()
        if main and (step % t.eval_every == 0 or step == t.iterations):
            if amp:
                torch.cuda.synchronize()
            rate = window_pairs / (time.perf_counter() - window_start)
            if held_out:
                val_scores = validate(encoder, val, val_vf, net, decoder, cfg, device)
            score = sign * {**val_scores, "step": step}[key]
            if score > best:
                best, best_step = score, step
                save_checkpoint(opts.out / "best.pt", model=encoder.state_dict(), config=cfg.to_dict(), step=step,
                                val=val_scores, face_net=str(opts.face_net), decoder=str(opts.decoder))
            log.write({"step": step, **{k: float(np.mean(v)) if v else 0.0 for k, v in hist.items()},
                       "lr": optimizer.param_groups[0]["lr"], "pairs_per_s": rate, **val_scores})
            bar.set_postfix(loss=f"{np.mean(hist['loss']):.3f}", pps=f"{rate:.0f}", **(
                {"val": f"{val_scores['val_loss']:.3f}", "angle": f"{val_scores['val_angle_deg']:.1f}"}
                if held_out else {}))
            hist = {k: [] for k in hist}
            window_pairs, window_start = 0, time.perf_counter()
        if main and (step % t.checkpoint_every == 0 or step == t.iterations):
            save_checkpoint(last, model=encoder.state_dict(), optimizer=optimizer.state_dict(), step=step, best=best,
                            best_step=best_step, sampler_rng=[sampler.rng.bit_generator.state],
                            torch_rng=torch.get_rng_state(), heads=heads.state_dict(), config=cfg.to_dict(),
                            face_net=str(opts.face_net),
                            decoder=str(opts.decoder))  # `eval s2f --checkpoint checkpoints/last.pt` works too
    bar.close()
    rates = []
    if main:
        log.close()
        from facevoice.training.speech2face.plots import training_curves
        training_curves(opts.out / "metrics.csv", opts.out / "training.png", "Speech2Face voice encoder")
        rates = [float(r["pairs_per_s"]) for r in read_metrics(opts.out / "metrics.csv") if r["pairs_per_s"]]
    if world > 1:
        finish_distributed()
    return TrainS2FResult(opts.out, step, sign * best, best_step, val_scores, key, held_out,
                          float(np.median(rates)) if rates else None, len(rates), rank, world)


def run(args: argparse.Namespace) -> int:
    print(train_s2f(options(TrainS2FOptions, args)).summary())
    return 0
