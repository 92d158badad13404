"""The figures a lent GPU machine is for, in one run of under 8 minutes (bench/gpu_check.sh runs it).

    python -m bench.gpu_check --out DIR [--smoke] [--budget-s 420]

- association model, paper config (Kim et al. sec. 4.1-4.3: VGG16 224 px, SoundNet 10 s):
  triplets/s in fp32 and bf16 autocast, at batch 8 and at the largest batch that fits (doubling
  from 8 until CUDA runs out of memory, at most `--max-batch`);
- Speech2Face voice encoder, paper config (Oh et al. Table 1, 6 s): pairs/s, bf16 autocast;
- exact search of 1M x 128 vectors with torch on the GPU: queries/s at batch 1 and 1,000 (fp32
  and fp16 storage), the top 10 by L2, as the service's flat index answers;
- IVF-PQ capacity for the 1B plan: how many 64-byte PQ codes (with their ids) fit on the GPU, at
  most 1B, and how fast a torch PQ table scan goes over nprobe 64 / 65,536 lists' worth of them;
- the served encoders: onnxruntime's CUDA provider when the installed onnxruntime has it (the
  GPU image's does not, and onnxruntime-gpu's wheel is far over the 64 MiB a call may carry),
  else eager, TorchScript and torch.compile of the same encoders, batch 1 and 64, ms per call.

Each part is timed on its own and guarded: a failure or the time budget running out is recorded
and the next part runs. `--smoke` runs every part with tiny shapes on the CPU, so the script has
run once before it meets a GPU. Writes DIR/gpu_check.json and DIR/gpu_check.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from bench.association_train import TINY as ASSOCIATION_TINY
from bench.association_train import triplets_per_s as association_rate
from bench.s2f_train import TINY as S2F_TINY
from bench.s2f_train import pairs_per_s
from facevoice.cli import run_script
from facevoice.training.association.config import load_config
from facevoice.training.association.model import AssociationModel

TINY_ASSOC, TINY_S2F = ASSOCIATION_TINY, list(S2F_TINY)  # the smoke's shapes, the train benches' own


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def triplets_per_s(cfg, batch: int, bf16: bool, steps: int, device: torch.device) -> float:
    """bench.association_train's step (eq. (1), no hard negatives) in fp32 or bf16 autocast."""
    return association_rate(cfg, batch, torch.get_num_threads(), False, steps, device, bf16=bf16)


def largest_batch(cfg, bf16: bool, device: torch.device, limit: int) -> int:
    """The largest power-of-two batch (from 8) whose training step fits in the GPU's memory."""
    fits, b = 0, 8
    while b <= limit:
        try:
            triplets_per_s(cfg, b, bf16, 1, device)
            fits, b = b, b * 2
        except torch.OutOfMemoryError:
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return fits


def association(args, device) -> dict:
    cfg = load_config("paper", TINY_ASSOC if args.smoke else [])
    out = {}
    for bf16 in (False, True):
        name = "bf16" if bf16 else "fp32"
        out[f"{name}_batch8"] = triplets_per_s(cfg, 8, bf16, args.steps, device)
        big = largest_batch(cfg, bf16, device, args.max_batch)
        out[f"{name}_largest_batch"] = big
        out[f"{name}_largest"] = (triplets_per_s(cfg, big, bf16, args.steps, device) if big > 8
                                  else out[f"{name}_batch8"])
    return out


def speech2face(args, device) -> dict:
    sets = tuple(TINY_S2F) if args.smoke else ()
    return {"bf16_batch8": pairs_per_s("paper", 8, torch.get_num_threads(), args.steps, device, sets, bf16=True),
            "fp32_batch8": pairs_per_s("paper", 8, torch.get_num_threads(), args.steps, device, sets, bf16=False)}


def exact_search(args, device) -> dict:
    """Top 10 by L2 over n x 128 vectors held on the device: ||x||^2 - 2 q.x, then topk."""
    n = 10_000 if args.smoke else 1_000_000
    g = torch.Generator(device="cpu").manual_seed(0)
    out = {"gallery": n}
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(n, 128, generator=g).to(device, dtype)
        norms = (x.float() ** 2).sum(1)
        q_all = torch.randn(2000, 128, generator=g).to(device, dtype)

        def search(q, x=x, norms=norms):
            return torch.topk(norms - 2 * (q @ x.T).float(), 10, dim=1, largest=False).indices

        for batch, calls in ((1, 200), (1000, 10)):
            search(q_all[:batch])
            sync(device)
            start = time.perf_counter()
            for i in range(calls):
                search(q_all[(i * batch) % 1000:(i * batch) % 1000 + batch])
            sync(device)
            out[f"{str(dtype).split('.')[-1]}_batch{batch}_qps"] = calls * batch / (time.perf_counter() - start)
        del x, norms, q_all
    return out


def encoders(args, device) -> dict:
    """The served encoders (association paper config) through each runtime, ms per call."""
    cfg = load_config("paper", TINY_ASSOC if args.smoke else [])
    model = AssociationModel(cfg).to(device).eval()
    inputs = {"face_encoder": lambda b: torch.randn(b, 3, cfg.face.size, cfg.face.size, device=device),
              "voice_encoder": lambda b: torch.randn(b, cfg.voice.frontend().samples, device=device) * 0.1}
    nets = {"face_encoder": model.face_encoder, "voice_encoder": model.voice_encoder}
    out = {"runtime": "torch"}
    try:
        import onnxruntime as ort

        out["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        out["onnxruntime_providers"] = []
    for name, net in nets.items():
        for batch in (1, 64):
            x = inputs[name](batch)
            runs = {"eager": net, "torchscript": torch.jit.trace(net, x)}
            if not args.smoke or device.type == "cuda":
                runs["compile"] = torch.compile(net)
            for how, fn in runs.items():
                with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                    for _ in range(3):
                        fn(x)
                    sync(device)
                    start = time.perf_counter()
                    for _ in range(args.steps):
                        fn(x)
                    sync(device)
                out[f"{name}_{how}_batch{batch}_ms"] = 1000 * (time.perf_counter() - start) / args.steps
    return out


def ivfpq_capacity(args, device) -> dict:
    """The 1B-item plan's two unknowns, measured (docs/benchmarks.md, "1B on one GPU host"): how
    many IVF-PQ64 codes (64 B) and ids (8 B) this GPU holds, and how fast it scans them. The codes
    are allocated at the largest size that fits in 70% of free memory (at most 1B); each query
    scans a contiguous run of codes as many as nprobe 64 of 65,536 lists would hold at 1B (about
    1M), by PQ table lookup (64 sub-quantizers x 256 centroids, fp16), then keeps its top 10."""
    m, ksub, per_item = 64, 256, 64 + 8
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info()
        n = int(min(1e9, 0.7 * free / per_item))
    else:
        n = 200_000 if args.smoke else 2_000_000
    codes = torch.randint(0, ksub, (n, m), dtype=torch.uint8, device=device)
    ids = torch.arange(n, dtype=torch.int64, device=device)
    scan = min(n, 2_000 if args.smoke else 1_000_000)
    offsets = torch.arange(m, device=device) * ksub
    g = torch.Generator(device="cpu").manual_seed(1)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    luts = torch.rand(8, m * ksub, generator=g).to(device, dtype)
    starts = torch.randint(0, max(1, n - scan), (args.steps * 4,), generator=g).tolist()

    def query(i: int):
        block = codes[starts[i]:starts[i] + scan].long() + offsets  # (scan, m) indices into the flat table
        d = luts[i % 8][block].float().sum(1)
        best = torch.topk(d, 10, largest=False).indices
        return ids[starts[i]:starts[i] + scan][best]

    query(0)
    sync(device)
    t = time.perf_counter()
    for i in range(len(starts)):
        query(i)
    sync(device)
    per_query = (time.perf_counter() - t) / len(starts)
    out = {"codes_held": n, "bytes_per_item": per_item, "codes_gb": n * per_item / 1e9,
           "scanned_per_query": scan, "queries_per_s": 1 / per_query, "codes_scanned_per_s": scan / per_query,
           "fits_1e9": n >= 1_000_000_000}
    return out  # the codes go with this frame, before the next part allocates


PARTS = {"association": association, "speech2face": speech2face, "exact_search": exact_search, "encoders": encoders,
         "ivfpq_capacity": ivfpq_capacity}


def machine_facts(device) -> dict:
    facts = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["gpu_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 1e9
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            facts["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                                 timeout=20).stdout.strip()
    return facts


def report(data: dict) -> str:
    lines = [f"# GPU check ({'smoke, CPU' if data['smoke'] else data['facts'].get('gpu', data['facts']['device'])})",
             "", f"Command: `bash bench/gpu_check.sh{' --smoke' if data['smoke'] else ''}`; torch "
             f"{data['facts']['torch']}; {data['seconds']:.0f} s in all.", "", "| part | figure | value |",
             "|---|---|---|"]
    for part, r in data["parts"].items():
        for key, value in r.items():
            shown = f"{value:,.2f}" if isinstance(value, float) else str(value)
            lines.append(f"| {part} | {key} | {shown} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    p.add_argument("--steps", type=int, default=None, help="measured steps per figure (default 5; smoke 2)")
    p.add_argument("--max-batch", type=int, default=None, help="largest batch tried (default 256; smoke 16)")
    p.add_argument("--budget-s", type=float, default=420.0, help="parts not started by then are skipped")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    args = p.parse_args()
    args.steps = args.steps or (2 if args.smoke else 5)
    args.max_batch = args.max_batch or (16 if args.smoke else 256)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    start = time.perf_counter()
    data = {"smoke": args.smoke, "facts": machine_facts(device), "parts": {}, "errors": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.parts:
        if time.perf_counter() - start > args.budget_s:
            data["errors"][name] = f"skipped: the {args.budget_s:.0f} s budget was spent"
            continue
        t = time.perf_counter()
        try:
            data["parts"][name] = {**PARTS[name](args, device), "seconds": time.perf_counter() - t}
        except Exception as e:  # one part's failure must not cost the others' figures
            data["errors"][name] = f"{type(e).__name__}: {e}"
        print(f"{name}: {json.dumps(data['parts'].get(name, data['errors'].get(name)))}", flush=True)
        data["seconds"] = time.perf_counter() - start
        (args.out / "gpu_check.json").write_text(json.dumps(data, indent=1))  # what is done survives a kill
    data["seconds"] = time.perf_counter() - start
    (args.out / "gpu_check.json").write_text(json.dumps(data, indent=1))
    text = report(data) + ("".join(f"\n\n{k}: {v}" for k, v in data["errors"].items()))
    (args.out / "gpu_check.md").write_text(text + "\n")
    print(text)
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    run_script(main, "python -m bench.gpu_check")
