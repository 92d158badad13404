"""Vector engines with a single-process form we can run here, on the same gallery: our FAISS gallery
(the baseline), Milvus through Milvus Lite's server, and Qdrant's local mode. Recall@10 against
exact search, unfiltered and under filters passing 1%, 10% and 50%; batch-1 latency and QPS; load
time; and what an acknowledged write survives (the writer killed with SIGKILL straight after).

    python -m bench.engines [--size 100000] [--queries 200] [--smoke] [--doc PATH]

Vectors are synthetic (clustered, 128-d), items carry the `band` and `gender` attributes of
bench.itemtable, queries are gallery rows moved by noise. One client thread, as a replica's handler
calls its gallery.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from bench.itemtable_probe import FILTERS, columns, items
from bench.report import machine, parse
from bench.report import publish as publish_section
from bench.search_service import clustered
from devtools.local_servers import LocalMilvus
from facevoice.cli import run_script
from facevoice.service.gallery import Gallery
from facevoice.service.planner import plan_and_build, tuning_queries

SHOWN = ("1%", "10%", "50%")


class Faiss:
    name = "FAISS gallery (ours)"

    def load(self, x, its, work):
        index, plan = plan_and_build(x, "l2", queries=None)
        self.g = Gallery(index, dict(enumerate(its)), "l2", plan)
        return f"{plan.factory} {', '.join(f'{k} {v}' for k, v in plan.params.items() if k != 'nlist')}"

    def search(self, q, k, filters):
        return [int(it.item_id[1:]) for it, _ in self.g.search(q, k, filters)]

    def close(self):
        pass


class Milvus:
    name = "Milvus Lite 3 (server, HNSW M16)"

    def load(self, x, its, work):
        from pymilvus import DataType

        from facevoice.service.milvus import BATCH, INDEX, _row, connect

        self.server = LocalMilvus(data_dir=work / "milvus").start()
        self.c = connect(self.server.uri)
        schema = self.c.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("item_id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("identity", DataType.VARCHAR, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=x.shape[1])
        ip = self.c.prepare_index_params()
        ip.add_index("vector", metric_type="L2", **INDEX)
        self.c.create_collection("g", schema=schema, index_params=ip)
        for s in range(0, len(x), BATCH):
            self.c.insert("g", [_row(it, v) for it, v in zip(its[s:s + BATCH], x[s:s + BATCH], strict=True)])
        self.c.load_collection("g")
        from facevoice.service.milvus import EF

        return f"HNSW M 16, efConstruction 200, ef {EF}"

    def search(self, q, k, filters):
        from facevoice.service.milvus import EF, expression

        hits = self.c.search("g", data=[q.tolist()], limit=k, filter=expression(filters or {}),
                             search_params={"params": {"ef": max(EF, k)}})[0]
        return [int(h["item_id"][1:]) for h in hits]

    def close(self):
        self.c.close()
        self.server.stop()


class Qdrant:
    name = "Qdrant local mode (qdrant-client)"

    def load(self, x, its, work):
        from qdrant_client import QdrantClient, models

        self.m = models
        self.c = QdrantClient(path=str(work / "qdrant"))
        self.c.create_collection("g", vectors_config=models.VectorParams(size=x.shape[1],
                                                                          distance=models.Distance.EUCLID))
        for s in range(0, len(x), 2000):
            self.c.upsert("g", points=[models.PointStruct(id=s + i, vector=v.tolist(), payload=it.attributes)
                                       for i, (it, v) in enumerate(zip(its[s:s + 2000], x[s:s + 2000], strict=True))])
        return "exact (local mode has no index)"

    def search(self, q, k, filters):
        m = self.m
        f = m.Filter(must=[m.FieldCondition(key=n, match=m.MatchAny(any=sorted(v))) for n, v in filters.items()]) \
            if filters else None
        return [p.id for p in self.c.query_points("g", query=q.tolist(), limit=k, query_filter=f).points]

    def close(self):
        self.c.close()


ENGINES = {"faiss": Faiss, "milvus": Milvus, "qdrant": Qdrant}


def truth(x, q, n):
    band, _ = columns(n)
    out = {"": faiss.knn(q, x, 10)[1]}
    for name in SHOWN:
        keep = np.isin(band, ["abcde".index(b) for b in FILTERS[name]["band"]])
        rows = np.flatnonzero(keep)
        out[name] = rows[faiss.knn(q, x[rows], min(10, len(rows)))[1]]
    return out


def measure(engine, x, its, q, exact, work) -> dict:
    t = time.perf_counter()
    setting = engine.load(x, its, work)
    out = {"engine": engine.name, "setting": setting, "load_s": time.perf_counter() - t}
    for name in ("", *SHOWN):
        filters = {k: set(v) for k, v in FILTERS[name].items()} if name else None
        lat, rec = [], []
        for v, ex in zip(q, exact[name], strict=True):
            s = time.perf_counter()
            got = engine.search(v, 10, filters)
            lat.append(time.perf_counter() - s)
            rec.append(len(set(got) & set(ex)) / len(ex))
        out[name or "all"] = {"recall": float(np.mean(rec)), "p50_ms": 1000 * float(np.median(lat)),
                              "qps": len(lat) / sum(lat)}
    engine.close()
    return out


def durable(engine: str, work: Path) -> str:
    """One upsert acknowledged, then the writer (the Milvus server, or the process holding Qdrant's
    local files) killed with SIGKILL; reopened, is the item there?"""
    work.mkdir(parents=True, exist_ok=True)
    code = DURABILITY[engine].format(work=str(work))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    line = child.stdout.readline().split()
    for pid in [child.pid, *(int(p) for p in line[1:])]:  # the writer and, for Milvus, its server
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    child.wait()
    if not line or line[0] != "acked":
        return f"no acknowledgement ({line!r})"
    check = subprocess.run([sys.executable, "-c", CHECK[engine].format(work=str(work))], capture_output=True,
                           text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    return {"1": "kept", "0": "lost"}.get(check.stdout.strip()[-1:], f"check failed: {check.stderr[-300:]}")


DURABILITY = {
    "milvus": """
from pathlib import Path
from devtools.local_servers import LocalMilvus, free_port
from facevoice.service.milvus import connect
port = free_port(); Path("{work}/port").write_text(str(port))
m = LocalMilvus(port=port, data_dir=Path("{work}/m")).start()
c = connect(m.uri)
from pymilvus import DataType
s = c.create_schema(auto_id=False); s.add_field("item_id", DataType.VARCHAR, is_primary=True, max_length=64)
s.add_field("vector", DataType.FLOAT_VECTOR, dim=2)
ip = c.prepare_index_params(); ip.add_index("vector", index_type="FLAT", metric_type="L2")
c.create_collection("d", schema=s, index_params=ip); c.load_collection("d")
c.insert("d", [{{"item_id": "x", "vector": [0.0, 1.0]}}])
print("acked", m.proc.pid, flush=True)
import time; time.sleep(60)
""",
    "qdrant": """
from qdrant_client import QdrantClient, models
c = QdrantClient(path="{work}/q")
c.create_collection("d", vectors_config=models.VectorParams(size=2, distance=models.Distance.EUCLID))
c.upsert("d", points=[models.PointStruct(id=1, vector=[0.0, 1.0])])
print("acked", flush=True)
import time; time.sleep(60)
""",
}
CHECK = {
    "milvus": """
from pathlib import Path
from devtools.local_servers import LocalMilvus
from facevoice.service.milvus import connect, _loaded
m = LocalMilvus(port=int(Path("{work}/port").read_text()), data_dir=Path("{work}/m")).start()
c = connect(m.uri); _loaded(c, "d")
print(len(c.get("d", ids=["x"])))
m.stop()
""",
    "qdrant": """
from qdrant_client import QdrantClient
c = QdrantClient(path="{work}/q")
print(len(c.retrieve("d", ids=[1])) if c.collection_exists("d") else 0)
""",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    p.add_argument("--out", type=Path)
    args = parse(p, argv, smoke={"size": 2000, "queries": 20})
    start = time.perf_counter()
    faiss.omp_set_num_threads(1)
    x = clustered(args.size, 128, seed=3)
    its = items(args.size)
    q = tuning_queries(x, args.queries, np.random.default_rng(11))
    exact = truth(x, q, args.size)
    rows, kept = [], {"faiss": "not killed here: its gallery write log is fsynced before the acknowledgement, "
                               "and bench/reliability.py kills writers (docs/reliability.md)"}
    for name in tqdm(args.engines, desc="engines"):
        work = Path(tempfile.mkdtemp(prefix=f"facevoice-engine-{name}-"))
        try:
            rows.append(measure(ENGINES[name](), x, its, q, exact, work))
            if name != "faiss":
                kept[name] = durable(name, work / "durability")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(rows[-1]), flush=True)
    data = {"command": " ".join(["python -m bench.engines", *sys.argv[1:]]), "machine": machine(), "size": args.size,
            "queries": len(q), "rows": rows, "durability": kept, "seconds": time.perf_counter() - start}
    if args.out:
        args.out.write_text(json.dumps(data, indent=1))
    publish_section("engines", report(data), args)
    return 0


def report(data: dict) -> str:
    lines = ["## Vector engines on one gallery: FAISS, Milvus Lite, Qdrant local", "",
             f"Command: `{data['command']}` on {data['machine']}; {data['seconds'] / 60:.1f} minutes. "
             f"{data['size']:,} clustered 128-d vectors with the item table bench's attributes, {data['queries']} "
             "queries near gallery rows, one client thread. Recall@10 against exact search under the same filter.",
             "", "| engine | setting | load s | recall@10 | " + " | ".join(f"filtered {s} recall" for s in SHOWN)
             + " | p50 ms | QPS | filtered 10% p50 ms |", "|---|---|---|---|" + "---|" * len(SHOWN) + "---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['engine']} | {r['setting']} | {r['load_s']:.1f} | {r['all']['recall']:.3f} | "
                     + " | ".join(f"{r[s]['recall']:.3f}" for s in SHOWN)
                     + f" | {r['all']['p50_ms']:.2f} | {r['all']['qps']:.0f} | {r['10%']['p50_ms']:.2f} |")
    lines += ["", "An acknowledged write, the writer killed with SIGKILL straight after:", ""]
    lines += [f"- {k}: {v}" for k, v in data["durability"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main, "python -m bench.engines")
