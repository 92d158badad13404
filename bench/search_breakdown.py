"""Where one SearchFaces call's time goes, and issue 20's serving-overhead target, in one run.

    python -m bench.search_breakdown --model-repo models/demo --corpus demo/corpus --index-root demo/indexes \
        [--smoke] [--doc PATH]

At concurrency 1: the client's latency, the server's own per-stage histograms (from its /metrics),
and the raw parts measured in the same run (decoding alone, the voice encoder called on Triton
directly, the FAISS search called directly, and an empty gRPC round trip to the same server: its
health check). Target: service p50 <= (decode + Triton + FAISS) p50 + the empty round trip p50.
At concurrency 32: service QPS against the slower raw part's QPS alone (target >= 0.9).
Embedded default and Triton path.
"""

from __future__ import annotations

import argparse
import re
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
from facevoice.service.repository import FACE, VOICE, open_repository
from facevoice.service.runners import EmbeddedRunner
from facevoice.service.versions import current_version, load_version
from facevoice.v1 import facevoice_pb2 as pb

STAGES = ("decode", "embed", "search")


def timed(fn, n: int, desc: str) -> dict:
    """p50 and mean in ms of n sequential calls fn(i), after 10 warm-up calls (calls of the parts
    being compared are interleaved by the caller when it can, so drift hits them alike)."""
    for i in range(10):
        fn(i)
    lat = []
    for i in tqdm(range(n), desc=desc, leave=False):
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)
    return {"p50": 1000 * float(np.median(lat)), "mean": 1000 * float(np.mean(lat))}


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_demo_arguments(p)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--seconds", type=float, default=4.0, help="per cell at concurrency 32")
    p.add_argument("--threads", type=int, default=1, help="the service's FAISS and onnxruntime threads")
    args = smoke_release(parse(p, argv, smoke={"corpus": MADE, "index_root": MADE, "calls": 10, "seconds": 0.5}))
    faiss.omp_set_num_threads(args.threads)
    manifest = open_repository(args.model_repo)  # checked, its detector files found
    rows = [r for r in read_manifest(args.corpus) if r.split == "test" and r.modality == "voice"][:16]
    voices = [(args.corpus / r.path).read_bytes() for r in rows]
    embedder = Embedder(manifest, EmbeddedRunner(args.model_repo, threads=args.threads))
    wave = embedder.decode(VOICE, voices[0])[None]
    info = manifest.space(VOICE).network
    gallery = load_version(args.index_root, FACE, current_version(args.index_root, FACE), manifest.space(FACE).version)
    query = embedder.embed(VOICE, wave)[0]
    triton = LocalTriton(args.model_repo, workdir=Path(tempfile.mkdtemp(prefix="facevoice-breakdown-"))).start()
    results = {}
    try:
        client = tc.InferenceServerClient(triton.grpc_url)

        def triton_call(_=None):
            inp = tc.InferInput(info.input, list(wave.shape), "FP32")
            inp.set_data_from_numpy(wave)
            return client.infer(info.model, [inp]).as_numpy(info.output)

        parts = {"decode": lambda i=0: embedder.decode(VOICE, voices[i % len(voices)]),
                 "triton": triton_call, "embedded": lambda _=None: embedder.embed(VOICE, wave),
                 "faiss": lambda _=None: gallery.index.search(query[None], 10)}
        raw = {name: timed(fn, args.calls, name) for name, fn in parts.items()}
        k = iter(range(10**9))
        raw32 = {name: load(lambda fn=fn: fn(next(k)), 32, args.seconds)["qps"] for name, fn in parts.items()}
        for path, extra in (("embedded", []), ("triton", ["--triton-url", triton.grpc_url])):
            service = ServeProcess(args, args.index_root, 8, extra, metrics_port=free_port())
            metrics_url = f"http://127.0.0.1:{service.metrics_port}/metrics"
            with service as stub:
                health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{service.port}"))

                def call(i, stub=stub):
                    return stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=voices[i % len(voices)]),
                                                                  top_k=10), timeout=60)

                call(0)
                before = server_stages(metrics_url)
                client_side = timed(call, args.calls, f"SearchFaces {path}")
                after = server_stages(metrics_url)
                empty = timed(lambda _, health=health: health.Check(health_pb2.HealthCheckRequest(), timeout=10),
                              args.calls, "health check")
                counter = iter(range(10**9))
                qps32 = load(lambda call=call, counter=counter: call(next(counter)), 32, args.seconds)
            server = {k: 1000 * (after[k][0] - before.get(k, (0, 0))[0]) / (after[k][1] - before.get(k, (0, 0))[1])
                      for k in after if after[k][1] > before.get(k, (0, 0))[1]}
            results[path] = {"client": client_side, "server": server, "empty": empty, "qps32": qps32["qps"],
                             "errors": qps32["errors"]}
            print(f"{path}: client p50 {client_side['p50']:.2f} ms, empty round trip {empty['p50']:.2f} ms, "
                  f"QPS at 32 {qps32['qps']:.0f}; server mean " + ", ".join(f"{k} {v:.2f}" for k, v in server.items()),
                  flush=True)
    finally:
        triton.stop()
    publish("search_breakdown", report(args, raw, raw32, results), args)
    return 0


def report(args, raw: dict, raw32: dict, results: dict) -> str:
    base = raw["triton"]["mean"]
    lines = ["## Retrieval service: where one SearchFaces call goes, and what it adds beyond its parts", "",
             f"Command: `python -m bench.search_breakdown --model-repo {args.model_repo} --corpus {args.corpus} "
             f"--index-root {args.index_root}` on {machine()}; {args.calls} sequential calls per row "
             "(concurrency 1), after 10 warm-up calls; concurrency 32 for "
             f"{args.seconds:g} s per cell. The service runs in its own process with {args.threads} onnxruntime "
             f"and {args.threads} FAISS thread(s); server stages are the means of its own Prometheus histograms "
             "over the same calls. Baseline: the voice encoder called on Triton directly with pre-decoded "
             f"input, mean {base:.2f} ms (p50 {raw['triton']['p50']:.2f}).", "",
             "| path | what | mean ms | / Triton direct |", "|---|---|---|---|",
             f"| raw | decoding the clip alone | {raw['decode']['mean']:.2f} | {raw['decode']['mean'] / base:.2f} |",
             f"| raw | Triton direct (baseline) | {base:.2f} | 1.00 |",
             f"| raw | onnxruntime in-process | {raw['embedded']['mean']:.2f} | {raw['embedded']['mean'] / base:.2f} |",
             f"| raw | FAISS search alone | {raw['faiss']['mean']:.3f} | {raw['faiss']['mean'] / base:.3f} |"]
    for path, r in results.items():
        s = r["server"]
        staged = sum(s.get(k, 0.0) for k in STAGES)
        rows = [*((f"server: {k}", s.get(k, 0.0)) for k in STAGES),
                ("server: rest of the handler (validation, response, metrics)", s.get("rpc", 0.0) - staged),
                ("server: whole handler", s.get("rpc", 0.0)),
                ("client -> server -> client, beyond the handler (gRPC, 2 processes)",
                 r["client"]["mean"] - s.get("rpc", 0.0)),
                ("an empty round trip to the same server (health check)", r["empty"]["mean"]),
                ("client: SearchFaces", r["client"]["mean"])]
        lines += [f"| {path} | {name} | {v:.2f} | {v / base:.2f} |" for name, v in rows]
    lines += ["", "Issue 20's target, p50 at concurrency 1: service <= decode + encoder + FAISS + one empty round "
              "trip of the same stack; QPS at concurrency 32: service >= 0.9 x the slower of those parts alone "
              "(each called from 32 threads of this process).", "",
              "| path | service p50 ms | decode + encoder + FAISS + empty trip, p50 ms | service / that | met | "
              "service QPS at 32 | slower part's QPS | ratio | met |", "|---|---|---|---|---|---|---|---|---|"]
    for path, r in results.items():
        parts = raw["decode"]["p50"] + raw[path]["p50"] + raw["faiss"]["p50"] + r["empty"]["p50"]
        slower = min(raw32["decode"], raw32[path], raw32["faiss"])
        ratio_p50, ratio_qps = r["client"]["p50"] / parts, r["qps32"] / slower
        lines.append(f"| {path} | {r['client']['p50']:.2f} | {raw['decode']['p50']:.2f} + {raw[path]['p50']:.2f} + "
                     f"{raw['faiss']['p50']:.3f} + {r['empty']['p50']:.2f} = {parts:.2f} | {ratio_p50:.2f} | "
                     f"{'yes' if ratio_p50 <= 1 else 'no'} | {r['qps32']:.0f} | {slower:.0f} | {ratio_qps:.2f} | "
                     f"{'yes' if ratio_qps >= 0.9 else 'no'} |")
    lines += ["", f"Failed calls at concurrency 32: {sum(r['errors'] for r in results.values())}."]
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main, "python -m bench.search_breakdown")
