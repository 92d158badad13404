"""`facevoice index build --gallery MANIFEST --model-repo DIR [--triton-url URL] --out INDEX_ROOT`.

Embeds a gallery (a corpus-format manifest.csv) in batches with concurrent requests, resumable
(finished batches are kept under OUT/.build/), writes a new immutable index version per space,
measures its recall, then moves each `current` pointer and announces it on Redis. A crash at any
point leaves the served versions untouched.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from facevoice.service.embedder import Embedder
from facevoice.service.gallery import Item, normalise, plan_and_build
from facevoice.service.media import MediaError
from facevoice.service.models import EmbeddedRunner, TritonRunner, read_manifest
from facevoice.service.versions import publish, write_version

BASE_COLUMNS = ("item_id", "identity", "modality", "path", "split")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gallery", type=Path, required=True, help="manifest.csv (corpus format)")
    p.add_argument("--model-repo", type=Path, required=True, help="the exported repository (its facevoice.json)")
    p.add_argument("--triton-url", help="run the networks on this Triton (gRPC host:port) instead of in-process")
    p.add_argument("--out", type=Path, required=True, help="index root")
    p.add_argument("--split", action="append", help="only rows of this split (repeatable; default all)")
    p.add_argument("--modalities", nargs="+", default=["face", "voice"], choices=["face", "voice"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=2, help="batches in flight")
    p.add_argument("--kind", default="auto", choices=["auto", "flat", "ivf", "hnsw"])
    p.add_argument("--exact-below", type=int, default=50_000, help="galleries smaller than this are exact")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--redis", help="announce new versions on this Redis (redis://host:port/db)")
    p.add_argument("--no-publish", action="store_true", help="write the versions but leave `current` alone")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime and FAISS threads")
    p.add_argument("--no-progress", action="store_true")


@dataclass
class Row:
    item: Item
    path: Path


def read_gallery(path: Path, modality: str, splits: list[str] | None) -> list[Row]:
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = set(BASE_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise SystemExit(f"{path}: not a gallery manifest (no column {', '.join(sorted(missing))}; "
                                 f"expected {', '.join(BASE_COLUMNS)}, then attributes)")
            rows = [r for r in reader if r["modality"] == modality and (not splits or r["split"] in splits)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SystemExit(f"{path}: unreadable gallery manifest ({e})") from e
    return [Row(Item(r["item_id"], r["identity"], {k: v for k, v in r.items() if k not in BASE_COLUMNS and v}),
                path.parent / r["path"]) for r in rows]


def embed_batches(rows: list[Row], decode: dict, spaces: dict, work: Path, batch: int, concurrency: int,
                  progress: bool, label: str) -> tuple[list[int], dict[str, np.ndarray], list[tuple[str, str]]]:
    """Kept row numbers, vectors per space, and (item_id, why) for items that did not decode."""
    work.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, len(rows), batch))

    def one(start: int) -> Path:
        out = work / f"{start:08d}.npz"
        if out.exists():
            return out  # resumed
        kept, inputs, bad = [], {name: [] for name in spaces}, []
        for i in range(start, min(start + batch, len(rows))):
            try:
                data = rows[i].path.read_bytes()
                decoded = {name: decode[name](data) for name in spaces}
            except (MediaError, OSError) as e:
                bad.append((rows[i].item.item_id, f"{type(e).__name__}: {e}"))
                continue
            kept.append(i)
            for name, x in decoded.items():
                inputs[name].append(x)
        vectors = {name: fn(np.stack(inputs[name])) if kept else np.zeros((0, 0), np.float32)
                   for name, fn in spaces.items()}
        tmp = work / f".{start:08d}.tmp.npz"
        np.savez(tmp, kept=np.asarray(kept, np.int64), bad=json.dumps(bad), **vectors)
        tmp.replace(out)
        return out

    kept, vectors, bad = [], {n: [] for n in spaces}, []
    with ThreadPoolExecutor(concurrency) as pool, tqdm(total=len(rows), desc=label, unit="item",
                                                       disable=not progress) as bar:
        for start, path in zip(starts, pool.map(one, starts), strict=True):
            with np.load(path) as z:
                kept += z["kept"].tolist()
                bad += [tuple(b) for b in json.loads(str(z["bad"]))]
                for n in spaces:
                    if len(z["kept"]):
                        vectors[n].append(z[n])
            bar.update(min(batch, len(rows) - start))
    return kept, {n: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for n, v in vectors.items()}, bad


@dataclass
class Embedded:
    items: list[Item]
    vectors: dict[str, np.ndarray]
    bad: list[tuple[str, str]]
    seconds: float


def embed_modality(args: argparse.Namespace, emb: Embedder, modality: str, gallery_hash: str) -> Embedded | None:
    rows = read_gallery(args.gallery, modality, args.split)
    if not rows:
        return None
    manifest = emb.manifest
    if modality == "face":
        spaces, decode = {"face": emb.faces}, {"face": emb.face_input}
        if manifest.speech2face is not None:  # the S2F face features of the same photos
            spaces["face_feature"], decode["face_feature"] = emb.face_features, emb.face_feature_input
    else:
        spaces, decode = {"voice": emb.voices}, {"voice": emb.voice_input}
    start = time.perf_counter()
    versions = sorted({group_of(manifest, n).version for n in spaces})
    # finished batches are reused only by the same gallery, models, split and batch size
    split = "+".join(sorted(args.split or ["all"]))
    work = args.out / ".build" / f"{gallery_hash}-{modality}-{split}-b{args.batch}-{'-'.join(versions)}"
    kept, vectors, bad = embed_batches(rows, decode, spaces, work, args.batch, args.concurrency,
                                       not args.no_progress, f"embedding {modality}s")
    return Embedded([rows[i].item for i in kept], vectors, bad, time.perf_counter() - start)


def group_of(manifest, name: str):
    return manifest.s2f() if name == "face_feature" else manifest.association


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    faiss.omp_set_num_threads(args.threads)
    manifest = read_manifest(args.model_repo)
    runner = TritonRunner(args.triton_url) if args.triton_url else EmbeddedRunner(manifest, threads=args.threads)
    emb = Embedder(manifest, runner)
    gallery_hash = hashlib.sha256(args.gallery.read_bytes()).hexdigest()[:12]
    done = {m: embed_modality(args, emb, m, gallery_hash) for m in args.modalities}
    published, lines = {}, []
    for modality, e in done.items():
        if e is None:
            lines.append(f"  {modality}: no rows in {args.gallery}")
            continue
        rate = len(e.items) / max(e.seconds, 1e-9)
        for name, x in e.vectors.items():
            group = group_of(manifest, name)
            x = normalise(x) if group.metric == "cosine" else np.ascontiguousarray(x, np.float32)
            # the real queries of a face index are voices, and back: tune the search on them when built too
            other = {"face": "voice", "voice": "face"}.get(name)
            queries = next((d.vectors[other] for d in done.values() if d and other in d.vectors), None)
            index, plan = plan_and_build(x, group.metric, args.exact_below, args.kind, args.target_recall, queries)
            version = write_version(args.out, name, index, e.items, plan, model_version=group.version,
                                    metric=group.metric, extra={"gallery": str(args.gallery), "gallery_sha256":
                                                                gallery_hash, "embed_items_per_s": rate,
                                                                "runner": runner.name,
                                                                "tuned_on": "queries" if queries is not None
                                                                else "perturbed gallery"})
            if not args.no_publish:
                publish(args.out, name, version)
                published[name] = version
            lines.append(f"  {name:<12} {version}  {len(e.items):>6} items ({len(e.bad)} skipped)  {plan.kind} "
                         f"{plan.params}  recall@10 {plan.recall_at_10:.3f}  embed {rate:.1f} items/s")
        if e.bad:
            with open(args.out / f"skipped-{modality}.csv", "w", newline="") as f:
                csv.writer(f).writerows([("item_id", "reason"), *e.bad])
    if args.redis and published:
        from facevoice.service.cache import announce

        announce(args.redis, published)
    print(f"index build: {args.gallery} -> {args.out} in {time.perf_counter() - start:.1f} s "
          f"({runner.name} runner{', published' if published else ''})")
    print("\n".join(lines))
    return 0
