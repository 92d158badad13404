"""The columnar item table against the JSON lines it replaced, from 10k to 10M items, in one run:
a replica's start-up (page cache evicted), its resident bytes per item beyond the index,
filtered search (0.1-50% of the gallery) recall@10, top-k filled and latency, and SearchFaces
through `facevoice serve`. Then NumPy against Arrow IPC for the columns themselves.

    python -m bench.itemtable [--sizes 10000 100000 1000000 10000000] [--compare REF]
        [--legacy-max 1000000] [--service-max 10000000] [--smoke] [--doc PATH]

REF (default 8acc748, the last commit with items.jsonl) runs in its own processes from its own
code (git archive), on the same index file, items and queries. Every size uses one index: IVF-PQ
with its exact re-rank (the plan that keeps a 10M gallery in 0.7 GB), built once and stored by
both codes. Vectors are drawn as bench.scale draws them, matched to the demo's face embeddings;
queries are the demo's voice embeddings. Items carry a `band` attribute (0.1 / 0.9 / 9 / 40 / 50%
in bands a-e) and a gender, so the filters pass 0.1%, 1%, 10% and 50% of the gallery.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from bench.itemtable_probe import FILTERS, columns
from bench.report import MADE, machine, parse, smoke_release
from bench.report import publish as publish_section
from bench.scale import fit, synthetic
from bench.search_breakdown import reference_code
from bench.search_service import ServeProcess, load
from facevoice.cli import run_script
from facevoice.service.build import gallery_rows
from facevoice.service.planner import plan_and_build
from facevoice.service.repository import FACE, open_repository
from facevoice.service.versions import current_version, load_version
from facevoice.v1 import facevoice_pb2 as pb

PROBE = Path(__file__).with_name("itemtable_probe.py")
REF = "8acc748"


def demo_embeddings(index_root: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The demo's face embeddings with their identities, and its voice embeddings (the queries)."""
    out = []
    for name in ("face", "voice"):
        version = current_version(index_root, name)
        meta = json.loads((index_root / name / version / "meta.json").read_text())
        g = load_version(index_root, name, version, meta["model_version"])
        rows = np.arange(g.table.n)
        out.append((g.cpu_index.reconstruct_batch(rows), [g.item(int(r)).identity for r in rows]))
    return out[0][0], out[0][1], out[1][0]


def probe(args: list[str], env: dict | None = None) -> dict:
    got = subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=3600,
                         env=None if env is None else {**os.environ, **env})
    if got.returncode:
        raise RuntimeError(f"probe {args[0]} failed:\n{got.stderr[-3000:]}")
    return json.loads(got.stdout.strip().splitlines()[-1])


def truth(x: np.ndarray, q: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Exact top-10 rows of each query, unfiltered and under each filter."""
    band, female = columns(n)
    out = {"": faiss.knn(q, x, 10)[1]}
    for name, f in FILTERS.items():
        keep = np.isin(band, ["abcde".index(b) for b in f["band"]])
        if "gender" in f:
            keep &= female
        rows = np.flatnonzero(keep)
        out[name] = rows[faiss.knn(q, x[rows], min(10, len(rows)))[1]]  # fewer when fewer pass
    return out


def score(hits: list[list[int]], exact: np.ndarray) -> tuple[float, float]:
    """recall@10 against exact search under the same filter, and the share of queries given every
    hit they could have (10, or as many items as pass the filter)."""
    r = np.mean([len(set(h) & set(t)) / len(t) for h, t in zip(hits, exact, strict=True)])
    return float(r), float(np.mean([len(h) == len(t) for h, t in zip(hits, exact, strict=True)]))


def service(args, root: Path, voices: list[bytes], env: dict | None, extra: list[str]) -> dict:
    t = time.perf_counter()
    with ServeProcess(args, root, 32, extra, env=env) as stub:
        ready_s = time.perf_counter() - t
        k = iter(range(10**9))

        def call(filtered=False, stub=stub):
            f = [pb.AttributeFilter(name="band", values=["a", "b", "c"])] if filtered else []
            return stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=voices[next(k) % len(voices)]),
                                                          top_k=10, filters=f), timeout=60)

        one = load(call, 1, args.seconds)
        filt = load(lambda: call(True), 1, args.seconds)
        many = load(call, 32, args.seconds)
    return {"ready_s": ready_s, "p50": one["p50"], "filtered_p50": filt["p50"], "qps32": many["qps"],
            "errors": one["errors"] + filt["errors"] + many["errors"]}


def arrow_vs_numpy(work: Path, n: int) -> dict:
    """The band column and the item ids stored both ways: open (mapped), one filter, bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.ipc as ipc

    from facevoice.service.itemtable import Dictionary, ItemTable, Strings

    band, _ = columns(n)
    ids = [f"g{i}" for i in range(n)]
    out = {}
    d = work / "numpy"
    d.mkdir()
    ItemTable(Strings.of(ids), Dictionary(np.zeros(n, np.int8), Strings.of(["p"])),
              {"band": Dictionary(band.astype(np.int8), Strings.of(list("abcde")))},
              np.zeros(n, np.uint64), np.zeros(n, np.uint32)).write(d)
    t = time.perf_counter()
    table = ItemTable.open(d)
    out["numpy_open_ms"] = 1000 * (time.perf_counter() - t)
    t = time.perf_counter()
    table.mask("band", frozenset("abc"))
    out["numpy_filter_ms"] = 1000 * (time.perf_counter() - t)
    out["numpy_bytes"] = sum(p.stat().st_size for p in d.iterdir() if ".id_" not in p.name)  # as Arrow's: no lookup
    path = work / "items.arrow"
    tab = pa.table({"item_id": pa.array(ids), "band": pa.DictionaryArray.from_arrays(
        pa.array(band.astype(np.int8)), pa.array(list("abcde")))})
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, tab.schema) as w:
        w.write_table(tab, max_chunksize=1 << 20)
    t = time.perf_counter()
    mapped = ipc.open_file(pa.memory_map(str(path))).read_all()
    out["arrow_open_ms"] = 1000 * (time.perf_counter() - t)
    t = time.perf_counter()
    pc.is_in(mapped["band"], value_set=pa.array(list("abc")))
    out["arrow_filter_ms"] = 1000 * (time.perf_counter() - t)
    out["arrow_bytes"] = path.stat().st_size
    out["n"] = n
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-repo", type=Path, default=Path("models/demo"))
    p.add_argument("--corpus", type=Path, default=Path("demo/corpus"), help="its voices are the service's queries")
    p.add_argument("--index-root", type=Path, default=Path("demo/indexes"), help="the vectors are matched to these")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000])
    p.add_argument("--compare", default=REF, help="the commit whose item table is measured beside today's")
    p.add_argument("--legacy-max", type=int, default=1_000_000, help="REF's table is measured up to this size")
    p.add_argument("--service-max", type=int, default=10_000_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="results JSON (default: a temp dir)")
    p.add_argument("--results", type=Path, help="only tabulate an earlier results JSON")
    args = parse(p, argv, smoke={"corpus": MADE, "index_root": MADE, "sizes": [2000], "seconds": 0.3, "queries": 20,
                                 "legacy_max": 2000, "service_max": 2000, "compare": "HEAD"})
    data = json.loads(args.results.read_text()) if args.results else run(smoke_release(args))
    publish_section("itemtable", report(data), args)
    return 0


def run(args) -> dict:
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="facevoice-itemtable-"))
    model_version = open_repository(args.model_repo).space(FACE).version
    faces, identities, voices_x = demo_embeddings(args.index_root)
    stats = fit(faces, identities)
    half = min(args.queries, len(voices_x) // 2)  # half tune, half measure (a smoke's corpus has few voices)
    q = np.ascontiguousarray(voices_x[: 2 * half], np.float32)
    tune_q, eval_q = q[:half], q[half:]
    np.save(work / "queries.npy", eval_q)
    (work / "filters.json").write_text(json.dumps(FILTERS))
    voices = [r.path.read_bytes() for r in gallery_rows(args.corpus, ["test"]).get("voice", [])][:16]
    tree, sha = reference_code(args.compare)
    codes = [("today", None), (f"{args.compare} ({sha})", {"PYTHONPATH": str(tree)})]
    rows = []
    for n in args.sizes:
        x = synthetic(stats, n, n)
        t = time.perf_counter()
        faiss.omp_set_num_threads(2)
        index, plan = plan_and_build(x, "l2", exact_below=0, kind="ivf-pq", queries=tune_q, memory_budget="1TB",
                                     progress=True)
        build_s = time.perf_counter() - t
        faiss.write_index(index, str(work / "index.faiss"))
        del index
        (work / "plan.json").write_text(json.dumps(asdict(plan)))
        exact = truth(x, eval_q, n)
        del x
        for label, env in tqdm(codes, desc=f"{n:,} items", leave=False):
            if env is not None and n > args.legacy_max:
                continue
            root = work / f"root-{n}-{'ref' if env else 'today'}"
            w = probe(["write", str(root), str(n), model_version, str(work / "index.faiss"), str(work / "plan.json")],
                      env)
            s = probe(["start", str(root), model_version, str(work / "queries.npy"), str(work / "filters.json")], env)
            base = probe(["start", str(root), model_version, str(work / "queries.npy"), str(work / "filters.json"),
                          "--index-only"], env)
            fast = probe(["start", str(root), model_version, str(work / "queries.npy"), str(work / "filters.json"),
                          "--verify-later"], env)
            fast.pop("filtered", None)
            filtered = {}
            for name, f in s.pop("filtered").items():
                r, filled = score(f.pop("hits"), exact[name])
                filtered[name] = {**f, "recall": r, "filled": filled}
            svc = service(args, root, voices, env, []) if n <= args.service_max else None
            if svc and env is None:  # today's code can also hash its large files after it starts serving
                svc["background"] = service(args, root, voices, env, ["--index-verify", "background"])
            row = {"size": n, "code": label, "plan": plan.factory, "params": plan.params, "build_s": build_s,
                   "write_s": w["write_s"], "files": w["files"], "start": s, "index_only": base,
                   "verify_later": None if fast.get("unsupported") else fast,
                   "filtered": filtered, "service": svc}
            print(json.dumps({k: v for k, v in row.items() if k != "files"}), flush=True)
            rows.append(row)
            shutil.rmtree(root)
    formats = arrow_vs_numpy(work, max(args.sizes))
    shutil.rmtree(work, ignore_errors=True)
    data = {"command": " ".join(["python -m bench.itemtable", *sys.argv[1:]]), "machine": machine(), "rows": rows,
            "formats": formats, "seconds": time.perf_counter() - start}
    out = args.out or Path(tempfile.gettempdir()) / "facevoice-itemtable.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    print(f"results in {out}")
    return data


def report(data: dict) -> str:
    lines = ["## Item table: columns mapped against JSON lines, 10k to 10M items", "",
             f"Command: `{data['command']}` on {data['machine']}; {data['seconds'] / 60:.0f} minutes. One IVF-PQ "
             "index with its exact re-rank per size, stored by both codes; `today` is the columnar table, the other "
             "row the commit before it (items.jsonl read into dicts), each in fresh processes. Start-up: "
             "`load_version` memory-mapped, the version's files evicted from the page cache first (cold: every "
             "cache dropped; otherwise the version's own pages, by POSIX_FADV_DONTNEED); the version's files are "
             "hashed first unless said. Beyond the index: a replica's resident memory after loading and 200 searches "
             "of each kind, from /proc/self/smaps: the item table's mapped pages, plus its heap and anonymous memory "
             "less that of a process holding only the mapped index after the same unfiltered searches, per item (the "
             "index file's own mapped pages are left out on both sides: they are page cache the kernel can drop, and "
             "the same index either way). Filtered recall@10 is against exact search over the items passing the "
             "same filter; filled: the share of queries given all 10 hits.", "",
             "Start-up marked * was measured with only the version's own pages evicted (the machine's cache "
             "could not be dropped).", "",
             "| size | code | start-up s | start-up s, large files hashed after | index file alone s | "
             "beyond the index B/item (table pages + heap) | unfiltered p50 ms | files MB (items) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        n = r["size"]
        items = sum(v for k, v in r["files"].items() if k.startswith("items")) / 1e6
        whole, alone = r["start"]["resident"], r["index_only"]["resident"]
        table, heap = whole["items"] / n, (whole["rest"] - alone["rest"]) / n
        later = f"{r['verify_later']['start_s']:.2f}" if r.get("verify_later") else "-"
        lines.append(f"| {n:,} | {r['code']} | {r['start']['start_s']:.2f}{'' if r['start']['cold'] else '*'} | "
                     f"{later} | {r['index_only']['start_s']:.2f} | {table + heap:.0f} ({table:.0f} + {heap:.0f}) | "
                     f"{r['start']['p50_ms']:.2f} | {items:.1f} |")
    lines += ["", "Filtered search (recall@10 / filled / p50 ms):", "",
              "| size | code | " + " | ".join(FILTERS) + " |", "|---|---|" + "---|" * len(FILTERS)]
    for r in data["rows"]:
        cells = [f"{f['recall']:.3f} / {f['filled']:.2f} / {f['p50_ms']:.1f}" for f in r["filtered"].values()]
        lines.append(f"| {r['size']:,} | {r['code']} | " + " | ".join(cells) + " |")
    svc = [r for r in data["rows"] if r["service"]]
    if svc:
        lines += ["", "`facevoice serve` (embedded runner), SearchFaces of real voice clips: time from the process's "
                  "start to its first answer (models loaded, version verified and mapped), p50 at concurrency 1 "
                  "unfiltered and under the 10% filter, QPS at 32:", "",
                  "| size | code | ready s | p50 ms | filtered p50 ms | QPS at 32 | errors |",
                  "|---|---|---|---|---|---|---|"]
        for r in svc:
            for label, s in ((r["code"], r["service"]), (f"{r['code']}, --index-verify background",
                                                         r["service"].get("background"))):
                if s:
                    lines.append(f"| {r['size']:,} | {label} | {s['ready_s']:.1f} | {s['p50']:.1f} | "
                                 f"{s['filtered_p50']:.1f} | {s['qps32']:.0f} | {s['errors']} |")
    f = data["formats"]
    lines += ["", f"NumPy against Arrow IPC for the columns ({f['n']:,} item ids and a dictionary-encoded attribute), "
              "mapped: open {:.1f} / {:.1f} ms, one filter {:.1f} / {:.1f} ms, files {:.0f} / {:.0f} MB "
              "(NumPy / Arrow).".format(f["numpy_open_ms"], f["arrow_open_ms"], f["numpy_filter_ms"],
                                        f["arrow_filter_ms"], f["numpy_bytes"] / 1e6, f["arrow_bytes"] / 1e6)]
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main, "python -m bench.itemtable")
