"""Training throughput of the Speech2Face voice encoder (pairs/s), on synthetic spectrograms so it
measures compute alone: one step of `train s2f` (Table 1 encoder forward and backward, eq. (1)
through the frozen decoder's first layer and face network's last layer, Adam). Baseline: the
`small` config at batch 8 with one torch thread, same run.

    python -m bench.s2f_train [--steps 10] [--paper-steps 3] [--smoke] [--doc PATH]

On a GPU host the same command runs the paper config in bf16 autocast, as `train s2f` does.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.report import machine, parse, publish, ratio_table
from facevoice.cli import run_script
from facevoice.training.speech2face.config import load_config
from facevoice.training.speech2face.loss import s2f_loss, s2f_terms
from facevoice.training.speech2face.model import FaceDecoder, FaceNet, VoiceEncoder

PAPER_CLASSES = 2622  # VGG-Face's identities: the size of f_VGG's output in eq. (1)
# every config's shapes made tiny (--smoke here, and bench.gpu_check's smoke)
TINY = ("face.size=32", "face.widths=[4, 8, 8, 16, 16]", "face.fc=16", "decoder.first_layer=16",
        "decoder.size=32", "decoder.base=4", "decoder.widths=[16, 8, 8, 8]", "voice.seconds=1.0",
        "voice.widths=[4, 4, 8, 8, 8, 8, 16, 16, 16]")


def pairs_per_s(config: str, batch: int, threads: int, steps: int, device: torch.device,
                overrides: tuple[str, ...] = (), bf16: bool | None = None) -> float:
    """Pairs/s of one training step; bf16 autocast by default on a GPU only."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(config, list(overrides))
    spec_shape = cfg.voice.frontend().shape
    encoder = VoiceEncoder(cfg.voice, cfg.face.fc, spec_shape[-1]).to(device)
    face = FaceNet(cfg.face, PAPER_CLASSES if config == "paper" else 210).to(device).eval()
    decoder = FaceDecoder(cfg.decoder, cfg.face.fc).to(device).eval()
    for p in (*face.parameters(), *decoder.parameters()):
        p.requires_grad_(False)
    t = cfg.train
    opt = torch.optim.Adam(encoder.parameters(), t.lr, betas=(t.beta1, 0.999), eps=t.eps)
    spec = torch.randn(batch, *spec_shape, device=device)
    v_f = torch.rand(batch, cfg.face.fc, device=device)
    amp = device.type == "cuda" if bf16 is None else bf16
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            v_s = encoder(spec)
        terms = s2f_terms(v_f, v_s.float(), decoder.first_layer, face.logits, t.temperature)
        loss = s2f_loss(terms, t.lambda1, t.lambda2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="measured steps per small row")
    p.add_argument("--paper-steps", type=int, default=3, help="measured steps of the paper config")
    p.add_argument("--batch", type=int, default=8, help="the baseline's batch (the larger row: 4 times it)")
    args = parse(p, argv, smoke={"steps": 2, "paper_steps": 1, "batch": 2})  # smoke: every config's shapes tiny too
    sets = TINY if args.smoke else ()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cores, b = torch.get_num_threads(), args.batch
    rows = [(f"`small`, batch {b}, 1 thread (baseline)", "small", b, 1, args.steps),
            (f"`small`, batch {b}, {cores} threads", "small", b, cores, args.steps),
            (f"`small`, batch {4 * b}, {cores} threads", "small", 4 * b, cores, args.steps),
            (f"`paper` (Table 1, 6 s), batch {b}, {cores} threads", "paper", b, cores, args.paper_steps)]
    results = []
    for name, config, batch, threads, steps in rows:
        results.append((name, pairs_per_s(config, batch, threads, steps, device, sets)))
        print(f"{name}: {results[-1][1]:.2f} pairs/s", flush=True)
    paper = results[-1][1]
    days = 637_500 * 8 / paper / 86_400
    body = f"""## Speech2Face voice encoder training throughput ({device.type})

Command: `python -m bench.s2f_train` on {machine()}.
Synthetic spectrograms of each config's shape; one `train s2f` step per measurement (encoder
forward and backward, eq. (1) through the frozen f_dec and f_VGG, Adam), median of {args.steps}
(`paper`: {args.paper_steps}); {"bf16 autocast" if device.type == "cuda" else "float32"}.
The paper config's schedule, 637,500 iterations at batch 8, would take {days:,.0f} days at this rate.

{ratio_table(results, "pairs/s", digits=2)}"""
    publish(f"s2f-train-{device.type}", body, args)
    return 0


if __name__ == "__main__":
    run_script(main, "python -m bench.s2f_train")
