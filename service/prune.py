"""`facevoice index prune --out INDEX_ROOT [--keep N] [--gallery-log auto|file|redis] [--redis URL]`.

Deletes all but the newest N versions of every index (never the one `current` names), the
resume cache of finished builds (`.build/`) and any shards no merge took (`.shards/`; do not prune
while a build runs), then trims the
gallery write log below the oldest offset any kept version replays from. After
`index build` and `index prune --keep 1`, no index version on disk and no log entry holds the
vector of an item deleted before that build (docs/operations.md, the privacy guarantee).
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

from facevoice.cli import options
from facevoice.service.errors import UsageError
from facevoice.service.versions import META, current_version, read_meta
from facevoice.service.writelog import offset_of, open_log


@dataclass(frozen=True)
class IndexPruneOptions:
    out: Path  # the index root
    keep: int = 3  # versions kept per index, the current one included
    gallery_log: str = "auto"  # auto | file | redis
    redis: str | None = None  # the Redis of the gallery log


@dataclass(frozen=True)
class IndexPruneResult:
    out: Path
    removed: dict[str, list[str]]  # index -> the versions deleted
    kept: dict[str, int]  # index -> versions left
    log_kind: str | None  # the gallery log's kind, None without one
    trimmed_to: str | None  # the offset the log was trimmed below
    dropped: int = 0  # what the trim dropped: bytes of a file log, entries of a stream

    def summary(self) -> str:
        rows = [f"  {name:<12} removed {len(v)} old versions, kept {self.kept[name]}"
                for name, v in self.removed.items()]
        unit = "bytes" if self.log_kind == "file" else "entries"
        return "\n".join([*rows, f"index prune: {self.out}; gallery log ({self.log_kind or 'none'}) trimmed below "
                                 f"{self.trimmed_to} ({self.dropped} {unit} dropped)"])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="index root")
    p.add_argument("--keep", type=int, default=IndexPruneOptions.keep,
                   help="versions kept per index, the current one included")
    p.add_argument("--gallery-log", default=IndexPruneOptions.gallery_log, choices=["auto", "file", "redis"])
    p.add_argument("--redis", help="the Redis of the gallery log (with --gallery-log auto or redis)")


def versions_of(root: Path, name: str) -> list[str]:
    """Finished versions, oldest first (names sort by creation time)."""
    return sorted(p.name for p in (root / name).iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / META).exists())


def prune(root: Path, keep: int, wlog) -> tuple[dict[str, list[str]], str | None, int]:
    """({index: removed versions}, the offset the log was trimmed to, what the trim dropped)."""
    if keep < 1:
        raise UsageError("--keep must be at least 1 (the current version)")
    # the resume cache of finished builds holds embeddings of every gallery row, deleted ones too,
    shutil.rmtree(root / ".build", ignore_errors=True)
    shutil.rmtree(root / ".shards", ignore_errors=True)  # so do shards of a sharded build never merged
    removed, offsets = {}, []
    for index_dir in sorted(p for p in root.iterdir() if p.is_dir() and (p / "current").exists()):
        name, current = index_dir.name, current_version(root, index_dir.name)
        versions = versions_of(root, name)
        kept = set(versions[-keep:]) | {current}
        removed[name] = [v for v in versions if v not in kept]
        for v in removed[name]:
            shutil.rmtree(index_dir / v)
        if wlog is not None:
            offsets += [offset_of(read_meta(root, name, v), wlog) for v in kept if v in versions]
    if wlog is None or not offsets:
        return removed, None, 0
    low = min(offsets, key=wlog.key)
    return removed, low, wlog.trim(low)


def index_prune(opts: IndexPruneOptions) -> IndexPruneResult:
    """`index prune`: `prune` on the index root and its gallery log."""
    wlog = open_log(opts.gallery_log, opts.out, opts.redis)
    try:
        removed, low, dropped = prune(opts.out, opts.keep, wlog)
    finally:
        if wlog is not None:
            wlog.close()
    return IndexPruneResult(opts.out, removed, {name: len(versions_of(opts.out, name)) for name in removed},
                  wlog.kind if wlog else None, low, dropped)


def run(args: argparse.Namespace) -> int:
    print(index_prune(options(IndexPruneOptions, args)).summary())
    return 0
