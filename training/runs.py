"""What every training command shares: device choice, the run's record (run.json), the run log
(CSV + TensorBoard) and atomic checkpoints. The loops themselves stay in their own modules,
readable top to bottom."""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.distributed as dist

from facevoice.service.errors import FormatError
from facevoice.service.records import JsonRecord

RUN_INFO = "run.json"


@dataclass(frozen=True)
class RunInfo(JsonRecord):
    """run.json: what a training run ran with, read and written only here. `details` holds what
    one command records and no reader needs by name (the association's direction and backbones,
    Speech2Face's face network)."""

    FILE: ClassVar[str] = RUN_INFO
    WHAT: ClassVar[str] = "a training run's run.json"

    config: dict
    corpus: str = ""  # absolute: evaluation finds the corpus a run trained on from here
    seed: int = 0
    device: str = "cpu"
    world_size: int = 1
    train_identities: int = 0
    torch: str = torch.__version__
    command: str = field(default_factory=lambda: " ".join(sys.argv))  # the command line as typed
    details: dict = field(default_factory=dict)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` is the local rank's GPU when there is one, else the CPU."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def configure_cuda(device: torch.device) -> None:
    """TF32 matmuls and cuDNN autotuning; a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


class RunLog:
    """metrics.csv and TensorBoard events in the run directory (rank 0 only)."""

    def __init__(self, out: Path, resume: bool, fields: Sequence[str]):
        self.fields = tuple(fields)
        self.path = out / "metrics.csv"
        fresh = not (resume and self.path.exists())
        if not fresh:
            with self.path.open(newline="") as f:
                old = csv.DictReader(f)
                header, rows = tuple(old.fieldnames or ()), list(old)
            if header != self.fields:  # a run logged by an older version: rewrite it under today's columns
                with self.path.open("w", newline="") as f:
                    w = csv.DictWriter(f, self.fields, extrasaction="ignore")
                    w.writeheader()
                    w.writerows({k: r.get(k, "") for k in self.fields} for r in rows)
        self.file = self.path.open("w" if fresh else "a", newline="")
        self.writer = csv.DictWriter(self.file, self.fields)
        if fresh:
            self.writer.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:  # tensorboard is a dependency; a stripped install still trains
            self.tb = None

    def write(self, row: dict) -> None:
        self.writer.writerow({k: row.get(k, "") for k in self.fields})
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and v != "":
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict[str, str]]:
    with Path(path).open() as f:
        return list(csv.DictReader(f))


def load_checkpoint(path: Path, what: str, keys: Sequence[str]) -> dict:
    """A weights-only torch checkpoint that must be a dict with `keys`; anything else is a
    FormatError that names the file and what was expected (truncated, junk, another kind)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file (pickle, struct, zip, OS errors)
        raise FormatError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or not set(keys) <= set(state):
        raise FormatError(f"{path}: not a {what}")
    return state


def save_checkpoint(path: Path, **state) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a crash mid-save never leaves a torn checkpoint


def restore(path: Path, device: torch.device, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            rng, rank: int, extra: dict[str, torch.nn.Module] | None = None) -> tuple[int, float, int]:
    """Load `checkpoints/last.pt` into the model, optimiser, the sampler's numpy `rng` and torch's
    RNG (and each `extra` module from the checkpoint key of its name); returns (step, best,
    best_step). Only rank 0's sampler stream is saved: other ranks start theirs afresh."""
    if not path.exists():
        raise FormatError(f"--resume: no checkpoint at {path}")
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    for key, module in (extra or {}).items():
        if key in state:
            module.load_state_dict(state[key])
        elif any(True for _ in module.parameters()):
            raise FormatError(f"--resume: {path} has no {key!r}: it was trained without them")
    optimizer.load_state_dict(state["optimizer"])
    if rank < len(state["sampler_rng"]):
        rng.bit_generator.state = state["sampler_rng"][rank]
    torch.set_rng_state(state["torch_rng"])
    return state["step"], state["best"], state["best_step"]


def finish_distributed() -> None:
    """End a torchrun process group: wait for every rank (rank 0 still writes plots and the
    summary while the others are done), then destroy it. Without the barrier a rank that tears
    down first can leave gloo's threads of a peer mid-operation, and that peer aborts (SIGABRT,
    "terminate called without an active exception")."""
    dist.barrier()
    dist.destroy_process_group()

