"""`facevoice index publish --out INDEX_ROOT --index NAME --version VERSION [--redis URL]`.

Points an index at one of its existing versions (a rollback, or publishing a `--no-publish`
build), atomically, and announces it so every replica swaps."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from facevoice.cli import options
from facevoice.service.versions import IndexMeta, current_version, publish, read_meta


@dataclass(frozen=True)
class IndexPublishOptions:
    out: Path  # the index root
    index: str  # face, voice or face_feature
    version: str  # a version directory under OUT/INDEX/
    redis: str | None = None  # announce on this Redis


@dataclass(frozen=True)
class IndexPublishResult:
    index: str
    before: str | None  # the version `current` named before (None: none)
    version: str
    meta: IndexMeta  # the version now current
    announced: bool

    def summary(self) -> str:
        return (f"{self.index}: {self.before} -> {self.version} ({self.meta.size} items, model "
                f"{self.meta.model_version}, built {self.meta.built_at}){'; announced' if self.announced else ''}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="index root")
    p.add_argument("--index", required=True, help="an index: face, voice or face_feature")
    p.add_argument("--version", required=True, help="a version directory under INDEX_ROOT/INDEX/")
    p.add_argument("--redis", help="announce on this Redis (redis://host:port/db)")


def index_publish(opts: IndexPublishOptions) -> IndexPublishResult:
    """`index publish`: `current` of the index names the version (IndexVersionError when it has no
    such version), announced on Redis when given."""
    before = current_version(opts.out, opts.index)
    publish(opts.out, opts.index, opts.version)
    meta = read_meta(opts.out, opts.index, opts.version)
    if opts.redis:
        from facevoice.service.cache import announce

        announce(opts.redis, {opts.index: opts.version})
    return IndexPublishResult(opts.index, before, opts.version, meta, bool(opts.redis))


def run(args: argparse.Namespace) -> int:
    print(index_publish(options(IndexPublishOptions, args)).summary())
    return 0
