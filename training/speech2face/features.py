"""`facevoice train face-features`: the face feature network, our stand-in for the pretrained
VGG-Face that Oh et al. 2019 sec. 3 take fc7 features from. Trained with a softmax over the
training identities (as VGG-Face was, on other people); the `face.attributes` heads are our
documented deviation (docs/speech2face.md). Writes OUT/face_net.pt, metrics.csv, training.png."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from facevoice.cli import options
from facevoice.training.association.augment import augment_faces
from facevoice.training.association.data import has_items
from facevoice.training.association.pretrain import attribute_loss, attribute_targets
from facevoice.training.runs import RunInfo, RunLog, configure_cuda, pick_device, save_checkpoint
from facevoice.training.speech2face.checkpoints import VGGFACE_IDENTITIES, vggface_state
from facevoice.training.speech2face.config import S2FConfig, from_dict, load_config
from facevoice.training.speech2face.data import S2FSplit, load_s2f_split, rows_tensor
from facevoice.training.speech2face.model import FaceNet

FIELDS = ("step", "loss", "identity_acc", "val_gender_acc")


@dataclass(frozen=True, kw_only=True)
class S2FOptions:
    """What every Speech2Face training command takes (`add_common`)."""

    corpus: Path
    out: Path  # the run directory
    config: str = "small"  # small | paper | a TOML file
    set: tuple[str, ...] = ()  # SECTION.KEY=VALUE overrides of the config
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0: all cores)
    workers: int = 2  # processes that decode the corpus once
    cache_dir: Path | None = None  # decoded arrays (default OUT/cache)
    no_progress: bool = False

    def __post_init__(self):
        object.__setattr__(self, "set", tuple(self.set))  # argparse's `append` gives a list


@dataclass(frozen=True, kw_only=True)
class TrainFaceFeaturesOptions(S2FOptions):
    vggface: Path | None = None  # published VGG-Face weights to use instead of training a network


@dataclass(frozen=True)
class TrainFaceFeaturesResult:
    face_net: Path  # OUT/face_net.pt
    config: str  # the config's name
    steps: int = 0  # 0: taken from published VGG-Face weights, not trained
    seconds: float = 0.0
    train_identities: int = 0
    held_out: bool = False  # the corpus has validation identities
    val_gender_acc: float | None = None  # the gender head on them (None without one)
    vggface: Path | None = None  # the published weights it was made from
    channels: str = "RGB"  # the input convention the config records
    mean: tuple[float, ...] = ()  # per channel, on 0-1 pixels

    def summary(self) -> str:
        if self.vggface is not None:
            return "\n".join([
                f"face feature network from VGG-Face weights {self.vggface} -> {self.face_net} (not trained further)",
                f"  input convention: {self.channels}, mean {tuple(round(255 * m, 4) for m in self.mean)} "
                "on 0-255 pixels, recorded in the run and exported with the model",
                f"  next: facevoice train face-decoder --face-net {self.face_net} ..."])
        return "\n".join([
            f"face feature network ({self.config}): {self.steps} steps in {self.seconds:.0f} s on "
            f"{self.train_identities} training identities -> {self.face_net}",
            "  held-out gender from the feature (gender head, val identities): "
            + ("n/a (no validation split)" if not self.held_out else "n/a (no gender head)"
               if self.val_gender_acc is None else f"{100 * self.val_gender_acc:.1f}%"),
            f"  next: facevoice train face-decoder --face-net {self.face_net} ...",
        ])


def add_common(p: argparse.ArgumentParser) -> None:
    """Arguments every Speech2Face command shares (S2FOptions)."""
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--config", default=S2FOptions.config, help="small | paper | a TOML file")
    p.add_argument("--set", action="append", default=list(S2FOptions.set), metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. train.iterations=500")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--seed", type=int, default=S2FOptions.seed)
    p.add_argument("--device", default=S2FOptions.device, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=S2FOptions.threads, help="torch CPU threads (0: all cores)")
    p.add_argument("--workers", type=int, default=S2FOptions.workers, help="processes that decode the corpus once")
    p.add_argument("--cache-dir", type=Path, help="decoded arrays (default OUT/cache)")
    p.add_argument("--no-progress", action="store_true")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--vggface", type=Path, help="published VGG-Face weights (PyTorch conversion): use them as "
                   "the face network instead of training one (Oh et al. sec. 3)")


def setup(opts: S2FOptions, local_rank: int = 0) -> tuple[S2FConfig, torch.device, Path]:
    """(the config of --config and --set, the device, the cache directory); makes OUT and seeds torch."""
    device = pick_device(opts.device, local_rank)
    configure_cuda(device)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    cfg = load_config(opts.config, opts.set)
    opts.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)
    return cfg, device, opts.cache_dir or opts.out / "cache"


def config_with(cfg: S2FConfig, trained: S2FConfig, sections: tuple[str, ...]) -> S2FConfig:
    """The command's config (--config, --set) with `sections` taken from a trained network's
    config: a network is used with the shapes it was trained with, whatever the flags say."""
    return from_dict({**cfg.to_dict(), **{s: trained.to_dict()[s] for s in sections}})


def write_run_json(opts: S2FOptions, cfg: S2FConfig, device: torch.device, world_size: int = 1,
                   train_identities: int = 0, **details) -> None:
    RunInfo(config=cfg.to_dict(), corpus=str(Path(opts.corpus).resolve()), seed=opts.seed, device=str(device),
            world_size=world_size, train_identities=train_identities, details=details).write(opts.out)


@torch.no_grad()
def face_features(net: FaceNet, data: np.ndarray, device: torch.device, batch: int = 128) -> torch.Tensor:
    """v_f of every row of `data` (normalised faces), eval mode, on the CPU as float32."""
    was = net.training
    net.eval()
    out = [net.features(rows_tensor(data, range(i, min(i + batch, len(data)))).to(device)).float().cpu()
           for i in range(0, len(data), batch)]
    net.train(was)
    return torch.cat(out) if out else torch.zeros(0, net.fc7.out_features)


def gender_accuracy(net: FaceNet, head: nn.Module, split: S2FSplit, classes: list[str], device) -> float:
    """The gender head (over the training split's `classes`) on held-out identities: how much of
    gender the feature carries."""
    labels = np.array([a["gender"] for a in split.attributes])[split.face.identity]
    with torch.no_grad():
        pred = head(face_features(net, split.face.data, device).to(device)).argmax(1).cpu().numpy()
    return float((np.array(classes)[pred] == labels).mean())


def from_vggface(opts: TrainFaceFeaturesOptions, cfg: S2FConfig) -> TrainFaceFeaturesResult:
    """face_net.pt from published VGG-Face weights, trained no further: what Oh et al. use. Its
    config records VGG-Face's input convention (BGR, 0-255, mean-subtracted), which the decoder,
    the voice encoder, export and the service then apply."""
    cfg = from_dict({**cfg.to_dict(), "face": {**cfg.to_dict()["face"], "input": "vggface"}})
    state = vggface_state(opts.vggface, cfg)
    path = opts.out / "face_net.pt"
    save_checkpoint(path, model=state, config=cfg.to_dict(), identities=[f"vggface-{k:04d}" for k in
                                                                           range(VGGFACE_IDENTITIES)])
    write_run_json(opts, cfg, torch.device("cpu"), vggface=str(opts.vggface))
    f = cfg.face.frontend()
    return TrainFaceFeaturesResult(path, cfg.name, vggface=opts.vggface, channels=f.channels, mean=tuple(f.mean))


def train_face_features(opts: TrainFaceFeaturesOptions) -> TrainFaceFeaturesResult:
    """`train face-features`: the face network trained on the corpus's training identities (or
    taken from published VGG-Face weights, `opts.vggface`) -> OUT/face_net.pt."""
    cfg, device, cache = setup(opts)
    if opts.vggface:
        return from_vggface(opts, cfg)
    progress = not opts.no_progress
    f = cfg.face
    train = load_s2f_split(opts.corpus, "train", cfg, cache, opts.workers, progress, modalities=("face",))
    # without validation identities (Kim et al.'s split) nothing is held out to report on
    val = load_s2f_split(opts.corpus, "val", cfg, cache, opts.workers, progress, modalities=("face",)) \
        if has_items(opts.corpus, "val", ("face",)) else None
    rng = np.random.default_rng(opts.seed)
    net = FaceNet(f, len(train.identities)).to(device)
    targets = attribute_targets(train, list(f.attributes))
    heads = nn.ModuleDict({a: nn.Linear(f.fc, int(t.max()) + 1) for a, t in targets.items()}).to(device)
    opt = torch.optim.Adam([*net.parameters(), *heads.parameters()], f.lr)
    write_run_json(opts, cfg, device, train_identities=len(train.identities))
    log = RunLog(opts.out, False, FIELDS)
    labels = train.face.identity
    genders = sorted({a.get("gender", "") for a in train.attributes})  # the gender head's classes, in its order
    losses, correct, val_acc, start = [], [], None, time.perf_counter()
    bar = tqdm(range(1, f.steps + 1), desc="train face-features", disable=not progress, dynamic_ncols=True)
    for step in bar:
        rows = rng.integers(len(labels), size=f.batch)
        x = rows_tensor(train.face.data, rows)
        x = (augment_faces(x, rng) if f.augment else x).to(device)
        y = torch.from_numpy(labels[rows]).long().to(device)
        feature = net.features(x)
        logits = net.logits(feature)
        loss = F.cross_entropy(logits, y) + f.attribute_weight * attribute_loss(heads, targets, feature, labels[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        correct.append((logits.argmax(1) == y).float().mean().item())
        if step % max(1, f.steps // 20) == 0 or step == f.steps:
            if "gender" in heads and val is not None:
                val_acc = gender_accuracy(net, heads["gender"], val, genders, device)
            log.write({"step": step, "loss": float(np.mean(losses)), "identity_acc": float(np.mean(correct)),
                       "val_gender_acc": "" if val_acc is None else val_acc})
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", acc=f"{np.mean(correct):.2f}")
            losses, correct = [], []
    log.close()
    path = opts.out / "face_net.pt"
    save_checkpoint(path, model=net.state_dict(), config=cfg.to_dict(), identities=train.identities)
    from facevoice.training.speech2face.plots import training_curves
    training_curves(opts.out / "metrics.csv", opts.out / "training.png", "face feature network")
    return TrainFaceFeaturesResult(path, cfg.name, f.steps, time.perf_counter() - start, len(train.identities),
                                   val is not None, val_acc)


def run(args: argparse.Namespace) -> int:
    print(train_face_features(options(TrainFaceFeaturesOptions, args)).summary())
    return 0
