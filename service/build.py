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
from dataclasses import KW_ONLY, asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
from tqdm import tqdm

from facevoice.cli import options
from facevoice.service.corpus import manifest_path, read_manifest
from facevoice.service.embedder import Embedder
from facevoice.service.errors import UsageError
from facevoice.service.gallery import BuildPlan, Item, normalise
from facevoice.service.media import MediaError
from facevoice.service.media.image import Box
from facevoice.service.planner import (
    DEFAULT_BUDGET,
    DEFAULT_KINDS,
    KINDS,
    PlanError,
    Tried,
    parse_bytes,
    plan_and_build,
)
from facevoice.service.repository import FACE, VOICE, open_repository
from facevoice.service.runners import EmbeddedRunner, TritonRunner
from facevoice.service.versions import (
    Folded,
    VersionLog,
    current_version,
    publish,
    read_folded,
    read_meta,
    write_version,
)
from facevoice.service.writelog import WriteLog, offset_of, open_log

if TYPE_CHECKING:
    from facevoice.service.shards import BuildShardResult


@dataclass(frozen=True)
class GalleryBuildOptions:
    """What a whole build, a shard and a merge share: which gallery, models and index root, and how
    the index is planned and published. Past the first three, keywords only."""

    gallery: Path  # manifest.csv (corpus format), or its directory
    model_repo: Path  # the exported repository (its facevoice.json)
    out: Path  # the index root
    _: KW_ONLY
    split: tuple[str, ...] | None = None  # only rows of these splits (None: all)
    modalities: tuple[str, ...] = ("face", "voice")
    threads: int = 2  # onnxruntime and FAISS threads
    no_progress: bool = False
    kind: str = "auto"  # auto: the planner's pick under memory_budget; a kind (planner.KINDS, or ivf): only that one
    candidates: tuple[str, ...] = DEFAULT_KINDS  # what auto may pick, most accurate first
    memory_budget: int | str = parse_bytes(DEFAULT_BUDGET)  # resident bytes per index, or a size such as 4GB
    min_recall: float = 0.95  # recall@10 against exact search, on the other modality's queries
    exact_below: int = 50_000  # galleries smaller than this are exact
    redis: str | None = None  # announce new versions on this Redis
    gallery_log: str = "auto"  # auto | file | redis: the write log to fold in, as the service's gallery_log
    no_publish: bool = False  # write the versions but leave `current` alone


@dataclass(frozen=True)
class IndexBuildOptions(GalleryBuildOptions):
    _: KW_ONLY
    triton_url: str | None = None  # run the networks on this Triton (gRPC host:port) instead of in-process
    batch: int = 16
    concurrency: int = 2  # batches in flight
    shard: tuple[int, int] | None = None  # (I, N): embed only slice I of N and keep its vectors for `index merge`


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_gallery_arguments(p)
    p.add_argument("--triton-url", help="run the networks on this Triton (gRPC host:port) instead of in-process")
    p.add_argument("--batch", type=int, default=IndexBuildOptions.batch)
    p.add_argument("--concurrency", type=int, default=IndexBuildOptions.concurrency, help="batches in flight")
    p.add_argument("--shard", type=shard_spec, metavar="I/N",
                   help="embed only slice I of N of the gallery and keep its vectors for `index merge`")
    add_plan_arguments(p)


def add_gallery_arguments(p: argparse.ArgumentParser) -> None:
    """What says which gallery, models and index root (build, shard and merge alike)."""
    o = GalleryBuildOptions
    p.add_argument("--gallery", type=Path, required=True, help="manifest.csv (corpus format), or its directory")
    p.add_argument("--model-repo", type=Path, required=True, help="the exported repository (its facevoice.json)")
    p.add_argument("--out", type=Path, required=True, help="index root")
    p.add_argument("--split", action="append", help="only rows of this split (repeatable; default all)")
    p.add_argument("--modalities", nargs="+", default=o.modalities, choices=["face", "voice"])
    p.add_argument("--threads", type=int, default=o.threads, help="onnxruntime and FAISS threads")
    p.add_argument("--no-progress", action="store_true")


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """How the index is planned and published (build and merge)."""
    o = GalleryBuildOptions
    p.add_argument("--kind", default=o.kind, choices=["auto", "ivf", *KINDS],
                   help="auto: the planner's pick under --memory-budget; a kind: only that one")
    p.add_argument("--candidates", nargs="+", default=o.candidates, choices=list(KINDS), metavar="KIND",
                   help=f"what auto may pick, most accurate first (default {' '.join(DEFAULT_KINDS)})")
    p.add_argument("--memory-budget", default=o.memory_budget, type=budget,
                   help=f"resident bytes per index, e.g. 4GB, 512MB (default {DEFAULT_BUDGET})")
    p.add_argument("--min-recall", "--target-recall", dest="min_recall", type=recall_target, default=o.min_recall,
                   help="recall@10 against exact search on the other modality's queries (default 0.95)")
    p.add_argument("--exact-below", type=int, default=o.exact_below, help="galleries smaller than this are exact")
    p.add_argument("--redis", help="announce new versions on this Redis (redis://host:port/db)")
    p.add_argument("--gallery-log", default=o.gallery_log, choices=["auto", "file", "redis"],
                   help="the write log to fold in, as the service's gallery_log (auto: Redis's with --redis)")
    p.add_argument("--no-publish", action="store_true", help="write the versions but leave `current` alone")


def recall_target(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a recall target is a number in (0, 1], e.g. 0.95")
    return value


def budget(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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


def fold(wlog: WriteLog | None, root: Path, spaces: dict[str, str], upto: str | None
         ) -> dict[str, tuple[Folded, str | None, list[tuple[str, str]]]]:
    """For each space {name: model version}: the previous version's folded writes plus the log's
    changes to it after that version's offset, up to `upto`; (folded, where its replay started,
    dropped (item_id, why) for vectors of another model). The log is read once for every space,
    from the lowest of their offsets."""
    out, starts = {}, {}
    for name in spaces:
        previous = current_version(root, name)
        folded, after = Folded(), None
        if previous is not None:
            folded = read_folded(root, name, previous)
            if wlog is not None:
                after = offset_of(read_meta(root, name, previous), wlog)
        out[name], starts[name] = (folded, after, []), after
    if wlog is None or upto is None:
        return out
    known = [a for a in starts.values() if a is not None]
    first = None if len(known) < len(starts) else min(known, key=wlog.key)
    for offset, change in wlog.entries(first, upto=upto):
        for name, model_version in spaces.items():
            if starts[name] is not None and not wlog.later(offset, starts[name]):
                continue  # folded into this space's previous version already
            folded, _, dropped = out[name]
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
                        dropped.append((it["item_id"], f"upserted live with model {u.model_version}, the build "
                                                       f"embeds with {model_version}: upsert it again, or add it "
                                                       "to the gallery"))
    for folded, _, dropped in out.values():
        for item_id in {i for i, _ in dropped} & folded.erased:
            folded.erased.discard(item_id)  # a manifest row of it may come back; the live vector cannot
    return out


def shard_spec(text: str) -> tuple[int, int]:
    """'2/8' -> (2, 8): slice 2 of 8, counted from 0."""
    i, _, n = text.partition("/")
    try:
        shard = int(i), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a shard is I/N, e.g. 0/4") from None
    try:
        return check_shard(shard)
    except UsageError:
        raise argparse.ArgumentTypeError(f"{text!r}: I must be in 0..N-1 and N at least 1") from None


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise UsageError(f"shard {i}/{n}: I must be in 0..N-1 and N at least 1")
    return shard


def check(opts: GalleryBuildOptions) -> None:
    """What argparse checks of the arguments, for a caller that made the options itself."""
    if not 0.0 < opts.min_recall <= 1.0:
        raise UsageError(f"min_recall {opts.min_recall!r}: a recall target is a number in (0, 1], e.g. 0.95")
    try:
        parse_bytes(opts.memory_budget)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if unknown := set(opts.modalities) - {"face", "voice"}:
        raise UsageError(f"modalities {sorted(unknown)}: face and voice are the modalities")
    if opts.kind not in ("auto", "ivf", *KINDS) or not set(opts.candidates) <= set(KINDS):
        raise UsageError(f"kind {opts.kind!r}, candidates {list(opts.candidates)}: the kinds are {', '.join(KINDS)} "
                         "(and auto or ivf for kind)")


@dataclass
class Setup:
    """What every build (whole, shard or merge) reads first."""

    manifest: object
    runner: str  # its name: embedded, triton, or shards for a merge
    emb: Embedder | None
    rows: dict[str, list[Row]]
    wlog: WriteLog | None
    upto: str | None
    folds: dict
    gallery_hash: str


def setup(opts: GalleryBuildOptions, *, triton_url: str | None = None, fold_log: bool = True,
          embed: bool = True) -> Setup:
    """The models, the gallery's rows and (with `fold_log`) the write log's changes folded onto the
    previous versions; with `embed`, the runner: Triton's at `triton_url`, else in-process."""
    check(opts)
    faiss.omp_set_num_threads(opts.threads)
    manifest = open_repository(opts.model_repo)
    runner = None if not embed else TritonRunner(triton_url) if triton_url \
        else EmbeddedRunner(opts.model_repo, opts.threads)
    rows = gallery_rows(opts.gallery, opts.split)
    wlog = open_log(opts.gallery_log, opts.out, opts.redis) if fold_log else None
    upto = wlog.head() if wlog is not None else None  # what this build folds in; later writes replay on top
    folds = fold(wlog, opts.out, {name: space.version for name, space in manifest.indexed().items()}, upto)
    gallery_hash = hashlib.sha256(manifest_path(opts.gallery).read_bytes()).hexdigest()[:12]
    return Setup(manifest, runner.name if runner else "shards", Embedder(manifest, runner) if runner else None,
                 rows, wlog, upto, folds, gallery_hash)


def edited_ids(s: Setup, modality: str) -> set[str]:
    """Manifest items changed through the log (deleted, or upserted anew): not taken from the manifest."""
    name = {"face": FACE, "voice": VOICE}.get(modality)
    return (s.folds[name][0].erased | set(s.folds[name][0].upserted)) if name in s.folds else set()


@dataclass(frozen=True)
class SpaceBuilt:
    """One index version a build wrote."""

    name: str  # the index (space): face, voice, face_feature
    modality: str
    version: str
    items: int
    skipped: int  # the modality's gallery rows that did not decode
    upserted: int  # items the write log upserted, carried in with their logged vectors
    erased: int  # item ids the write log deleted, kept out
    offset: str | None  # the log offset folded up to
    plan: BuildPlan
    embed_items_per_s: float

    def line(self) -> str:
        return (f"  {self.name:<12} {self.version}  {self.items:>6} items ({self.skipped} skipped); log: "
                f"{self.upserted} upserted, {self.erased} erased, to offset {self.offset};  {self.plan.factory} "
                f"{self.plan.params}  recall@10 {self.plan.recall_at_10:.3f}  {self.plan.bytes_per_item:.0f} "
                f"B/item  embed {self.embed_items_per_s:.1f} items/s")


@dataclass(frozen=True)
class Built:
    """What write_and_publish did, modality by modality."""

    gallery: Path
    modalities: tuple[str, ...]  # in the order built
    spaces: list[SpaceBuilt]  # the versions written
    empty: list[str]  # modalities without rows: nothing written for them
    skipped_files: dict[str, Path]  # modality -> skipped-MODALITY.csv (item_id, reason), when any were
    published: dict[str, str]  # index -> the version `current` now names (none with no_publish)

    @property
    def versions(self) -> dict[str, str]:
        """index -> the version written."""
        return {s.name: s.version for s in self.spaces}

    def lines(self) -> list[str]:
        return [line for m in self.modalities
                for line in ([f"  {m}: no rows in {self.gallery}"] if m in self.empty else
                             [s.line() for s in self.spaces if s.modality == m])]


@dataclass(frozen=True)
class IndexBuildResult:
    gallery: Path
    out: Path
    runner: str  # embedded | triton
    seconds: float
    built: Built

    @property
    def versions(self) -> dict[str, str]:
        return self.built.versions

    @property
    def published(self) -> dict[str, str]:
        return self.built.published

    def summary(self) -> str:
        return "\n".join([f"index build: {self.gallery} -> {self.out} in {self.seconds:.1f} s "
                          f"({self.runner} runner{', published' if self.published else ''})", *self.built.lines()])


def index_build(opts: IndexBuildOptions) -> IndexBuildResult | BuildShardResult:
    """`index build`: embeds the gallery (resumable), folds the write log in, writes and publishes a
    new version per indexed space; with `shard`, only embeds slice I of N (shards.build_shard)."""
    if opts.shard:
        from facevoice.service.shards import build_shard

        return build_shard(opts)
    start = time.perf_counter()
    s = setup(opts, triton_url=opts.triton_url)
    for modality in s.rows:
        edited = edited_ids(s, modality)
        s.rows[modality] = [r for r in s.rows[modality] if r.item.item_id not in edited]
    edits = hashlib.sha256(json.dumps({n: sorted(f[0].erased | set(f[0].upserted)) for n, f in s.folds.items()}
                                      ).encode()).hexdigest()[:8]
    work = opts.out / ".build" / f"{s.gallery_hash}-{edits}-{'+'.join(sorted(opts.split or ['all']))}"
    done = {m: embed_modality(s.emb, s.rows[m], m, work, opts.batch, opts.concurrency, not opts.no_progress)
            if s.rows.get(m) else None for m in opts.modalities}
    built = write_and_publish(opts, s, done)
    return IndexBuildResult(opts.gallery, opts.out, s.runner, time.perf_counter() - start, built)


def run(args: argparse.Namespace) -> int:
    print(index_build(options(IndexBuildOptions, args)).summary())
    return 0


def write_and_publish(opts: GalleryBuildOptions, s: Setup, done: dict[str, Embedded | None]) -> Built:
    """A new version per indexed space of the embedded modalities, planned under the budget; all
    are written before any is published, so a plan that fails publishes nothing."""
    manifest, wlog, upto = s.manifest, s.wlog, s.upto
    spaces, empty, skipped_files = [], [], {}
    for modality, e in done.items():
        names = [n for n, sp in manifest.indexed().items() if sp.modality == modality]
        if e is None and not any(s.folds[n][0].upserted for n in names):
            empty.append(modality)
            continue
        e = e or Embedded([], {n: np.zeros((0, manifest.spaces[n].dim), np.float32) for n in names}, [], 0.0)
        rate = len(e.items) / max(e.seconds, 1e-9)
        skipped = list(e.bad)
        for name, x in e.vectors.items():
            space = manifest.spaces[name]
            folded, after, dropped = s.folds[name]
            live = list(folded.upserted.values())
            items = e.items + [it for it, _ in live]
            if live:
                x = np.concatenate([x.reshape(len(e.items), -1), np.stack([v for _, v in live])]).astype(np.float32)
            x = normalise(x) if space.metric == "cosine" else np.ascontiguousarray(x, np.float32)
            # the real queries of a face index are voices, and back: tune the search on them when built too
            other = {"face": "voice", "voice": "face"}.get(name)
            queries = next((d.vectors[other] for d in done.values() if d and other in d.vectors), None)
            tried: list[Tried] = []
            try:
                index, plan = plan_and_build(x, space.metric, opts.exact_below, opts.kind, opts.min_recall, queries,
                                             memory_budget=opts.memory_budget, kinds=tuple(opts.candidates),
                                             progress=not opts.no_progress, tried=tried)
            except PlanError as err:
                raise PlanError(f"{name}: {err}") from err
            version = write_version(opts.out, name, index, items, plan, model_version=space.version,
                                    metric=space.metric, folded=folded, runner=s.runner, embed_items_per_s=rate,
                                    tuned_on="queries" if queries is not None else "perturbed gallery",
                                    planner=[asdict(t) for t in tried],
                                    log=VersionLog(wlog.kind, upto, after) if wlog else None,
                                    details={"gallery": str(opts.gallery), "gallery_sha256": s.gallery_hash,
                                             "folded": {"upserted": len(live), "erased": len(folded.erased)}})
            spaces.append(SpaceBuilt(name, modality, version, len(items), len(e.bad), len(live), len(folded.erased),
                                     upto, plan, rate))
            skipped += [d for d in dropped if d not in skipped]
        if skipped:
            skipped_files[modality] = opts.out / f"skipped-{modality}.csv"
            with open(skipped_files[modality], "w", newline="") as f:
                csv.writer(f).writerows([("item_id", "reason"), *skipped])
    published = {} if opts.no_publish else {sp.name: sp.version for sp in spaces}
    for name, version in published.items():
        publish(opts.out, name, version)
    if opts.redis and published:
        from facevoice.service.cache import announce

        announce(opts.redis, published)
    return Built(opts.gallery, tuple(done), spaces, empty, skipped_files, published)
