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
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from facevoice.cli import options
from facevoice.service.build import (
    Built,
    Embedded,
    GalleryBuildOptions,
    IndexBuildOptions,
    Setup,
    add_gallery_arguments,
    add_plan_arguments,
    check_shard,
    edited_ids,
    embed_modality,
    setup,
    write_and_publish,
)
from facevoice.service.errors import FacevoiceError, UsageError
from facevoice.service.gallery import Item
from facevoice.service.records import JsonRecord

DONE = "shard.json"


@dataclass(frozen=True)
class ShardRecord(JsonRecord):
    """A finished shard's shard.json: which slice it is and what it holds per modality."""

    FILE: ClassVar[str] = DONE
    WHAT: ClassVar[str] = "a finished shard's shard.json"
    HINT: ClassVar[str] = "; delete the shard's folder and build it again (`index build --shard I/N`)"

    shard: int
    of: int
    modalities: dict[str, dict]  # modality -> {"items", "skipped", "seconds", "spaces"}
    details: dict = field(default_factory=dict)


class ShardsMissing(FacevoiceError):
    """A merge before every shard was built (nothing is published)."""


@dataclass(frozen=True)
class IndexMergeOptions(GalleryBuildOptions):
    _: KW_ONLY
    shards: int  # N, as the shards were built with `index build --shard I/N`


@dataclass(frozen=True)
class BuildShardResult:
    shard: int  # I
    of: int  # N
    path: Path  # the shard's finished folder
    seconds: float
    modalities: dict[str, dict]  # modality -> {"items", "skipped", "seconds", "spaces"}, as in its shard.json
    already_built: bool = False  # found finished: nothing was embedded

    def summary(self) -> str:
        if self.already_built:
            return f"index build --shard {self.shard}/{self.of}: already built ({self.path})"
        parts = ", ".join(f"{m} {d['items']} items ({d['skipped']} skipped)" for m, d in self.modalities.items())
        return (f"index build --shard {self.shard}/{self.of}: {parts or 'no rows'} in {self.seconds:.1f} s "
                f"-> {self.path}")


@dataclass(frozen=True)
class IndexMergeResult:
    gallery: Path
    out: Path
    shards: int
    seconds: float
    built: Built
    root: Path  # the shards' folder
    deleted: bool  # the merged shards were deleted (every modality they hold was merged and published)
    kept_for: tuple[str, ...] = ()  # published, but the shards are kept for these modalities, not merged yet

    @property
    def published(self) -> dict[str, str]:
        return self.built.published

    def summary(self) -> str:
        lines = self.built.lines()
        if self.deleted:
            lines.append(f"  deleted the {self.shards} merged shards ({self.root})")
        elif self.kept_for:
            lines.append(f"  kept the shards for {', '.join(self.kept_for)}, not merged yet "
                         f"({self.root}; `index prune` deletes what no merge takes)")
        return "\n".join([f"index merge: {self.shards} shards of {self.gallery} -> {self.out} in "
                          f"{self.seconds:.1f} s{' (published)' if self.published else ''}", *lines])


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_gallery_arguments(p)
    p.add_argument("--shards", type=int, required=True, help="N, as the shards were built with --shard I/N")
    add_plan_arguments(p)


def shard_root(out: Path, s: Setup, splits: tuple[str, ...] | None, n: int) -> Path:
    """Where the N shards of this gallery, split and model versions go (the same on every machine)."""
    versions = sorted(sp.version for sp in s.manifest.indexed().values())
    key = hashlib.sha256(json.dumps([s.gallery_hash, sorted(splits or []), versions]).encode()).hexdigest()[:12]
    return Path(out) / ".shards" / f"{key}-of{n}"


def slice_of(rows: list, i: int, n: int) -> list:
    return rows[len(rows) * i // n: len(rows) * (i + 1) // n]


def build_shard(opts: IndexBuildOptions) -> BuildShardResult:
    """Embeds slice I of N (`opts.shard`) of each modality and keeps its vectors and items for the merge."""
    start = time.perf_counter()
    i, n = check_shard(opts.shard)
    s = setup(opts, triton_url=opts.triton_url, fold_log=False)
    root = shard_root(opts.out, s, opts.split, n)
    final = root / f"{i:04d}"
    if (final / DONE).exists():
        return BuildShardResult(i, n, final, time.perf_counter() - start, ShardRecord.read(final).modalities,
                                already_built=True)
    for stale in root.glob(f".tmp-{i:04d}-*"):  # left by an attempt that died; its batches are kept apart
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{i:04d}-{os.getpid()}"
    tmp.mkdir(parents=True)
    modalities = {}
    for modality in opts.modalities:
        part = slice_of(s.rows.get(modality, []), i, n)
        e = embed_modality(s.emb, part, modality, root / f"work-{i:04d}" / "batches", opts.batch,
                           opts.concurrency, not opts.no_progress) if part else None
        if e is None:
            continue
        for name, x in e.vectors.items():
            np.save(tmp / f"{name}.npy", x.reshape(len(e.items), -1).astype(np.float32))
        with open(tmp / f"items-{modality}.jsonl", "w") as f:
            for it in e.items:
                f.write(json.dumps(asdict(it)) + "\n")
        (tmp / f"skipped-{modality}.json").write_text(json.dumps(e.bad))
        modalities[modality] = {"items": len(e.items), "skipped": len(e.bad), "seconds": e.seconds,
                                "spaces": sorted(e.vectors)}
    ShardRecord(i, n, modalities).write(tmp)
    if final.exists():  # a shard that died after its rename but before this line cannot exist; a stale one can
        shutil.rmtree(final)
    os.replace(tmp, final)
    shutil.rmtree(root / f"work-{i:04d}", ignore_errors=True)
    return BuildShardResult(i, n, final, time.perf_counter() - start, modalities)


def read_shards(root: Path, n: int, modality: str, spaces: list[str]) -> Embedded | None:
    """Every shard's items and vectors of one modality, in shard order."""
    items, vectors, bad, seconds = [], {name: [] for name in spaces}, [], 0.0
    for i in range(n):
        d = root / f"{i:04d}"
        summary = ShardRecord.read(d).modalities.get(modality)
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


def index_merge(opts: IndexMergeOptions) -> IndexMergeResult:
    """`index merge`: one index per space over every shard's vectors, the write log folded in, then
    published; the merged shards are deleted once every modality they hold is merged."""
    start = time.perf_counter()
    n = opts.shards
    if n < 1:
        raise UsageError("--shards must be at least 1")
    s = setup(opts, embed=False)
    root = shard_root(opts.out, s, opts.split, n)
    missing = [i for i in range(n) if not (root / f"{i:04d}" / DONE).exists()]
    if missing:
        shown = ", ".join(f"{i}/{n}" for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ShardsMissing(f"{len(missing)} of {n} shards are not built ({shown}): run "
                            f"`index build --shard I/{n}` for each with the same gallery and models; "
                            "nothing was published")
    done = {}
    for modality in opts.modalities:
        spaces = [name for name, sp in s.manifest.indexed().items() if sp.modality == modality]
        e = read_shards(root, n, modality, spaces)
        done[modality] = without(e, edited_ids(s, modality)) if e is not None else None
    built = write_and_publish(opts, s, done)
    shard_modalities = {m for i in range(n) for m in ShardRecord.read(root / f"{i:04d}").modalities}
    deleted = bool(built.published) and shard_modalities <= set(opts.modalities)
    if deleted:  # they hold every row's vectors, deleted items' too
        shutil.rmtree(root)
    kept_for = tuple(sorted(shard_modalities - set(opts.modalities))) if built.published and not deleted else ()
    return IndexMergeResult(opts.gallery, opts.out, n, time.perf_counter() - start, built, root, deleted, kept_for)


def run(args: argparse.Namespace) -> int:
    print(index_merge(options(IndexMergeOptions, args)).summary())
    return 0
