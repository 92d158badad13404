"""`facevoice index log verify|repair --out INDEX_ROOT [--gallery-log auto|file|redis] [--redis URL]`.

`verify` reads every record of the gallery write log (docs/operations.md, "When the log reports
damage") and says what it found; exit 0 when nothing is damaged, 1 otherwise. `repair` moves each
damaged record into the log's quarantine (the file log: `.gallery-log/quarantine/`, one file per
damaged stretch and a line in `repairs.jsonl`; the Redis stream: `<stream>:quarantine`), keeps
every record after it, and clears the damage mark so writes and replay go on. Only an operator
runs it: what it moves aside is lost to the gallery (the write it held must be made again).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from facevoice.service.errors import UsageError
from facevoice.service.writelog import Verified, WriteLog, open_log


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="index root (the file log lives in its .gallery-log/)")
    p.add_argument("--gallery-log", default="auto", choices=["auto", "file", "redis"])
    p.add_argument("--redis", help="the Redis of the gallery log (with --gallery-log auto or redis)")


def describe(v: Verified) -> list[str]:
    unit = "segments" if v.kind == "file" else "stream"
    lines = [f"  {v.records} records ({v.void} voided by repairs), {v.bytes} bytes"
             + (f" in {v.segments} {unit}" if v.kind == "file" else "") + f"; offsets {v.first} .. {v.head}"]
    if v.torn_tail:
        lines.append(f"  a trailing partial record of {v.torn_tail} bytes (never acknowledged; the next append "
                     "cuts it)")
    lines += [f"  DAMAGED: {d.where}: {d.why}" + (f" ({d.length} bytes)" if d.length else "") for d in v.damage]
    if v.quarantined:
        lines.append(f"  {v.quarantined} records in quarantine from earlier repairs")
    return lines


def verify(wlog: WriteLog) -> tuple[Verified, list[str]]:
    v = wlog.verify()
    mark = wlog.damaged()
    lines = describe(v)
    if mark is not None and v.ok:
        lines.append(f"  marked damaged at {mark.where}, which now reads intact: `index log repair` clears the mark")
    return v, lines


def run(args: argparse.Namespace) -> int:
    wlog = open_log(args.gallery_log, args.out, args.redis)
    if wlog is None:
        raise UsageError("index log: no gallery log (give --out, or a Redis)")
    try:
        if args.path[-1] == "verify":
            v, lines = verify(wlog)
            print("\n".join(lines))
            bad = not v.ok or wlog.damaged() is not None
            print(f"index log verify: {wlog.name}: {'DAMAGED, run `facevoice index log repair`' if bad else 'intact'}")
            return 1 if bad else 0
        moved = wlog.repair()
        for d in moved:
            print(f"  moved aside: {d.where}: {d.why}" + (f" ({d.length} bytes)" if d.length else ""))
        v, lines = verify(wlog)
        print("\n".join(lines))
        print(f"index log repair: {wlog.name}: {len(moved)} damaged records quarantined; "
              f"{'intact now' if v.ok else 'STILL DAMAGED'}; every record after them kept")
        return 0 if v.ok else 1
    finally:
        wlog.close()
