"""Training throughput of the association model (triplets/s), on synthetic inputs so it measures
compute alone. Baseline: the small config at batch 16 with one torch thread, same run.

    python -m bench.association_train [--config small] [--steps 20]

On a GPU host the same command measures the paper config in bf16 (see docs/association.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.report import machine, publish, ratio_table
from facevoice.training.association.config import load_config
from facevoice.training.association.data import Batch
from facevoice.training.association.loss import hardest
from facevoice.training.association.model import AssociationModel
from facevoice.training.association.train import TripletNet


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="small")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(args.config)
    cores = torch.get_num_threads()
    rows = [("batch 16, 1 thread (baseline)", 16, 1, False, None),
            (f"batch 16, {cores} threads", 16, cores, False, None),
            (f"batch 32, {cores} threads", 32, cores, False, None),
            (f"batch 16, {cores} threads, hard negatives (32 drawn)", 16, cores, True, None)]
    if device.type == "cpu":  # train.precision = "bf16" on a CPU (issue 30): fp32 beside it, same run
        rows += [(f"batch 32, {cores} threads, bf16 autocast", 32, cores, False, True)]
    results = [(name, triplets_per_s(cfg, b, t, h, args.steps, device, bf16)) for name, b, t, h, bf16 in rows]
    body = f"""## Association model training throughput (`{args.config}` config, {device.type})

Command: `python -m bench.association_train --config {args.config}` on {machine()}.
Synthetic inputs of the config's shapes (face {cfg.face.size}px, voice {cfg.voice.seconds:g} s); one
optimiser step per measurement, median of {args.steps}; triplets/s counts back-propagated tuples.
The paper's budget: 240k iterations x batch 8 in under a day on a Titan X, about 22 triplets/s.

{ratio_table(results, "triplets/s")}"""
    publish(f"association-train-{args.config}-{device.type}", body)


if __name__ == "__main__":
    main()
