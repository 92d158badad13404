"""Training throughput of the association model (triplets/s), on synthetic inputs so it measures
compute alone. Baseline: the small config at batch 16 with one torch thread, same run.

    python -m bench.association_train [--config small] [--steps 20] [--smoke] [--doc PATH]

On a GPU host the same command measures the paper config in bf16 (see docs/association.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.report import machine, parse, publish, ratio_table
from facevoice.cli import run_script
from facevoice.training.association.config import load_config
from facevoice.training.association.data import Batch
from facevoice.training.association.loss import hardest
from facevoice.training.association.model import AssociationModel
from facevoice.training.association.train import TripletNet

# the config's shapes made tiny (--smoke here, and bench.gpu_check's smoke)
TINY = ["face.size=32", "face.widths=[4, 8, 8, 16, 16]", "voice.seconds=1.0",
        "voice.widths=[4, 8, 8, 16, 16, 16]", "embedding.hidden=16", "embedding.dim=8"]


def synthetic_batch(cfg, n: int, device) -> Batch:
    """n V->F tuples: n voices, 2n faces (what a real batch holds), random content."""
    faces = torch.randn(2 * n, 3, cfg.face.size, cfg.face.size)
    voices = torch.randn(n, cfg.voice.frontend().samples) * 0.1
    rows = torch.arange(n)
    return Batch(faces, voices, 2 * n + rows, rows, n + rows, torch.ones(n, dtype=torch.bool)).to(device)


def triplets_per_s(cfg, batch: int, threads: int, hard: bool, steps: int, device: torch.device,
                   bf16: bool | None = None) -> float:
    """Triplets/s of one optimiser step; bf16 autocast by default on a GPU only."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AssociationModel(cfg).to(device)
    net, amp = TripletNet(model), device.type == "cuda" if bf16 is None else bf16
    if device.type == "cuda":
        model.face_encoder.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    b = synthetic_batch(cfg, batch * (cfg.train.hard_pool if hard else 1), device)
    times = []
    for step in range(steps + 3):
        start = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            per = net(b)
        loss = per[hardest(per.detach(), batch)].mean() if hard else per.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 3:  # warm-up steps excluded
            times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="small")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=16, help="the baseline's batch (the larger rows: twice it)")
    args = parse(p, argv, smoke={"steps": 2, "batch": 4})  # smoke: the config's shapes made tiny too
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(args.config, TINY if args.smoke else [])
    cores, b = torch.get_num_threads(), args.batch
    rows = [(f"batch {b}, 1 thread (baseline)", b, 1, False, None),
            (f"batch {b}, {cores} threads", b, cores, False, None),
            (f"batch {2 * b}, {cores} threads", 2 * b, cores, False, None),
            (f"batch {b}, {cores} threads, hard negatives ({b * cfg.train.hard_pool} drawn)", b, cores, True, None)]
    if device.type == "cpu":  # train.precision = "bf16" on a CPU (issue 30): fp32 beside it, same run
        rows += [(f"batch {2 * b}, {cores} threads, bf16 autocast", 2 * b, cores, False, True)]
    results = [(name, triplets_per_s(cfg, n, t, h, args.steps, device, bf16)) for name, n, t, h, bf16 in rows]
    body = f"""## Association model training throughput (`{args.config}` config, {device.type})

Command: `python -m bench.association_train --config {args.config}` on {machine()}.
Synthetic inputs of the config's shapes (face {cfg.face.size}px, voice {cfg.voice.seconds:g} s); one
optimiser step per measurement, median of {args.steps}; triplets/s counts back-propagated tuples.
The paper's budget: 240k iterations x batch 8 in under a day on a Titan X, about 22 triplets/s.

{ratio_table(results, "triplets/s")}"""
    publish(f"association-train-{args.config}-{device.type}", body, args)
    return 0


if __name__ == "__main__":
    run_script(main, "python -m bench.association_train")
