"""A sharded index build: `index build --shard I/N` embeds slice I of the gallery, `index merge`
plans one index over every shard's vectors and publishes it.

Shards agree on where their output goes without talking to each other: the folder is named by the
gallery manifest's hash, the splits, N and the model versions (`OUT/.shards/KEY/`). Slice I is the
I-th contiguous run of each modality's manifest rows. A shard's batches are kept as it embeds them
(a shard killed and started again resumes), and its output appears by one rename once whole, so
the merge sees a shard whole or not at all. The merge trains the IVF / PQ once on a sample drawn
from all shards (the planner's sample of their concatenation), adds every shard in batches and
publishes one version per space; until then, and whatever dies on the way, the served versions
stay as they are. The write log is folded in by the merge, as by a whole build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from facevoice.service.build import (
    Embedded,
    Setup,
    add_gallery_arguments,
    add_plan_arguments,
    edited_ids,
    embed_modality,
    setup,
    write_and_publish,
)
from facevoice.service.gallery import Item

DONE = "shard.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_gallery_arguments(p)
    p.add_argument("--shards", type=int, required=True, help="N, as the shards were built with --shard I/N")
    add_plan_arguments(p)


def shard_root(out: Path, s: Setup, splits: list[str] | None, n: int) -> Path:
    """Where the N shards of this gallery, split and model versions go (the same on every machine)."""
    versions = sorted(sp.version for sp in s.manifest.indexed().values())
    key = hashlib.sha256(json.dumps([s.gallery_hash, sorted(splits or []), versions]).encode()).hexdigest()[:12]
    return Path(out) / ".shards" / f"{key}-of{n}"


def slice_of(rows: list, i: int, n: int) -> list:
    return rows[len(rows) * i // n: len(rows) * (i + 1) // n]


def build_shard(args: argparse.Namespace) -> int:
    """Embeds slice I of N of each modality and keeps its vectors and items for the merge."""
    start = time.perf_counter()
    i, n = args.shard
    s = setup(args, fold_log=False)
    root = shard_root(args.out, s, args.split, n)
    final = root / f"{i:04d}"
    if (final / DONE).exists():
        print(f"index build --shard {i}/{n}: already built ({final})")
        return 0
    for stale in root.glob(f".tmp-{i:04d}-*"):  # left by an attempt that died; its batches are kept apart
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{i:04d}-{os.getpid()}"
    tmp.mkdir(parents=True)
    summary = {"shard": i, "of": n, "modalities": {}}
    for modality in args.modalities:
        part = slice_of(s.rows.get(modality, []), i, n)
        e = embed_modality(s.emb, part, modality, root / f"work-{i:04d}" / "batches", args.batch,
                           args.concurrency, not args.no_progress) if part else None
        if e is None:
            continue
        for name, x in e.vectors.items():
            np.save(tmp / f"{name}.npy", x.reshape(len(e.items), -1).astype(np.float32))
        with open(tmp / f"items-{modality}.jsonl", "w") as f:
            for it in e.items:
                f.write(json.dumps(asdict(it)) + "\n")
        (tmp / f"skipped-{modality}.json").write_text(json.dumps(e.bad))
        summary["modalities"][modality] = {"items": len(e.items), "skipped": len(e.bad), "seconds": e.seconds,
                                           "spaces": sorted(e.vectors)}
    (tmp / DONE).write_text(json.dumps(summary, indent=2))
    if final.exists():  # a shard that died after its rename but before this line cannot exist; a stale one can
        shutil.rmtree(final)
    os.replace(tmp, final)
    shutil.rmtree(root / f"work-{i:04d}", ignore_errors=True)
    parts = ", ".join(f"{m} {d['items']} items ({d['skipped']} skipped)" for m, d in summary["modalities"].items())
    print(f"index build --shard {i}/{n}: {parts or 'no rows'} in {time.perf_counter() - start:.1f} s -> {final}")
    return 0


def read_shards(root: Path, n: int, modality: str, spaces: list[str]) -> Embedded | None:
    """Every shard's items and vectors of one modality, in shard order."""
    items, vectors, bad, seconds = [], {name: [] for name in spaces}, [], 0.0
    for i in range(n):
        d = root / f"{i:04d}"
        summary = json.loads((d / DONE).read_text())["modalities"].get(modality)
        if summary is None:
            continue
        with open(d / f"items-{modality}.jsonl") as f:
            items += [Item(**json.loads(line)) for line in f]
        for name in spaces:
            vectors[name].append(np.load(d / f"{name}.npy"))
        bad += [tuple(b) for b in json.loads((d / f"skipped-{modality}.json").read_text())]
        seconds += summary["seconds"]
    if not items and not bad:
        return None
    return Embedded(items, {k: np.concatenate(v) for k, v in vectors.items()}, bad, seconds)


def without(e: Embedded, drop: set[str]) -> Embedded:
    """The embedded items less those the write log changed (the merge folds those in itself)."""
    keep = np.array([it.item_id not in drop for it in e.items], bool)
    return Embedded([it for it, k in zip(e.items, keep, strict=True) if k],
                    {name: x[keep] for name, x in e.vectors.items()}, e.bad, e.seconds)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.shards < 1:
        raise SystemExit("index merge: --shards must be at least 1")
    s = setup(args, embed=False)
    root = shard_root(args.out, s, args.split, args.shards)
    missing = [i for i in range(args.shards) if not (root / f"{i:04d}" / DONE).exists()]
    if missing:
        shown = ", ".join(f"{i}/{args.shards}" for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise SystemExit(f"index merge: {len(missing)} of {args.shards} shards are not built ({shown}): run "
                         f"`index build --shard I/{args.shards}` for each with the same gallery and models; "
                         "nothing was published")
    done = {}
    for modality in args.modalities:
        spaces = [name for name, sp in s.manifest.indexed().items() if sp.modality == modality]
        e = read_shards(root, args.shards, modality, spaces)
        done[modality] = without(e, edited_ids(s, modality)) if e is not None else None
    published, lines = write_and_publish(args, s, done)
    built = {m for i in range(args.shards)
             for m in json.loads((root / f"{i:04d}" / DONE).read_text())["modalities"]}
    if published and built <= set(args.modalities):  # they hold every row's vectors, deleted items' too
        shutil.rmtree(root)
        lines.append(f"  deleted the {args.shards} merged shards ({root})")
    elif published:
        lines.append(f"  kept the shards for {', '.join(sorted(built - set(args.modalities)))}, not merged yet "
                     f"({root}; `index prune` deletes what no merge takes)")
    print(f"index merge: {args.shards} shards of {args.gallery} -> {args.out} in {time.perf_counter() - start:.1f} s"
          f"{' (published)' if published else ''}")
    print("\n".join(lines))
    return 0
