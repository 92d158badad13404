"""Cost against gallery size: every plan the index planner considers, at 10k, 100k, 1M and 10M
vectors, side by side in one run, with a PNG of latency, memory and recall against size.

    python -m bench.scale --model-repo models/demo --corpus demo/corpus --real CORPUS [CORPUS ...] \
        [--smoke] [--doc PATH]

The 10k gallery is real: faces of the `--real` corpora embedded by the served face encoder. The
larger ones are synthetic, matched to those embeddings: identity centres drawn from a Gaussian with
the real identity means' mean and covariance, and each identity's items from the real pooled
within-identity covariance around it, 4 items per identity as in the corpora. A synthetic gallery
of the real one's size is built too, and its exact 10th-neighbour distances are set beside the
real ones'. Queries are real voices of the same corpora through the voice encoder: one set tunes
the plans (as `index build` does), a disjoint one measures recall@10 against exact search.

Per plan: build time (train, add, tune), bytes per item (the planner's count and the file's),
resident memory and replica start-up of a fresh process reading the version (page cache dropped
first when allowed), plain and memory-mapped; search p50 / p99 at batch 1 and QPS at batch 1,000;
and, up to `--service-max` items, SearchFaces through `facevoice serve` at concurrency 1 and 32.
The PNG goes to images/index/scale.png beside the `--doc` (docs/ by default).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from bench.report import MADE, machine, parse, smoke_release
from bench.report import publish as publish_section
from bench.search_service import ServeProcess, load
from devtools.local_servers import rss_bytes
from facevoice.cli import run_script
from facevoice.service.build import embed_modality, gallery_rows
from facevoice.service.embedder import Embedder
from facevoice.service.gallery import Item
from facevoice.service.planner import KINDS, ground_truth, plan_and_build, recall
from facevoice.service.repository import FACE, VOICE, open_repository
from facevoice.service.runners import EmbeddedRunner
from facevoice.service.versions import load_version, publish, write_version
from facevoice.v1 import facevoice_pb2 as pb

PER_IDENTITY = 4
IMAGES = Path("images") / "index"  # the plot's place, relative to the document that shows it


def real_embeddings(model_repo: Path, corpora: list[Path], faces: int, voices: int, work: Path
                    ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Face embeddings (with identities) and voice-query embeddings of real corpora."""
    emb = Embedder(open_repository(model_repo), EmbeddedRunner(model_repo, 2))
    f_rows, v_rows = [], []
    for c in corpora:
        rows = gallery_rows(c, None)
        f_rows += rows.get("face", [])
        v_rows += rows.get("voice", [])
    f = embed_modality(emb, f_rows[:faces], "face", work / "faces", 32, 2, True)
    v = embed_modality(emb, v_rows[:: max(1, len(v_rows) // voices)][:voices], "voice", work / "voices", 32, 2, True)
    return f.vectors[FACE], [it.identity for it in f.items], v.vectors[VOICE]


def fit(x: np.ndarray, identities: list[str]) -> dict:
    """The real gallery's between- and within-identity Gaussians."""
    ids = np.unique(identities, return_inverse=True)[1]
    means = np.stack([x[ids == i].mean(0) for i in range(ids.max() + 1)])
    within = x - means[ids]
    return {"mu": means.mean(0), "between": np.linalg.cholesky(np.cov(means.T) + 1e-6 * np.eye(x.shape[1])),
            "within": np.linalg.cholesky(np.cov(within.T) + 1e-6 * np.eye(x.shape[1]))}


def synthetic(stats: dict, n: int, seed: int) -> np.ndarray:
    """n vectors of n / 4 synthetic identities, in blocks (10M x 128 in float64 would not fit)."""
    rng = np.random.default_rng(seed)
    d = len(stats["mu"])
    out = np.empty((n, d), np.float32)
    block = 1 << 20
    for s in tqdm(range(0, n, block), desc=f"synthetic {n:,}", leave=False):
        m = min(block, n - s)
        centres = stats["mu"] + rng.standard_normal((-(-m // PER_IDENTITY), d)) @ stats["between"].T
        items = np.repeat(centres, PER_IDENTITY, axis=0)[:m] + rng.standard_normal((m, d)) @ stats["within"].T
        out[s:s + m] = items
    return out


def probe(root: Path, version: str, model_version: str, mmap: bool, queries: np.ndarray, whole: bool,
          drop_caches: bool = True) -> dict:
    """Start-up and resident memory of a fresh process that reads the version's index (and, when
    `whole`, the whole version as the service does: checksums, items, gallery); the page cache
    dropped first when allowed and `drop_caches` (a smoke run leaves the machine's cache alone)."""
    q = root / "probe-queries.npy"
    np.save(q, queries)
    try:
        if not drop_caches:
            raise OSError("not asked to")
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        cold = True
    except OSError:
        cold = False
    cmd = [sys.executable, "-m", "bench.scale", "--probe", str(root), version, model_version, str(q),
           *(["--mmap"] if mmap else []), *(["--whole"] if whole else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "cold": cold}


def run_probe(root: str, version: str, model_version: str, queries: str, mmap: bool, whole: bool) -> None:
    faiss.omp_set_num_threads(1)
    q = np.load(queries)[:200]
    before = rss_bytes()
    t = time.perf_counter()
    index = faiss.read_index(str(Path(root) / "face" / version / "index.faiss"), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
    out = {"start_s": time.perf_counter() - t, "rss_loaded": rss_bytes() - before}
    index.search(q, 10)
    out["rss_searched"] = rss_bytes() - before
    del index
    if whole:
        before = rss_bytes()
        t = time.perf_counter()
        g = load_version(Path(root), "face", version, model_version, mmap=mmap)
        out["version_s"] = time.perf_counter() - t
        for v in q:
            g.search(v, 10)
        out["version_rss"] = rss_bytes() - before
    print(json.dumps(out))


def latencies(index: faiss.Index, queries: np.ndarray, seconds: float) -> dict:
    """Batch 1 on 1 thread (p50 / p99 ms), then batch 1,000 on 2 threads (QPS)."""
    faiss.omp_set_num_threads(1)
    lat, stop = [], time.monotonic() + seconds
    for i in range(10**9):
        t = time.perf_counter()
        index.search(queries[i % len(queries)][None], 10)
        lat.append(time.perf_counter() - t)
        if time.monotonic() > stop and len(lat) >= 20:
            break
    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    index.search(queries[:1000], 10)
    qps = min(1000, len(queries)) / (time.perf_counter() - t)
    lat.sort()
    return {"p50": 1000 * lat[len(lat) // 2], "p99": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], "qps": qps}


def service(args, root: Path, voices: list[bytes]) -> dict:
    with ServeProcess(args, root, 32, []) as stub:
        k = iter(range(10**9))

        def call(stub=stub):
            return stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=voices[next(k) % len(voices)]),
                                                          top_k=10), timeout=60)

        one = load(call, 1, args.seconds)
        many = load(call, 32, args.seconds)
    return {"p50": one["p50"], "qps32": many["qps"], "errors": one["errors"] + many["errors"]}


def measure(args, x: np.ndarray, kind: str, tune_q: np.ndarray, eval_q: np.ndarray, truth: np.ndarray,
            model_version: str, work: Path, voices: list[bytes]) -> dict:
    """One plan at one size: build, store, start, search, serve."""
    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    index, plan = plan_and_build(x, "l2", exact_below=0, kind=kind, target_recall=args.min_recall, queries=tune_q,
                                 memory_budget="1TB", progress=True)
    build_s = time.perf_counter() - t
    r = recall(index.search(eval_q, 10)[1], truth)
    lat = latencies(index, eval_q, args.seconds)
    root = work / f"{len(x)}-{kind}"
    items = [Item(f"g{i}", f"p{i // PER_IDENTITY}") for i in range(len(x))]
    version = write_version(root, "face", index, items, plan, model_version=model_version, metric="l2")
    publish(root, "face", version)
    del index
    file_bytes = (root / "face" / version / "index.faiss").stat().st_size
    whole = len(x) <= args.service_max
    plain, mapped = (probe(root, version, model_version, m, eval_q, whole, not args.smoke) for m in (False, True))
    svc = service(args, root, voices) if len(x) <= args.service_max else None
    shutil.rmtree(root)
    out = {"size": len(x), "kind": kind, "factory": plan.factory, "params": plan.params, "build_s": build_s,
           "recall": r, "tuned_recall": plan.recall_at_10, "bytes_per_item": plan.bytes_per_item,
           "file_bytes_per_item": file_bytes / len(x), "plain": plain, "mapped": mapped, **lat, "service": svc}
    print(json.dumps(out), flush=True)
    return out


def kinds_for(size: int, hnsw_max: int, flat_max: int, kinds: tuple[str, ...] = KINDS) -> list[str]:
    return [k for k in kinds if not (k == "hnsw" and size > hnsw_max) and not (k == "flat" and size > flat_max)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-repo", type=Path, default=Path("models/demo"))
    p.add_argument("--corpus", type=Path, default=Path("demo/corpus"), help="its voices are the service's queries")
    p.add_argument("--real", type=Path, nargs="+", help="corpora whose faces are the real gallery (default --corpus)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000])
    p.add_argument("--hnsw-max", type=int, default=1_000_000, help="HNSW above this is not built (its build time)")
    p.add_argument("--flat-max", type=int, default=10_000_000)
    p.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS, help="the plans measured (default all)")
    p.add_argument("--service-max", type=int, default=1_000_000,
                   help="SearchFaces through the service up to this size (its item table lives in Python)")
    p.add_argument("--min-recall", type=float, default=0.95)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1, help="the service's FAISS and onnxruntime threads")
    p.add_argument("--out", type=Path, help="results JSON (default: a temp dir)")
    p.add_argument("--results", type=Path, help="only tabulate and plot an earlier results JSON")
    p.add_argument("--probe", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--mmap", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    args = parse(p, argv, smoke={"corpus": MADE, "sizes": [1000], "seconds": 0.3, "service_max": 1000,
                                 "kinds": ["flat", "ivf-pq"]})  # smoke: the exact baseline and the most involved plan
    if args.probe:
        run_probe(*args.probe, mmap=args.mmap, whole=args.whole)
        return 0
    data = json.loads(args.results.read_text()) if args.results else run(smoke_release(args))
    image = args.doc.parent / IMAGES / "scale.png"
    plot(data["plans"], image)
    publish_section("scale", report(data), args)
    print(f"and {image}")
    return 0


def run(args) -> dict:
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="facevoice-scale-"))
    manifest = open_repository(args.model_repo)
    model_version = manifest.space(FACE).version
    real, identities, queries = real_embeddings(args.model_repo, args.real or [args.corpus], max(args.sizes[0], 1),
                                                2000, work)
    half = min(1000, len(queries) // 2)  # 1,000 tune and the rest measure; half each of fewer (a smoke's corpus)
    tune_q, eval_q = queries[:half], queries[half:]
    stats = fit(real, identities)
    rows = gallery_rows(args.corpus, ["test"])
    voices = [r.path.read_bytes() for r in rows.get("voice", [])][:16]
    check = {}
    for name, x in (("real", real), ("synthetic", synthetic(stats, len(real), 1))):
        d = faiss.knn(eval_q, x, 10)[0]
        check[name] = {"d1": float(np.median(np.sqrt(d[:, 0]))), "d10": float(np.median(np.sqrt(d[:, 9])))}
    plans = []
    try:
        for size in args.sizes:
            x = real[:size] if size <= len(real) else synthetic(stats, size, size)
            truth = ground_truth(x, eval_q, "l2", 10)
            for kind in kinds_for(size, args.hnsw_max, args.flat_max, args.kinds):
                plans.append(measure(args, x, kind, tune_q, eval_q, truth, model_version, work, voices))
            del x
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data = {"command": " ".join(["python -m bench.scale", *sys.argv[1:]]), "machine": machine(),
            "real": len(real), "check": check, "plans": plans, "seconds": time.perf_counter() - start}
    out = args.out or (args.doc.parent if args.smoke else Path(tempfile.gettempdir())) / "facevoice-scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    print(f"results in {out}")
    return data


def report(data: dict) -> str:
    c = data["check"]
    lines = ["## Gallery size: every index plan from 10k to 10M vectors", "",
             f"Command: `{data['command']}` on {data['machine']}; {data['seconds'] / 60:.0f} minutes. "
             f"The {data['real']:,}-vector gallery is the real face embeddings; larger ones are synthetic, matched "
             "to them (identity centres from the real identity means' Gaussian, 4 items each from the real "
             "within-identity Gaussian). Check at the real size: median distance of a voice query to its "
             f"nearest / 10th face is {c['real']['d1']:.3f} / {c['real']['d10']:.3f} real and "
             f"{c['synthetic']['d1']:.3f} / {c['synthetic']['d10']:.3f} synthetic. Queries are 1,000 real voice "
             "embeddings the tuning did not see; recall@10 is against exact search.", "",
             "Batch 1: one query at a time on 1 thread; batched: 1,000 queries in one call on 2 threads. Memory: "
             "RSS of a fresh process after reading the index file and answering 200 queries, plain / memory-mapped "
             "(a mapped index's RSS counts only the pages its searches touched); start-up: reading the index file, "
             "page cache dropped first. Service: `facevoice serve` (embedded "
             "runner), SearchFaces of real voice clips, p50 at concurrency 1 and QPS at 32. Ratios are against "
             "the exact (flat) index of the same size, measured in the same run.", "",
             "| size | plan | params | build s | B/item (plan / file) | RSS MB plain / mapped | start-up s plain / "
             "mapped | recall@10 | batch-1 p50 / p99 ms | p50 / flat | batched QPS | QPS / flat | service p50 ms "
             "| service QPS at 32 |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    flat = {r["size"]: r for r in data["plans"] if r["kind"] == "flat"}
    for r in data["plans"]:
        f = flat.get(r["size"])
        params = ", ".join(f"{k} {v}" for k, v in r["params"].items() if k != "nlist")
        svc = r["service"]
        lines.append(
            f"| {r['size']:,} | {r['factory']} | {params} | {r['build_s']:.0f} | {r['bytes_per_item']:.0f} / "
            f"{r['file_bytes_per_item']:.0f} | {r['plain']['rss_searched'] / 1e6:.0f} / "
            f"{r['mapped']['rss_searched'] / 1e6:.0f} | {r['plain']['start_s']:.2f} / {r['mapped']['start_s']:.2f} | "
            f"{r['recall']:.3f} | {r['p50']:.3f} / {r['p99']:.3f} | {r['p50'] / f['p50'] if f else float('nan'):.3f} | "
            f"{r['qps']:,.0f} | {r['qps'] / f['qps'] if f else float('nan'):.1f} | "
            + (f"{svc['p50']:.2f} | {svc['qps32']:.0f} |" if svc else "- | - |"))
    lines += ["", "A replica reads more than the index: checksums, the items' metadata and the gallery's attribute "
              "tables. The whole version, as `load_version` reads it (memory-mapped), page cache dropped first:", "",
              "| size | plan | whole version start-up s | its RSS MB | of which the index file, s |",
              "|---|---|---|---|---|"]
    for r in data["plans"]:
        if "version_s" in r["mapped"]:
            lines.append(f"| {r['size']:,} | {r['factory']} | {r['mapped']['version_s']:.2f} | "
                         f"{r['mapped']['version_rss'] / 1e6:.0f} | {r['mapped']['start_s']:.2f} |")
    lines += ["", *published(data["plans"]), "",
              "![latency, memory and recall against gallery size](images/index/scale.png)"]
    return "\n".join(lines)


def published(plans: list[dict]) -> list[str]:
    """Our figures beside FAISS's own, with why they differ."""
    at = {(r["size"], r["kind"]): r for r in plans}
    lines = ["Beside FAISS's published figures (different data and machines, so the ratios say how far, not "
             "which is better):", ""]
    big = max((r["size"] for r in plans), default=0)
    ivf = at.get((min(big, 1_000_000), "ivf-flat"))
    if ivf:
        ms = 1000 / ivf["qps"]
        lines.append(f"- FAISS's wiki ('Indexing 1M vectors') times 1M-vector IVF indexes in batch mode on 20 threads, "
                     "and warns that one thread is about 10x slower and one query at a time another 2-3x. Our "
                     f"{ivf['size']:,} IVF-Flat at nprobe {ivf['params'].get('nprobe')}: {ms:.3f} ms per query "
                     f"batched on 2 threads, {ivf['p50']:.3f} ms one at a time on 1 thread "
                     f"({ivf['p50'] / ms:.1f}x apart, where FAISS expects 2x from the threads and 2-3x from "
                     "batching): with 2 cores, batching gains little here.")
    pq = at.get((min(big, 1_000_000), "ivf-pq"))
    if pq:
        lines.append(f"- FAISS's sift1M run of IVF1024,PQ32x4fs (benchs/bench_ivf_fastscan.py, posted by a FAISS "
                     "maintainer) reaches R@1 0.961 at nprobe 16 in 0.0167 ms per query, batched, many threads. Our "
                     f"{pq['factory']} at {pq['size']:,}: recall@10 {pq['recall']:.3f} at nprobe "
                     f"{pq['params'].get('nprobe')} in {1000 / pq['qps']:.3f} ms per query batched "
                     f"({1000 / pq['qps'] / 0.0167:.0f}x): 8-bit PQ codes scanned without SIMD fast-scan, an exact "
                     "re-rank, 2 cores, and our recall target (0.95 at 10) is stricter than R@1.")
    hnsw = at.get((min(big, 1_000_000), "hnsw"))
    if hnsw:
        lines.append(f"- FAISS's benchs/bench_hnsw.py on sift1M: HNSW32 efSearch 16, 0.153 ms per query, R@1 0.921. "
                     f"Ours at {hnsw['size']:,}, efSearch {hnsw['params'].get('efSearch')}: {hnsw['p50']:.3f} ms one "
                     f"query at a time, recall@10 {hnsw['recall']:.3f}; its build took {hnsw['build_s']:.0f} s "
                     "on 2 cores, which is why HNSW is not a default candidate.")
    top = max((r for r in plans if r["size"] == big), key=lambda r: r["qps"], default=None)
    if top:
        lines.append(f"- FAISS's Deep1B on 4 GPUs: 1-R@10 0.865 at 0.24 s per 10,000 queries (24 us each). Our "
                     f"fastest plan at {big:,} on 2 CPU cores, {top['factory']}: {1e6 / top['qps']:.0f} us per query "
                     f"batched ({1e6 / top['qps'] / 24:.0f}x) at recall@10 {top['recall']:.3f}, on 1/100 of the "
                     "vectors: the GPU figure is what bench/gpu_check.sh measures when a GPU is lent.")
    return lines


def plot(plans: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    kinds = sorted({r["kind"] for r in plans}, key=KINDS.index)
    for kind in kinds:
        rows = sorted((r for r in plans if r["kind"] == kind), key=lambda r: r["size"])
        n = [r["size"] for r in rows]
        axes[0].plot(n, [r["p50"] for r in rows], "o-", label=kind)
        axes[1].plot(n, [r["qps"] for r in rows], "o-", label=kind)
        axes[2].plot(n, [r["mapped"]["rss_searched"] / 1e6 if kind != "flat" else r["plain"]["rss_searched"] / 1e6
                         for r in rows], "o-", label=kind)
        axes[3].plot(n, [r["recall"] for r in rows], "o-", label=kind)
    for ax, title, log in zip(axes, ("batch-1 p50 (ms)", "batched QPS", "resident MB after 200 queries",
                                     "recall@10 vs exact"), (True, True, True, False), strict=True):
        ax.set_xscale("log")
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("gallery vectors")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    run_script(main, "python -m bench.scale")
