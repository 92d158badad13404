"""Where one SearchFaces call's time goes, the embedded runner's batching, and the serving targets, in one run.

    python -m bench.search_breakdown --model-repo models/demo --corpus demo/corpus --index-root demo/indexes \
        [--compare REF] [--smoke] [--doc PATH]

- The parts alone: decoding a clip, the voice encoder at batch 1 (in process, and on Triton
  directly), a FAISS search, each at concurrency 1 and from 32 threads; and the in-process
  encoder's batch-size curve (rows per second at batch 1-64, on one thread and on two at once),
  from which the dynamic batcher's window is chosen.
- The service (its own process, as users run it), embedded default and Triton path: the client's
  p50 / p99 at concurrency 1, the server's own per-stage histograms over the same calls, an empty
  round trip (its health check), and QPS / p50 / p99 at concurrency 32.
- Targets (issue 36): embedded p50 <= 1.15 x (decode + encoder + FAISS + empty round trip);
  embedded QPS at 32 >= 1.0 x its encoder's batch-1 QPS alone; Triton path QPS at 32 >= 0.9 x
  Triton's own at the same concurrency.
- `--compare REF` (a commit, tag or branch): REF's service started from REF's own code
  (git archive) beside today's, on the same models, indexes and clips, alternating, and a table
  of both that names what got slower.
"""

from __future__ import annotations

import argparse
import atexit
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import faiss
import grpc
import numpy as np
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tqdm import tqdm

from bench.report import MADE, add_demo_arguments, machine, parse, publish, smoke_release
from bench.search_service import ServeProcess, load
from devtools.local_servers import LocalTriton, free_port
from facevoice.cli import run_script
from facevoice.service.corpus import read_manifest
from facevoice.service.embedder import Embedder
from facevoice.service.errors import UsageError
from facevoice.service.repository import FACE, VOICE, open_repository
from facevoice.service.runners import EmbeddedRunner
from facevoice.service.versions import current_version, load_version
from facevoice.v1 import facevoice_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("decode", "embed", "search")
CURVE = (1, 2, 4, 8, 16, 32, 64)
SLOWER = 1.10  # the compare table calls a part slower beyond 10% (and 0.2 ms), or QPS below 1 / 1.10
MIN_MS = 0.2


def timed(fn, n: int, desc: str) -> dict:
    """p50, p99 and mean in ms of n sequential calls fn(i), after 10 warm-up calls."""
    for i in range(10):
        fn(i)
    lat = []
    for i in tqdm(range(n), desc=desc, leave=False):
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)
    lat_ms = 1000 * np.array(lat)
    return {"p50": float(np.median(lat_ms)), "p99": float(np.percentile(lat_ms, 99)), "mean": float(lat_ms.mean())}


def server_stages(metrics_url: str) -> dict[str, tuple[float, float]]:
    """SearchFaces (sum seconds, count) per stage and for the whole handler ("rpc")."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    out = {}
    for m in re.finditer(r'^facevoice_(?:request|stage)_duration_seconds_(sum|count)\{([^}]*)\} (\S+)$', text, re.M):
        what, labels, value = m.groups()
        if 'method="SearchFaces"' not in labels:
            continue
        stage = re.search(r'stage="([^"]+)"', labels)
        key = stage.group(1) if stage else "rpc"
        total, count = out.get(key, (0.0, 0.0))
        out[key] = (float(value), count) if what == "sum" else (total, float(value))
    return out


def batch_curve(runner: EmbeddedRunner, info, wave: np.ndarray, seconds: float) -> dict[int, dict]:
    """The in-process encoder (no batcher) at each batch size: rows/s with one caller, and with
    two callers at once (two instances, as the service's batcher runs them)."""
    out = {}
    for b in tqdm(CURVE, desc="batch-size curve", leave=False):
        x = np.repeat(wave, b, axis=0)
        runner.infer(info, x)
        row = {}
        for callers in (1, 2):
            qps = load(lambda x=x: runner.infer(info, x), callers, seconds)["qps"]  # calls per second
            row[callers] = {"rows_per_s": b * qps, "ms_per_call": 1000 * callers / max(qps, 1e-9)}
        out[b] = row
    return out


def reference_code(ref: str) -> tuple[Path, str]:
    """REF's code from git, laid out as the installed package (facevoice.service and
    facevoice.training are service/ and training/), in a temporary directory removed at exit; and
    REF's short hash. UsageError when git does not know REF."""
    got = subprocess.run(["git", "rev-parse", "--short", f"{ref}^{{commit}}"], cwd=ROOT, capture_output=True, text=True)
    if got.returncode:
        raise UsageError(f"--compare {ref}: not a commit of this repository ({got.stderr.strip()})")
    sha = got.stdout.strip()
    work = Path(tempfile.mkdtemp(prefix=f"facevoice-ref-{sha}-"))
    atexit.register(shutil.rmtree, work, True)
    archive = subprocess.run(["git", "archive", sha], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    for sub in ("service", "training"):
        (work / "facevoice" / sub).symlink_to(work / sub, target_is_directory=True)
    return work, sha


def measure_service(args, path: str, extra: list[str], env: dict | None, voices: list[bytes], desc: str) -> dict:
    """One service process: concurrency 1 (client and server stages), an empty round trip, and
    concurrency 32."""
    service = ServeProcess(args, args.index_root, 8, extra, metrics_port=free_port(), env=env)
    metrics_url = f"http://127.0.0.1:{service.metrics_port}/metrics"
    with service as stub:
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{service.port}"))

        def call(i, stub=stub):
            return stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=voices[i % len(voices)]), top_k=10),
                                    timeout=60)

        for i in range(32):  # warm: every clip once, the batcher's threads started
            call(i)
        before = server_stages(metrics_url)
        client = timed(call, args.calls, f"SearchFaces {desc}")
        after = server_stages(metrics_url)
        empty = timed(lambda _, health=health: health.Check(health_pb2.HealthCheckRequest(), timeout=10),
                      args.calls, "health check")
        counter = iter(range(10**9))
        at32 = load(lambda call=call, counter=counter: call(next(counter)), 32, args.seconds)
    server = {k: 1000 * (after[k][0] - before.get(k, (0, 0))[0]) / (after[k][1] - before.get(k, (0, 0))[1])
              for k in after if after[k][1] > before.get(k, (0, 0))[1]}
    print(f"{desc}: client p50 {client['p50']:.2f} ms, empty round trip {empty['p50']:.2f} ms, QPS at 32 "
          f"{at32['qps']:.0f} (p99 {at32['p99']:.0f} ms, {at32['errors']} failed); server mean "
          + ", ".join(f"{k} {v:.2f}" for k, v in server.items()), flush=True)
    return {"client": client, "server": server, "empty": empty, "at32": at32}


def mean_of(runs: list[dict]) -> dict:
    """The mean of the same measurements over rounds (nested dicts of numbers)."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: mean_of([r[k] for r in runs]) for k in first if all(k in r for r in runs)}
    return float(np.mean(runs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_demo_arguments(p)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--seconds", type=float, default=4.0, help="per cell at concurrency 32")
    p.add_argument("--curve-seconds", type=float, default=2.0, help="per batch size of the curve")
    p.add_argument("--threads", type=int, default=1, help="the service's FAISS and onnxruntime threads")
    p.add_argument("--compare", metavar="REF", help="a commit, tag or branch whose service is measured beside today's")
    p.add_argument("--rounds", type=int, default=0,
                   help="service measurements per code and path, alternating (default 1; 2 with --compare)")
    args = smoke_release(parse(p, argv, smoke={"corpus": MADE, "index_root": MADE, "calls": 10, "seconds": 0.5,
                                               "curve_seconds": 0.05}))
    faiss.omp_set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.compare else 1)
    codes: list[tuple[str, dict | None]] = [("today", None)]
    if args.compare:
        tree, sha = reference_code(args.compare)
        codes.insert(0, (f"{args.compare} ({sha})" if args.compare != sha else sha, {"PYTHONPATH": str(tree)}))
    manifest = open_repository(args.model_repo)  # checked, its detector files found
    rows = [r for r in read_manifest(args.corpus) if r.split == "test" and r.modality == "voice"][:16]
    voices = [(args.corpus / r.path).read_bytes() for r in rows]
    alone = EmbeddedRunner(args.model_repo, threads=args.threads, batching=False)
    batched = EmbeddedRunner(args.model_repo, threads=args.threads)  # the service's default: 2 instances
    embedder = Embedder(manifest, alone)
    wave = embedder.decode(VOICE, voices[0])[None]
    info = manifest.space(VOICE).network
    gallery = load_version(args.index_root, FACE, current_version(args.index_root, FACE), manifest.space(FACE).version)
    query = embedder.embed(VOICE, wave)[0]
    triton = LocalTriton(args.model_repo, workdir=Path(tempfile.mkdtemp(prefix="facevoice-breakdown-"))).start()
    services: dict[tuple[str, str], list[dict]] = {}
    try:
        client = tc.InferenceServerClient(triton.grpc_url)

        def triton_call(_=None):
            inp = tc.InferInput(info.input, list(wave.shape), "FP32")
            inp.set_data_from_numpy(wave)
            return client.infer(info.model, [inp]).as_numpy(info.output)

        parts = {"decode": lambda i=0: embedder.decode(VOICE, voices[i % len(voices)]),
                 "triton": triton_call, "embedded": lambda _=None: alone.infer(info, wave),
                 "faiss": lambda _=None: gallery.index.search(query[None], 10)}
        raw = {name: timed(fn, args.calls, name) for name, fn in parts.items()}
        k = iter(range(10**9))
        parts32 = {**parts, "batched": lambda _=None: batched.infer(info, wave)}
        raw32 = {name: load(lambda fn=fn: fn(next(k)), 32, args.seconds) for name, fn in parts32.items()}
        curve = batch_curve(alone, info, wave, args.curve_seconds)
        batched.close()
        for _ in range(rounds):
            for label, env in codes:
                for path, extra in (("embedded", []), ("triton", ["--triton-url", triton.grpc_url])):
                    services.setdefault((label, path), []).append(
                        measure_service(args, path, extra, env, voices, f"{label} {path}"))
    finally:
        triton.stop()
    results = {key: mean_of(runs) for key, runs in services.items()}
    publish("search_breakdown", report(args, raw, raw32, curve, batched.policy(info), results, codes, rounds), args)
    return 0


def report(args, raw: dict, raw32: dict, curve: dict, policy, results: dict, codes: list, rounds: int) -> str:
    today = "today"
    base = raw["triton"]["mean"]
    compare = f" --compare {args.compare}" if args.compare else ""
    lines = ["## Retrieval service: where one SearchFaces call goes, the embedded runner's batching, and the targets",
             "",
             f"Command: `python -m bench.search_breakdown --model-repo {args.model_repo} --corpus {args.corpus} "
             f"--index-root {args.index_root}{compare}` on {machine()}; {args.calls} sequential calls per row "
             f"(concurrency 1), after warm-up; concurrency 32 for {args.seconds:g} s per cell; "
             f"{rounds} round(s) per service, alternating, averaged. The service runs in its own process with "
             f"{args.threads} onnxruntime and {args.threads} FAISS thread(s) per call (the embedded runner: 2 "
             f"batch instances, max batch {policy.max_batch}, queue delay {1e6 * policy.max_delay_s:.0f} µs, from "
             "the network's config.pbtxt); server stages are the means of its own Prometheus histograms over the "
             f"same calls. Baseline: the voice encoder called on Triton directly, mean {base:.2f} ms.", "",
             "### The parts alone", "",
             "| part | p50 ms | p99 ms | mean ms | / Triton direct | QPS from 32 threads |",
             "|---|---|---|---|---|---|"]
    names = {"decode": "decoding the clip", "triton": "encoder on Triton directly (baseline)",
             "embedded": "encoder in process, batch 1, no batcher", "faiss": "FAISS search"}
    for key, name in names.items():
        r = raw[key]
        lines.append(f"| {name} | {r['p50']:.3f} | {r['p99']:.3f} | {r['mean']:.3f} | {r['mean'] / base:.3f} | "
                     f"{raw32[key]['qps']:.0f} |")
    lines.append("| encoder in process through the batcher (the service's runner) | | | | | "
                 f"{raw32['batched']['qps']:.0f} |")
    lines += ["", "### The in-process encoder's batch-size curve", "",
              "One onnxruntime call of the voice encoder (1 thread) on a batch of B copies of a clip: rows per "
              "second with one caller, and with two callers at once (two batch instances, the 2 cores).", "",
              "| batch | ms per call, 1 caller | rows/s, 1 caller | rows/s, 2 callers | rows/s vs batch 1, 2 callers |",
              "|---|---|---|---|---|"]
    one = curve[CURVE[0]][2]["rows_per_s"]
    for b, row in curve.items():
        lines.append(f"| {b} | {row[1]['ms_per_call']:.1f} | {row[1]['rows_per_s']:.0f} | {row[2]['rows_per_s']:.0f} | "
                     f"{row[2]['rows_per_s'] / one:.2f} |")
    lines += ["", "### Where a call's time goes", "",
              "| code | path | what | mean ms | / Triton direct |", "|---|---|---|---|---|"]
    for (label, path), r in results.items():
        s = r["server"]
        staged = sum(s.get(k, 0.0) for k in STAGES)
        rows = [*((f"server: {k}", s.get(k, 0.0)) for k in STAGES),
                ("server: rest of the handler (validation, response, metrics)", s.get("rpc", 0.0) - staged),
                ("server: whole handler", s.get("rpc", 0.0)),
                ("beyond the handler (gRPC, 2 processes)", r["client"]["mean"] - s.get("rpc", 0.0)),
                ("an empty round trip (health check)", r["empty"]["mean"]),
                ("client: SearchFaces", r["client"]["mean"])]
        lines += [f"| {label} | {path} | {name} | {v:.2f} | {v / base:.2f} |" for name, v in rows]
    lines += ["", "### Targets (issue 36)", "",
              "p50 at concurrency 1: the service against decode + encoder + FAISS + an empty round trip of the same "
              "stack (target <= 1.15). QPS at 32: the embedded service against its encoder's batch-1 QPS alone "
              "from 32 threads (target >= 1.0; the batched encoder's own ceiling beside it), and the Triton path "
              "against Triton called directly from 32 threads, its dynamic batcher on (target >= 0.9).", "",
              "| code | path | p50 ms | p99 ms | parts p50 ms | p50 / parts | met | QPS at 32 | p50 / p99 at 32, ms | "
              "failed | against | ratio | met |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (label, path), r in results.items():
        parts = raw["decode"]["p50"] + raw[path]["p50"] + raw["faiss"]["p50"] + r["empty"]["p50"]
        ratio_p50 = r["client"]["p50"] / parts
        against = raw32["embedded" if path == "embedded" else "triton"]["qps"]
        ratio_qps = r["at32"]["qps"] / against
        goal = 1.0 if path == "embedded" else 0.9
        ceiling = f" (batched ceiling {raw32['batched']['qps']:.0f})" if path == "embedded" else ""
        lines.append(f"| {label} | {path} | {r['client']['p50']:.2f} | {r['client']['p99']:.2f} | {parts:.2f} | "
                     f"{ratio_p50:.2f} | {'yes' if ratio_p50 <= 1.15 else 'no'} | {r['at32']['qps']:.0f} | "
                     f"{r['at32']['p50']:.0f} / {r['at32']['p99']:.0f} | {int(r['at32']['errors'])} | "
                     f"{against:.0f}{ceiling} | {ratio_qps:.2f} | {'yes' if ratio_qps >= goal else 'no'} |")
    if len(codes) > 1:
        lines += ["", *compare_table(results, codes[0][0], today)]
    return "\n".join(lines)


def compare_table(results: dict, ref: str, today: str) -> list[str]:
    """Today's figures against REF's, and what got slower (beyond 10% and 0.2 ms; QPS below 1 / 1.1)."""
    lines = [f"### Against {ref}", "", f"| path | what | {ref} | today | today / {ref} | |",
             "|---|---|---|---|---|---|"]
    slower = []
    for path in ("embedded", "triton"):
        a, b = results[(ref, path)], results[(today, path)]
        metrics = [("client p50 ms", a["client"]["p50"], b["client"]["p50"], "ms"),
                   ("client p99 ms", a["client"]["p99"], b["client"]["p99"], "ms"),
                   *((f"server {k} ms", a["server"].get(k, 0.0), b["server"].get(k, 0.0), "ms")
                     for k in (*STAGES, "rpc")),
                   ("beyond the handler ms", a["client"]["mean"] - a["server"].get("rpc", 0.0),
                    b["client"]["mean"] - b["server"].get("rpc", 0.0), "ms"),
                   ("QPS at 32", a["at32"]["qps"], b["at32"]["qps"], "qps"),
                   ("p99 at 32 ms", a["at32"]["p99"], b["at32"]["p99"], "ms")]
        for name, x, y, kind in metrics:
            ratio = y / x if x else float("nan")
            worse = (ratio > SLOWER and y - x > MIN_MS) if kind == "ms" else ratio < 1 / SLOWER
            if worse:
                slower.append(f"{path} {name.replace(' ms', '')} ({x:.2f} -> {y:.2f})")
            lines.append(f"| {path} | {name} | {x:.2f} | {y:.2f} | {ratio:.2f} | {'**slower**' if worse else ''} |")
    found = "; ".join(slower) if slower else "nothing, beyond 10% and 0.2 ms"
    lines += ["", f"Slower than {ref}: {found}."]
    return lines


if __name__ == "__main__":
    run_script(main, "python -m bench.search_breakdown")
