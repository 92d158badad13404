"""SearchFaces through the service against its raw parts (the encoder on Triton, FAISS search),
at concurrency 1, 8 and 32, galleries of 10k and 1M, embedded default and Triton path; and the
index build's items/s against the encoder's raw batched throughput. All in one run.

    python -m bench.search_service --model-repo models/demo --corpus demo/corpus [--smoke] [--doc PATH]

The gallery vectors are synthetic (clustered, like embeddings; the demo corpus has 1,200 faces),
the queries are real voices through the real encoder. No cache (Redis off): every query embeds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import grpc
import numpy as np
import tritonclient.grpc as tc

from bench.report import MADE, machine, parse, smoke_release
from bench.report import publish as publish_section
from devtools.local_servers import LocalTriton, free_port, wait_for
from facevoice.cli import run_script
from facevoice.service.corpus import read_manifest
from facevoice.service.embedder import Embedder
from facevoice.service.gallery import Item
from facevoice.service.planner import plan_and_build
from facevoice.service.repository import FACE, VOICE, open_repository
from facevoice.service.runners import EmbeddedRunner
from facevoice.service.versions import current_version, publish, read_meta, write_version
from facevoice.v1 import facevoice_pb2 as pb
from facevoice.v1 import facevoice_pb2_grpc as pb_grpc


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 3
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):  # in blocks: 1M x 128 floats is 512 MB in float64 otherwise
        m = min(100_000, n - s)
        out[s:s + m] = centres[rng.integers(0, clusters, m)] + rng.standard_normal((m, dim), dtype=np.float32)
    return out


def load(fn, concurrency: int, seconds: float) -> dict:
    """Calls fn() from `concurrency` threads for `seconds`; latency percentiles and throughput."""
    lat: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def worker():
        mine = []
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                fn()
            except Exception:
                errors[0] += 1
                continue
            mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat.sort()
    return {"p50": 1000 * lat[len(lat) // 2], "p99": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "qps": len(lat) / wall, "n": len(lat), "errors": errors[0]}


class ServeProcess:
    """`facevoice serve` in its own process, as users run it (no GIL shared with the load)."""

    def __init__(self, args, root: Path, workers: int, extra: list[str], metrics_port: int = -1,
                 env: dict[str, str] | None = None):
        self.port, self.metrics_port = free_port(), metrics_port
        cmd = [sys.executable, "-m", "facevoice", "serve", "--model-repo", str(Path(args.model_repo).resolve()),
               "--index-root", str(Path(root).resolve()), "--host", "127.0.0.1", "--port", str(self.port),
               "--metrics-port", str(metrics_port), "--poll-s", "0",
               "--workers", str(workers), "--ort-threads", str(args.threads), "--faiss-threads", str(args.threads),
               *extra]
        # env: e.g. PYTHONPATH naming another commit's code (bench.search_breakdown --compare), run
        # from there too (`python -m` puts the working directory first on the path)
        code = (env or {}).get("PYTHONPATH")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=None if env is None else {**os.environ, **env}, cwd=code)

    def __enter__(self) -> pb_grpc.FaceVoiceStub:
        stub = pb_grpc.FaceVoiceStub(grpc.insecure_channel(f"127.0.0.1:{self.port}"))
        wait_for(lambda: bool(stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=1).indexes), 300, "serve",
                 self.proc)
        return stub

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def gallery_root(root: Path, vectors: np.ndarray, model_version: str) -> dict:
    index, plan = plan_and_build(vectors, "l2")
    items = [Item(f"g{i}", f"p{i // 4}", {"gender": "female" if i % 2 else "male"}) for i in range(len(vectors))]
    publish(root, "face", write_version(root, "face", index, items, plan, model_version=model_version, metric="l2"))
    return {"kind": plan.kind, "params": plan.params, "recall": plan.recall_at_10, "index": index}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-repo", type=Path, default=Path("models/demo"))
    p.add_argument("--corpus", type=Path, default=Path("demo/corpus"))
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1, help="FAISS and onnxruntime threads")
    args = smoke_release(parse(p, argv, smoke={"corpus": MADE, "sizes": [1000], "concurrency": [1, 4],
                                               "seconds": 0.5}))
    faiss.omp_set_num_threads(args.threads)
    manifest = open_repository(args.model_repo)  # checked, its detector files found
    rows = [r for r in read_manifest(args.corpus) if r.split == "test"]
    voices = [(args.corpus / r.path).read_bytes() for r in rows if r.modality == "voice"][:16]
    faces = [(args.corpus / r.path).read_bytes() for r in rows if r.modality == "face"]
    embedder = Embedder(manifest, EmbeddedRunner(args.model_repo, threads=args.threads))
    wave = embedder.decode(VOICE, voices[0])[None]
    dim = manifest.space(VOICE).dim
    work = Path(tempfile.mkdtemp(prefix="facevoice-bench-"))
    results, notes = [], []
    triton = LocalTriton(args.model_repo, workdir=work / "triton").start()
    try:
        client = tc.InferenceServerClient(triton.grpc_url)
        info = manifest.space(VOICE).network

        def triton_call():
            inp = tc.InferInput(info.input, list(wave.shape), "FP32")
            inp.set_data_from_numpy(wave)
            return client.infer(info.model, [inp]).as_numpy(info.output)

        q = triton_call()
        k = iter(range(10**9))
        decode = load(lambda: embedder.decode(VOICE, voices[next(k) % len(voices)]), 1, args.seconds)["p50"]
        audio = manifest.space(VOICE).frontend
        notes.append(f"decoding the query clips alone (the same {len(voices)} WAVs the service gets -> "
                     f"{audio.seconds:g} s at {audio.sample_rate} Hz): "
                     f"p50 {decode:.2f} ms")
        for size in args.sizes:
            root = work / f"idx-{size}"
            t = time.perf_counter()
            g = gallery_root(root, clustered(size, dim), manifest.space(VOICE).version)
            notes.append(f"{size:,} gallery: {g['kind']} {g['params']}, recall@10 {g['recall']:.3f} "
                         f"(built in {time.perf_counter() - t:.0f} s)")
            index = g["index"]
            for c in args.concurrency:
                raw_t = load(triton_call, c, args.seconds)
                raw_f = load(lambda index=index: index.search(q, 10), c, args.seconds)
                for path, extra in (("embedded", []), ("triton", ["--triton-url", triton.grpc_url])):
                    with ServeProcess(args, root, max(8, c), extra) as stub:
                        k = iter(range(10**9))
                        svc = load(lambda stub=stub, k=k: stub.SearchFaces(pb.SearchFacesRequest(
                            voice=pb.Audio(data=voices[next(k) % len(voices)]), top_k=10), timeout=60), c,
                            args.seconds)
                    results.append({"size": size, "c": c, "path": path, "svc": svc, "triton": raw_t, "faiss": raw_f,
                                    "decode": decode})
                    print(f"{size:>8} c={c:<3} {path:<8} service p50 {svc['p50']:.2f} ms p99 {svc['p99']:.2f} "
                          f"qps {svc['qps']:.0f} | triton p50 {raw_t['p50']:.2f} qps {raw_t['qps']:.0f} | "
                          f"faiss p50 {raw_f['p50']:.3f} qps {raw_f['qps']:.0f}", flush=True)
            shutil.rmtree(root)
        build = build_throughput(args, embedder, faces, triton)
    finally:
        triton.stop()
        shutil.rmtree(work, ignore_errors=True)
    publish_section("search_service", report(args, results, notes, build), args)
    return 0


def build_throughput(args, embedder: Embedder, faces: list[bytes], triton: LocalTriton) -> dict:
    """Raw batched encoder (pre-decoded, batch 16) vs `index build` items/s on the same gallery."""
    from facevoice.service.build import IndexBuildOptions, index_build

    x = np.stack([embedder.decode(FACE, b) for b in faces[:64]])
    t = time.perf_counter()
    for _ in range(5):
        for s in range(0, len(x), 16):
            embedder.embed(FACE, x[s:s + 16])
    raw = 5 * len(x) / (time.perf_counter() - t)
    items = sum(r.modality == "face" for r in read_manifest(args.corpus))
    out = {}
    for path, extra in (("embedded", {}), ("triton", {"triton_url": triton.grpc_url, "concurrency": 4})):
        root = Path(tempfile.mkdtemp(prefix="facevoice-build-"))
        t = time.perf_counter()
        index_build(IndexBuildOptions(gallery=args.corpus / "manifest.csv", model_repo=args.model_repo, out=root,
                                      modalities=("face",), batch=16, no_progress=True, threads=args.threads, **extra))
        out[path] = items / (time.perf_counter() - t)  # end to end: decode, both face networks, FAISS, files
        meta = read_meta(root, "face", current_version(root, "face"))
        out[f"{path}_embed"] = meta.embed_items_per_s
        shutil.rmtree(root)
    return {"raw": raw, **out, "items": items}


def report(args, results: list[dict], notes: list[str], build: dict) -> str:
    lines = ["## Retrieval service: SearchFaces against its raw parts", "",
             f"Command: `python -m bench.search_service --model-repo {args.model_repo} --corpus {args.corpus}` on "
             f"{machine()}; {args.seconds:g} s per cell; FAISS and onnxruntime {args.threads} thread(s); "
             "client threads run on the same 2 cores as the server.", "",
             *[f"- {n}" for n in notes], "",
             "Baseline per row: the same voice encoder called on Triton directly (pre-decoded input) plus the same "
             "FAISS search called directly. The service also decodes and resamples the audio (the raw parts do not).",
             "", "| gallery | conc. | path | service p50 / p99 ms | service QPS | Triton p50 ms | FAISS p50 ms | "
             "p50 / (Triton + FAISS) | p50 / (decode + Triton + FAISS) | QPS / slower part's QPS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, t, f = r["svc"], r["triton"], r["faiss"]
        lines.append(f"| {r['size']:,} | {r['c']} | {r['path']} | {s['p50']:.2f} / {s['p99']:.2f} | {s['qps']:.0f} | "
                     f"{t['p50']:.2f} | {f['p50']:.3f} | {s['p50'] / (t['p50'] + f['p50']):.2f} | "
                     f"{s['p50'] / (r['decode'] + t['p50'] + f['p50']):.2f} | "
                     f"{s['qps'] / min(t['qps'], f['qps']):.2f} |")
    errors = sum(r["svc"]["errors"] for r in results)
    lines += ["", f"Failed service calls in the whole run: {errors}.", "",
              f"Index build over the demo corpus's {build['items']} face photos. Per photo the build decodes it twice "
              "(association and Speech2Face front ends) and runs two networks (face encoder, face feature network); "
              "the baseline runs only the face encoder on pre-decoded input. End to end includes start-up, "
              "FAISS and writing the version.", "",
              "| what | items/s | ratio to raw encoder |", "|---|---|---|",
              f"| raw face encoder, batch 16, pre-decoded (baseline) | {build['raw']:.0f} | 1.00 |"]
    for path, label in (("embedded", "embedded"), ("triton", "Triton, 4 batches in flight")):
        lines += [f"| `index build`, {label}: embedding stage | {build[path + '_embed']:.0f} | "
                  f"{build[path + '_embed'] / build['raw']:.2f} |",
                  f"| `index build`, {label}: end to end | {build[path]:.0f} | {build[path] / build['raw']:.2f} |"]
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main, "python -m bench.search_service")
