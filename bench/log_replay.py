"""Gallery write-log replay against log length -> docs/benchmarks.md (section log-replay).

    python -m bench.log_replay --sizes 100000 1000000 [--smoke] [--doc PATH]

For each size N, a log of N upserts (one item, a 64-d vector in each of two spaces, the shape of
an UpsertItems of one photo) is written in the log's own record format (bulk, without an fsync per
record: the write path is not what is measured), once as the file log and once as a Redis stream
on a real redis-server. Then, each from a fresh process's view:
- replay: every entry read and decoded (`WriteLog.entries`, what a replica starting on an old
  version and `index build` do);
- the fold of `index build`, once for both spaces (one pass over the log);
- head: the log's newest offset (`index build` asks it first; health asks it every second).
Replay must grow linearly: the 1M / 100k time ratio should be close to 10 (it was quadratic in
the file log before, which re-read the rest of a 64 MB segment for every batch of 1,024 entries).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.report import machine, parse, publish
from devtools.local_servers import LocalRedis
from facevoice.cli import run_script
from facevoice.service.build import fold
from facevoice.service.writelog import HEADER, Change, FileLog, IndexChange, RedisLog

SPACES = {"face": "m1", "face_feature": "m1"}


def change(i: int, rng: np.random.Generator) -> Change:
    item = [{"item_id": f"item-{i:08d}", "identity": f"person-{i // 4:07d}", "attributes": {"gender": "f"}}]
    return Change("upsert", {name: IndexChange("m1", item, rng.standard_normal((1, 64), np.float32))
                             for name in SPACES}, actor="bench", at=1_700_000_000.0 + i)


def write_file_log(root: Path, n: int, segment_bytes: int = 64 << 20) -> None:
    """N records in FileLog's format and segment layout, written in bulk."""
    rng = np.random.default_rng(0)
    log = FileLog(root, segment_bytes=segment_bytes)
    base, size, out = 0, 0, None
    try:
        for i in tqdm(range(n), desc=f"file log {n:,}", unit="entry", mininterval=2):
            if out is None or size >= segment_bytes:
                if out is not None:
                    out.close()
                base, size = base + size, 0
                out = open(log._path(base), "wb")  # noqa: SIM115 (closed when the segment is full)
            payload = change(i, rng).encode()
            out.write(HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
            size += HEADER.size + len(payload)
    finally:
        if out is not None:
            out.close()


def write_redis_log(log: RedisLog, n: int) -> None:
    rng = np.random.default_rng(0)
    pipe = log.client.pipeline(transaction=False)
    for i in tqdm(range(n), desc=f"redis stream {n:,}", unit="entry", mininterval=2):
        pipe.xadd(log.stream, {"c": change(i, rng).encode()})
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(make_log, n: int) -> dict:
    replay_s, count = timed(lambda: sum(1 for _ in make_log().entries()))
    assert count == n, (count, n)
    fresh = make_log()
    head_s, head = timed(fresh.head)
    folded_log = make_log()
    fold_s, folds = timed(lambda: fold(folded_log, Path(tempfile.mkdtemp()), SPACES, head))
    assert all(len(f[0].upserted) == n for f in folds.values())
    return {"replay": replay_s, "fold": fold_s, "head": head_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--no-redis", action="store_true")
    args = parse(p, argv, smoke={"sizes": [200, 2000]})
    rows = []
    for n in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="facevoice-log-bench-"))
        try:
            write_file_log(work, n)
            size = sum(f.stat().st_size for f in (work / ".gallery-log").glob("*.log"))
            rows.append(("file", n, size, measure(lambda work=work: FileLog(work), n)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if not args.no_redis:
            with LocalRedis() as r:
                log = RedisLog(r.url)
                write_redis_log(log, n)
                rows.append(("redis", n, None, measure(lambda r=r: RedisLog(r.url), n)))
                log.close()
        print(f"  {n:,}: " + "; ".join(f"{k} {m['replay']:.1f} s replay" for k, nn, _, m in rows if nn == n))
    lines = [f"Command: `python -m bench.log_replay --sizes {' '.join(map(str, args.sizes))}` on {machine()}.",
             "", "A log of N one-photo upserts (two 64-d spaces), replayed from a fresh process; the ratio is "
             "each time over the same log's time at the smallest N (linear replay: ratio = N ratio).", "",
             "| log | entries | bytes | replay (read + decode all) | ratio | `index build` fold, both spaces | ratio | "
             "head | entries/s replayed |", "|---|---|---|---|---|---|---|---|---|"]
    for kind in ("file", "redis"):
        mine = [r for r in rows if r[0] == kind]
        if not mine:
            continue
        base = mine[0][3]
        for _, n, size, m in mine:
            lines.append(f"| {kind} | {n:,} | {f'{size / 2**20:.0f} MB' if size else '-'} | {m['replay']:.2f} s | "
                         f"{m['replay'] / base['replay']:.1f} | {m['fold']:.2f} s | {m['fold'] / base['fold']:.1f} | "
                         f"{m['head'] * 1000:.1f} ms | {n / m['replay']:,.0f} |")
    lines += ["", "Before issue 31 the file log re-read the rest of its 64 MB segment for every batch of 1,024 "
              "entries (quadratic), `index build` folded the log once per space, and `head` decoded the "
              "whole log."]
    publish("log-replay", "## Gallery write log: replay against log length (`bench/log_replay.py`)\n\n"
            + "\n".join(lines), args)
    return 0


if __name__ == "__main__":
    run_script(main, "python -m bench.log_replay")
