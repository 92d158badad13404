"""`facevoice index publish --out INDEX_ROOT --index NAME --version VERSION [--redis URL]`.

Points an index at one of its existing versions (a rollback, or publishing a `--no-publish`
build), atomically, and announces it so every replica swaps."""

from __future__ import annotations

import argparse
from pathlib import Path

from facevoice.service.versions import current_version, publish, read_meta


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="index root")
    p.add_argument("--index", required=True, help="an index: face, voice or face_feature")
    p.add_argument("--version", required=True, help="a version directory under INDEX_ROOT/INDEX/")
    p.add_argument("--redis", help="announce on this Redis (redis://host:port/db)")


def run(args: argparse.Namespace) -> int:
    before = current_version(args.out, args.index)
    publish(args.out, args.index, args.version)
    meta = read_meta(args.out, args.index, args.version)
    if args.redis:
        from facevoice.service.cache import announce

        announce(args.redis, {args.index: args.version})
    print(f"{args.index}: {before} -> {args.version} ({meta['size']} items, model {meta['model_version']}, "
          f"built {meta['built_at']}){'; announced' if args.redis else ''}")
    return 0
