"""One side of `python -m bench.itemtable`, run as a script in a fresh process, under this tree's
code or another commit's (PYTHONPATH), so it uses only what both have: write_version,
load_version and Gallery.search.

    python bench/itemtable_probe.py write ROOT N MODEL_VERSION INDEX_FILE PLAN_JSON
    python bench/itemtable_probe.py start ROOT MODEL_VERSION QUERIES_NPY FILTERS_JSON [--index-only|--verify-later]

`write` stores the index with N synthetic items (items() below) as a published version; `start`
evicts the version's files from the page cache, loads it as a replica does (memory-mapped) and
searches, printing one JSON line: start-up, resident memory, latencies and the hits.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

BANDS = (0.001, 0.01, 0.1, 0.5)  # band "a" holds 0.1% of the items, "a"-"b" 1%, "a"-"c" 10%, "a"-"d" 50%
FILTERS = {"0.1%": {"band": ["a"]}, "1%": {"band": ["a", "b"]}, "10%": {"band": ["a", "b", "c"]},
           "50%": {"band": ["a", "b", "c", "d"]}, "50% x 10%": {"gender": ["female"], "band": ["a", "b", "c"]}}


def columns(n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Each item's band (0-4, "a"-"e") and gender (1 = female), as the bench's ground truth sees them."""
    rng = np.random.default_rng(seed)
    return np.searchsorted(BANDS, rng.random(n), side="right"), rng.random(n) < 0.5


def items(n: int):
    from facevoice.service.gallery import Item

    band, female = columns(n)
    return [Item(f"g{i}", f"p{i // 4}", {"band": "abcde"[b], "gender": "female" if f else "male"})
            for i, (b, f) in enumerate(zip(band.tolist(), female.tolist(), strict=True))]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def resident() -> dict[str, int]:
    """Resident bytes by what they map: the index file, the item table's files, the rest (heap,
    anonymous memory: Python objects, FAISS's in-memory lists)."""
    out = {"index": 0, "items": 0, "rest": 0}
    where = "rest"
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and ":" not in head[0]:
                name = Path(head[5]).name if len(head) > 5 else ""
                where = "index" if name == "index.faiss" else "items" if name.startswith("items.") else "rest"
            elif line.startswith("Rss:"):
                out[where] += int(head[1]) * 1024
    return out


def evict(path: Path) -> bool:
    """The version's files out of the page cache: every level if the kernel lets us, else each
    file's clean pages (POSIX_FADV_DONTNEED needs no privilege). True when the whole cache went."""
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        pass
    for f in Path(path).rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return False


def write(root: str, n: str, model_version: str, index_file: str, plan_json: str) -> None:
    from facevoice.service.gallery import BuildPlan
    from facevoice.service.versions import publish, write_version

    index = faiss.read_index(index_file)
    t = time.perf_counter()
    its = items(int(n))
    version = write_version(Path(root), "face", index, its, BuildPlan(**json.loads(Path(plan_json).read_text())),
                            model_version=model_version, metric="l2")
    publish(Path(root), "face", version)
    files = {p.name: p.stat().st_size for p in (Path(root) / "face" / version).iterdir()}
    print(json.dumps({"version": version, "write_s": time.perf_counter() - t, "files": files}))


def start(root: str, model_version: str, queries: str, filters_json: str, mode: str = "") -> None:
    """mode "": load_version as a replica does by default (every file hashed first); "--index-only":
    the same files hashed, then the index file alone mapped and searched; "--verify-later": files
    over 256 MB hashed after the load (index_verify = background), when the code has it."""
    import inspect

    from facevoice.service.gallery import apply_search_params
    from facevoice.service.versions import current_version, load_version, read_meta, verify

    faiss.omp_set_num_threads(1)
    q = np.load(queries)
    filters = json.loads(Path(filters_json).read_text())
    version = current_version(Path(root), "face")
    cold = evict(Path(root) / "face" / version)
    before = rss_bytes()
    t = time.perf_counter()
    if mode == "--index-only":  # the index file alone, mapped as load_version maps it: the table adds the rest
        verify(Path(root) / "face" / version)  # as load_version does: the same pages in the page cache
        index = faiss.read_index(str(Path(root) / "face" / version / "index.faiss"), faiss.IO_FLAG_MMAP_IFC)
        apply_search_params(index, read_meta(Path(root), "face", version).plan.params)
        out = {"start_s": time.perf_counter() - t, "cold": cold}
        for v in q:
            index.search(v[None], 10)
        out["rss"] = rss_bytes() - before
        out["resident"] = resident()
        print(json.dumps(out))
        return
    later = {}
    if mode == "--verify-later":
        if "verify_later_over" not in inspect.signature(load_version).parameters:
            print(json.dumps({"unsupported": True}))
            return
        later = {"verify_later_over": 256 << 20}
    g = load_version(Path(root), "face", version, model_version, mmap=True, **later)
    out = {"start_s": time.perf_counter() - t, "cold": cold, "rss_loaded": rss_bytes() - before, "size": g.size}
    lat = []
    for v in q:
        s = time.perf_counter()
        g.search(v, 10)
        lat.append(time.perf_counter() - s)
    out["p50_ms"] = 1000 * float(np.median(lat))
    out["filtered"] = {}
    for name, f in filters.items():
        lat, hits = [], []
        sets = {k: set(v) for k, v in f.items()}
        for v in q:
            s = time.perf_counter()
            found = g.search(v, 10, sets)
            lat.append(time.perf_counter() - s)
            hits.append([int(it.item_id[1:]) for it, _ in found])
        out["filtered"][name] = {"p50_ms": 1000 * float(np.median(lat)), "p99_ms": 1000 * float(np.percentile(lat, 99)),
                                 "hits": hits}
    out["rss"] = rss_bytes() - before
    out["resident"] = resident()
    print(json.dumps(out))


def main(argv: list[str]) -> int:
    from facevoice.service.errors import UsageError

    cmd, *rest = argv or [""]
    if cmd == "write" and len(rest) == 5:
        write(*rest)
    elif cmd == "start" and len(rest) in (4, 5):
        modes = [a for a in rest if a.startswith("--")]
        start(*[a for a in rest if not a.startswith("--")], mode=modes[0] if modes else "")
    else:
        raise UsageError(__doc__.split("\n\n")[1])
    return 0


if __name__ == "__main__":
    from facevoice.cli import run_script

    run_script(lambda: main(sys.argv[1:]), "bench/itemtable_probe.py")
