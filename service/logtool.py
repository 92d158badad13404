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
from dataclasses import dataclass
from pathlib import Path

from facevoice.cli import options
from facevoice.service.errors import UsageError
from facevoice.service.writelog import Damage, Verified, open_log


@dataclass(frozen=True)
class IndexLogOptions:
    out: Path  # the index root (the file log lives in its .gallery-log/)
    gallery_log: str = "auto"  # auto | file | redis
    redis: str | None = None  # the Redis of the gallery log


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="index root (the file log lives in its .gallery-log/)")
    p.add_argument("--gallery-log", default=IndexLogOptions.gallery_log, choices=["auto", "file", "redis"])
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


@dataclass(frozen=True)
class IndexLogVerifyResult:
    log: str  # the log's name: its directory, or "Redis stream NAME"
    verified: Verified
    mark: Damage | None  # the damage mark the log carries (every writer refuses while it stands)

    @property
    def damaged(self) -> bool:
        return not self.verified.ok or self.mark is not None

    @property
    def status(self) -> int:
        """0 when nothing is damaged, else 1."""
        return 1 if self.damaged else 0

    def lines(self) -> list[str]:
        lines = describe(self.verified)
        if self.mark is not None and self.verified.ok:
            lines.append(f"  marked damaged at {self.mark.where}, which now reads intact: `index log repair` "
                         "clears the mark")
        return lines

    def summary(self) -> str:
        found = "DAMAGED, run `facevoice index log repair`" if self.damaged else "intact"
        return "\n".join([*self.lines(), f"index log verify: {self.log}: {found}"])


@dataclass(frozen=True)
class IndexLogRepairResult:
    moved: list[Damage]  # the damaged records moved into the quarantine
    after: IndexLogVerifyResult  # the log verified after the repair

    @property
    def status(self) -> int:
        """0 when the log reads intact after the repair, else 1."""
        return 0 if self.after.verified.ok else 1

    def summary(self) -> str:
        moved = [f"  moved aside: {d.where}: {d.why}" + (f" ({d.length} bytes)" if d.length else "")
                 for d in self.moved]
        return "\n".join([*moved, *self.after.lines(),
                          f"index log repair: {self.after.log}: {len(self.moved)} damaged records quarantined; "
                          f"{'intact now' if self.after.verified.ok else 'STILL DAMAGED'}; every record after "
                          "them kept"])


def _open(opts: IndexLogOptions):
    if opts.gallery_log != "redis" and not opts.redis and not Path(opts.out).is_dir():
        # a verify must not make the log it was asked about: a mistyped --out would read "intact"
        raise UsageError(f"--out {opts.out}: no such index root")
    wlog = open_log(opts.gallery_log, opts.out, opts.redis)
    if wlog is None:
        raise UsageError("no gallery log (give --out, or a Redis)")
    return wlog


def index_log_verify(opts: IndexLogOptions) -> IndexLogVerifyResult:
    """`index log verify`: every record of the gallery write log read and checked."""
    wlog = _open(opts)
    try:
        return IndexLogVerifyResult(wlog.name, wlog.verify(), wlog.damaged())
    finally:
        wlog.close()


def index_log_repair(opts: IndexLogOptions) -> IndexLogRepairResult:
    """`index log repair`: each damaged record moved into the log's quarantine, every record after
    it kept and the damage mark cleared; then the log verified again."""
    wlog = _open(opts)
    try:
        moved = wlog.repair()
        return IndexLogRepairResult(moved, IndexLogVerifyResult(wlog.name, wlog.verify(), wlog.damaged()))
    finally:
        wlog.close()


def run(args: argparse.Namespace) -> int:
    result = (index_log_verify if args.path[-1] == "verify" else index_log_repair)(options(IndexLogOptions, args))
    print(result.summary())
    return result.status
