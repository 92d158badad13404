"""The file log under every crash point and every single-bit flip -> docs/reliability.md.

    python -m bench.log_damage --dim 128 [--smoke] [--doc PATH]

A log of five upserts of one photo (two spaces of `--dim` floats, the shape UpsertItems writes):
- cut: the newest segment cut at every byte offset of its last record (a writer that died while
  writing it, on any file system): every earlier record must read back, the log must verify
  intact with the cut bytes as its trailing partial record, and the next append must take the
  cut record's place;
- flip: every bit of the middle record flipped, one at a time (bit rot, a bad sector, a stray
  write): the log must refuse to read past it and to append (LogDamaged naming the byte), change
  nothing on disk, and `repair` must bring back every other record at its own offset;
- kill: a writer process SIGKILLed at each step of an append (half the record written, the
  write, the fsync, the directory fsync of a new segment), with and without a segment roll:
  every acknowledged record must be there, and the log intact.
`tests/test_writelog.py` runs the same three with small records.
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
from pathlib import Path

import numpy as np

from facevoice.cli import run_script
from facevoice.service.writelog import Change, FileLog, IndexChange, LogDamaged

STEPS = [("write-half", False), ("write", False), ("fsync", False),
         ("write-half", True), ("write", True), ("fsync", True), ("dirsync", True)]


def upsert(i: int, dim: int) -> Change:
    """A fixed-length record: a fixed time, vectors of i."""
    item = [{"item_id": f"it{i}", "identity": f"id{i}", "attributes": {"gender": "f"}}]
    return Change("upsert", {name: IndexChange("m1", item, np.full((1, dim), i, np.float32))
                             for name in ("face", "face_feature")}, actor="bench", at=1.0)


def ids(log: FileLog) -> list[str]:
    return [c.upserts["face"].items[0]["item_id"] for _, c in log.entries()]


def _one_segment(root: Path, name: str, data: bytes) -> Path:
    (root / ".gallery-log").mkdir(parents=True, exist_ok=True)
    path = root / ".gallery-log" / name
    path.write_bytes(data)
    return path


def cut_everywhere(work: Path, dim: int) -> tuple[int, list[str]]:
    """(cases, failures) of the cut test."""
    log = FileLog(work / "log")
    offsets = [log.append(upsert(i, dim)) for i in range(4)]
    name = next((work / "log" / ".gallery-log").glob("*.log")).name
    whole = (work / "log" / ".gallery-log" / name).read_bytes()
    last, failures = int(offsets[-2]), []
    for cut in range(last, len(whole)):
        root = work / "cut"
        _one_segment(root, name, whole[:cut])
        cut_log = FileLog(root)
        v = cut_log.verify()
        if ids(cut_log) != ["it0", "it1", "it2"] or not v.ok or v.torn_tail != cut - last:
            failures.append(f"cut at {cut}: read {ids(cut_log)}, verify {v}")
        elif cut_log.append(upsert(3, dim)) != offsets[-1] or ids(FileLog(root)) != ["it0", "it1", "it2", "it3"]:
            failures.append(f"cut at {cut}: the next append did not take the cut record's place")
        shutil.rmtree(root)
    return len(whole) - last, failures


def flip_everywhere(work: Path, dim: int, every: int = 1) -> tuple[int, list[str]]:
    """(cases, failures) of the bit-flip test (the middle of five records); every `every`-th bit
    (7, prime to 8, still reaches every byte and every bit position)."""
    log = FileLog(work / "log")
    offsets = [log.append(upsert(i, dim)) for i in range(5)]
    name = next((work / "log" / ".gallery-log").glob("*.log")).name
    whole = (work / "log" / ".gallery-log" / name).read_bytes()
    start, end = int(offsets[1]), int(offsets[2])
    failures = []
    bits = range(0, (end - start) * 8, every)
    for bit in bits:
        bad = bytearray(whole)
        bad[start + bit // 8] ^= 1 << (bit % 8)
        root = work / "flip"
        path = _one_segment(root, name, bytes(bad))
        damaged = FileLog(root)
        problems = []
        if [d.offset for d in damaged.verify().damage] != [offsets[1]]:
            problems.append("verify did not name it")
        for what, attempt in (("a read past it", lambda d=damaged: list(d.entries())),
                              ("an append", lambda d=damaged: d.append(upsert(9, dim)))):
            try:
                attempt()
                problems.append(f"{what} was allowed")
            except LogDamaged as e:
                if f"byte {start}" not in str(e):
                    problems.append(f"{what}: the error does not name byte {start}")
        if path.read_bytes() != bytes(bad):
            problems.append("the segment changed")
        damaged.repair()
        if ids(damaged) != ["it0", "it1", "it3", "it4"] or \
                [o for o, _ in damaged.entries()] != [offsets[0], offsets[1], *offsets[3:]]:
            problems.append(f"repair kept {ids(damaged)}")
        if not damaged.verify().ok or damaged.damaged() is not None:
            problems.append("still damaged after repair")
        if problems:
            failures.append(f"bit {bit}: " + "; ".join(problems))
        shutil.rmtree(root)
    return len(bits), failures


WRITER = (
    "import sys\n"
    "from bench.log_damage import upsert\n"
    "from facevoice.service.writelog import FileLog\n"
    "log = FileLog(sys.argv[1], segment_bytes=int(sys.argv[2]))\n"
    "for i in range(6):\n"
    "    print(log.append(upsert(i, int(sys.argv[3]))), flush=True)\n")


def kill_at(work: Path, step: str, roll: bool, dim: int, n: int = 4) -> list[str]:
    """SIGKILLs a writer at `step` of its n-th append; failures."""
    record = len(upsert(0, dim).encode()) + 8
    segment = (n - 1) * record if roll else 1 << 30
    env = {**os.environ, "FACEVOICE_LOG_FAULT": f"{step}:{n}"}
    run = subprocess.run([sys.executable, "-c", WRITER, str(work), str(segment), str(dim)], env=env,
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    failures = []
    if run.returncode != -9:
        failures.append(f"{step}: the writer did not die there (exit {run.returncode}: {run.stderr[-300:]})")
    acknowledged = run.stdout.split()
    log = FileLog(work)
    got = [o for o, _ in log.entries()]
    if len(acknowledged) != n - 1 or got[:n - 1] != acknowledged or len(got) not in (n - 1, n):
        failures.append(f"{step}: acknowledged {acknowledged}, read {got}")
    if not log.verify().ok:
        failures.append(f"{step}: damaged after the crash")
    log.append(upsert(7, dim))
    if [o for o, _ in log.entries()][:n - 1] != acknowledged or log.verify().torn_tail:
        failures.append(f"{step}: the append after the crash lost something")
    if roll and len(list((work / ".gallery-log").glob("*.log"))) < 2:
        failures.append(f"{step}: no segment roll happened")
    return failures


def main(argv: list[str] | None = None) -> int:
    from bench.reliability import DOC
    from bench.report import machine, parse, publish

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--flip-every", type=int, default=1, help="flip every Nth bit only (default: every bit)")
    args = parse(p, argv, DOC, smoke={"dim": 1, "flip_every": 7})  # smoke: short records, 1 bit in 7
    work = Path(tempfile.mkdtemp(prefix="facevoice-log-damage-"))
    rows = []
    every = "every bit" if args.flip_every == 1 else f"every {args.flip_every}th bit"
    try:
        for name, fn in (("cut at every byte of the last record", cut_everywhere),
                         (f"{every} of the middle record flipped",
                          lambda w, dim: flip_everywhere(w, dim, args.flip_every))):
            start = time.perf_counter()
            cases, failures = fn(work / name.split()[0], args.dim)
            rows.append((name, cases, failures, time.perf_counter() - start))
            print(f"  {name}: {cases} cases, {len(failures)} failures", flush=True)
        start = time.perf_counter()
        failures = [f for i, (step, roll) in enumerate(STEPS)
                    for f in kill_at(work / f"kill{i}", step, roll, args.dim)]
        rows.append(("writer SIGKILLed at each append step: " + ", ".join(
            f"{s}{' + roll' if r else ''}" for s, r in STEPS), len(STEPS), failures, time.perf_counter() - start))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = len(upsert(0, args.dim).encode()) + 8
    lines = ["## Crash points and damage in the file log (issue 31)", "",
             f"Command: `python -m bench.log_damage --dim {args.dim}` on {machine()}; records of {record} bytes "
             f"(one upsert, two spaces of {args.dim} floats). The same runs with small records in "
             "`tests/test_writelog.py`.", "",
             "| test | cases | failures | seconds |", "|---|---|---|---|",
             *(f"| {name} | {cases} | {len(f)} | {s:.1f} |" for name, cases, f, s in rows), "",
             "A failure would be: an acknowledged record missing, a record after the damage cut away or "
             "its offset moved, the log reading or appending past damage, or a repair that keeps less than "
             "everything but the damaged record."]
    for name, _, failures, _ in rows:
        lines += [f"- {name}: {json.dumps(f)}" for f in failures[:5]]
    publish("log-damage", "\n".join(lines), args)
    return 0 if not any(failures for _, _, failures, _ in rows) else 1


if __name__ == "__main__":
    run_script(main, "python -m bench.log_damage")
