"""`facevoice index build --gallery MANIFEST --model-repo DIR [--triton-url URL] --out INDEX_ROOT`.

Embeds a gallery (a corpus-format manifest.csv) in batches with concurrent requests, resumable
(finished batches are kept under OUT/.build/), writes a new immutable index version per space,
measures its recall, then moves each `current` pointer and announces it on Redis. A crash at any
point leaves the served versions untouched.

It also compacts the gallery write log (service/writelog.py): the log's end is read first, and
every change up to it is folded in on top of the manifest, carried forward from the previous
version: items deleted through the log stay out (even when the manifest still lists them), items
upserted through it come in with their logged vectors. The new version records that offset, so a
replica replays only what came after it.
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

from facevoice.service.corpus import manifest_path, read_manifest
from facevoice.service.embedder import Embedder
from facevoice.service.gallery import Item, normalise, plan_and_build
from facevoice.service.media import MediaError
from facevoice.service.media.image import Box
from facevoice.service.repository import FACE, VOICE
from facevoice.service.repository import read_manifest as read_repository
from facevoice.service.runners import EmbeddedRunner, TritonRunner
from facevoice.service.versions import Folded, current_version, publish, read_folded, read_meta, write_version
from facevoice.service.writelog import WriteLog, offset_of, open_log


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gallery", type=Path, required=True, help="manifest.csv (corpus format), or its directory")
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
    p.add_argument("--gallery-log", default="auto", choices=["auto", "file", "redis"],
                   help="the write log to fold in, as the service's gallery_log (auto: Redis's with --redis)")
    p.add_argument("--no-publish", action="store_true", help="write the versions but leave `current` alone")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime and FAISS threads")
    p.add_argument("--no-progress", action="store_true")



@dataclass
class Row:
    item: Item
    path: Path
    box: Box | None = None  # the manifest's face box: the index is built from the crop training saw


def gallery_rows(manifest: Path, splits: list[str] | None) -> dict[str, list[Row]]:
    """The gallery's items (of these splits, when given) with their media paths, by modality."""
    manifest = manifest_path(manifest)
    rows: dict[str, list[Row]] = {}
    for r in read_manifest(manifest):
        if not splits or r.split in splits:
            rows.setdefault(r.modality, []).append(Row(Item(r.item_id, r.identity, r.attributes()),
                                                       manifest.parent / r.path, r.face_box()))
    return rows


def embed_batches(rows: list[Row], emb: Embedder, spaces: list[str], work: Path, batch: int, concurrency: int,
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
                decoded = {name: emb.decode(name, data, rows[i].box) for name in spaces}
            except (MediaError, OSError) as e:
                bad.append((rows[i].item.item_id, f"{type(e).__name__}: {e}"))
                continue
            kept.append(i)
            for name, x in decoded.items():
                inputs[name].append(x)
        vectors = {name: emb.embed(name, np.stack(inputs[name])) if kept else np.zeros((0, 0), np.float32)
                   for name in spaces}
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


def embed_modality(emb: Embedder, rows: list[Row], modality: str, work: Path, batch: int, concurrency: int,
                   progress: bool) -> Embedded:
    """Every row embedded in each indexed space of its modality (faces: the association space and,
    with Speech2Face networks, the face-feature space of the same photos)."""
    spaces = [n for n, s in emb.manifest.indexed().items() if s.modality == modality]
    start = time.perf_counter()
    # finished batches are reused only by the same gallery, models, split and batch size
    work = work.with_name(f"{work.name}-{modality}-b{batch}-{'-'.join(sorted({emb.version(n) for n in spaces}))}")
    kept, vectors, bad = embed_batches(rows, emb, spaces, work, batch, concurrency, progress, f"embedding {modality}s")
    return Embedded([rows[i].item for i in kept], vectors, bad, time.perf_counter() - start)


def fold(wlog: WriteLog | None, root: Path, name: str, model_version: str, upto: str | None
         ) -> tuple[Folded, str | None, list[tuple[str, str]]]:
    """The previous version's folded writes plus the log's changes to `name` after its offset, up to
    `upto`; (folded, where the replay started, dropped (item_id, why) for vectors of another model)."""
    previous = current_version(root, name)
    folded, after = Folded(), None
    if previous is not None:
        folded = read_folded(root, name, previous)
        if wlog is not None:
            after = offset_of(read_meta(root, name, previous), wlog)
    dropped = []
    if wlog is None or upto is None:
        return folded, after, dropped
    for _, change in wlog.entries(after, upto=upto):
        if change.op == "delete" and name in change.indexes:
            for item_id in change.item_ids:
                folded.delete(item_id)
        elif change.op == "upsert" and name in change.upserts:
            u = change.upserts[name]
            for it, v in zip(u.items, u.vectors, strict=True):
                if u.model_version == model_version:
                    folded.upsert(Item(**it), v)
                else:
                    folded.delete(it["item_id"])  # the old vector cannot stay; the manifest row may not either
                    dropped.append((it["item_id"], f"upserted live with model {u.model_version}, the build embeds "
                                                   f"with {model_version}: upsert it again, or add it to the gallery"))
    for item_id in {i for i, _ in dropped} & folded.erased:
        folded.erased.discard(item_id)  # a manifest row of it may come back; the live vector cannot
    return folded, after, dropped


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    faiss.omp_set_num_threads(args.threads)
    manifest = read_repository(args.model_repo)
    runner = TritonRunner(args.triton_url) if args.triton_url else EmbeddedRunner(args.model_repo, args.threads)
    emb = Embedder(manifest, runner)
    rows = gallery_rows(args.gallery, args.split)
    wlog = open_log(args.gallery_log, args.out, args.redis)
    upto = wlog.head() if wlog is not None else None  # what this build folds in; later writes replay on top
    folds = {name: fold(wlog, args.out, name, space.version, upto) for name, space in manifest.indexed().items()}
    # a manifest row edited through the log (deleted, or upserted anew) is not embedded from the manifest
    for modality, name in (("face", FACE), ("voice", VOICE)):
        if rows.get(modality) and name in folds:
            edited = folds[name][0].erased | set(folds[name][0].upserted)
            rows[modality] = [r for r in rows[modality] if r.item.item_id not in edited]
    edits = hashlib.sha256(json.dumps({n: sorted(f[0].erased | set(f[0].upserted)) for n, f in folds.items()}
                                      ).encode()).hexdigest()[:8]
    gallery_hash = hashlib.sha256(manifest_path(args.gallery).read_bytes()).hexdigest()[:12]
    work = args.out / ".build" / f"{gallery_hash}-{edits}-{'+'.join(sorted(args.split or ['all']))}"
    done = {m: embed_modality(emb, rows[m], m, work, args.batch, args.concurrency, not args.no_progress)
            if rows.get(m) else None for m in args.modalities}
    published, lines = {}, []
    for modality, e in done.items():
        names = [n for n, s in manifest.indexed().items() if s.modality == modality]
        if e is None and not any(folds[n][0].upserted for n in names):
            lines.append(f"  {modality}: no rows in {args.gallery}")
            continue
        e = e or Embedded([], {n: np.zeros((0, manifest.spaces[n].dim), np.float32) for n in names}, [], 0.0)
        rate = len(e.items) / max(e.seconds, 1e-9)
        skipped = list(e.bad)
        for name, x in e.vectors.items():
            space = manifest.spaces[name]
            folded, after, dropped = folds[name]
            live = list(folded.upserted.values())
            items = e.items + [it for it, _ in live]
            if live:
                x = np.concatenate([x.reshape(len(e.items), -1), np.stack([v for _, v in live])]).astype(np.float32)
            x = normalise(x) if space.metric == "cosine" else np.ascontiguousarray(x, np.float32)
            # the real queries of a face index are voices, and back: tune the search on them when built too
            other = {"face": "voice", "voice": "face"}.get(name)
            queries = next((d.vectors[other] for d in done.values() if d and other in d.vectors), None)
            index, plan = plan_and_build(x, space.metric, args.exact_below, args.kind, args.target_recall, queries)
            log_meta = {"log": {"kind": wlog.kind, "offset": upto, "replayed_after": after}} if wlog else {}
            version = write_version(args.out, name, index, items, plan, model_version=space.version,
                                    metric=space.metric, folded=folded,
                                    extra={"gallery": str(args.gallery), "gallery_sha256": gallery_hash,
                                           "embed_items_per_s": rate, "runner": runner.name,
                                           "tuned_on": "queries" if queries is not None else "perturbed gallery",
                                           "folded": {"upserted": len(live), "erased": len(folded.erased)},
                                           **log_meta})
            if not args.no_publish:
                publish(args.out, name, version)
                published[name] = version
            lines.append(f"  {name:<12} {version}  {len(items):>6} items ({len(e.bad)} skipped); log: "
                         f"{len(live)} upserted, {len(folded.erased)} erased, to offset {upto};  {plan.kind} "
                         f"{plan.params}  recall@10 {plan.recall_at_10:.3f}  embed {rate:.1f} items/s")
            skipped += [d for d in dropped if d not in skipped]
        if skipped:
            with open(args.out / f"skipped-{modality}.csv", "w", newline="") as f:
                csv.writer(f).writerows([("item_id", "reason"), *skipped])
    if args.redis and published:
        from facevoice.service.cache import announce

        announce(args.redis, published)
    print(f"index build: {args.gallery} -> {args.out} in {time.perf_counter() - start:.1f} s "
          f"({runner.name} runner{', published' if published else ''})")
    print("\n".join(lines))
    return 0
