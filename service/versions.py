"""Index versions on disk: `ROOT/NAME/VERSION/` (index.faiss, the item table, meta.json, checksums),
immutable once written, and `ROOT/NAME/current`, a one-line file naming the served version that
is replaced atomically. A build that dies leaves only a `.tmp-*` directory, never a half version."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import faiss
import numpy as np

from facevoice.service import checksums
from facevoice.service.errors import FacevoiceError, FormatError
from facevoice.service.gallery import BuildPlan, Gallery, Item, apply_search_params
from facevoice.service.itemtable import SCHEMA, ItemTable
from facevoice.service.records import JsonRecord

META = "meta.json"
FILES = ("index.faiss", META)  # and the item table's files (service/itemtable.py), or items.jsonl before it
LEGACY_ITEMS = "items.jsonl"  # versions written before the item table: read into memory
FOLDED = ("folded.json", "folded.npy")  # the write log folded in: what a later build carries forward


class IndexVersionError(FacevoiceError):
    """An index version that must not be served (bad checksum, wrong model version, unreadable)."""


@dataclass(frozen=True)
class VersionLog:
    """The gallery write log a version folded in: its kind, the offset it folded up to (a replica
    replays from there) and the previous version's offset, after which the fold began."""

    kind: str
    offset: str | None = None
    replayed_after: str | None = None


@dataclass(frozen=True)
class IndexMeta(JsonRecord):
    """An index version's meta.json, read and written only here. Its plan is the BuildPlan whole
    (`asdict`, under "plan"); `details` holds what one builder records and no reader needs by name
    (the gallery's path and hash, the counts of folded writes)."""

    FILE: ClassVar[str] = META
    WHAT: ClassVar[str] = "an index version's meta.json"

    name: str  # the index: face, voice, face_feature
    version: str
    model_version: str
    metric: str
    size: int
    dim: int
    plan: BuildPlan
    file_bytes_per_item: float = 0.0
    built_at: str = ""  # UTC, ISO 8601
    runner: str = ""  # what `index build` embedded with: embedded, triton, or shards (a merge)
    embed_items_per_s: float | None = None
    tuned_on: str = ""  # queries (the other modality's) | perturbed gallery
    planner: list[dict] = field(default_factory=list)  # asdict(planner.Tried) of every candidate tried
    log: VersionLog | None = None  # the write log folded in; None: built without one
    details: dict = field(default_factory=dict)

    def _plain(self, name: str):
        value = getattr(self, name)
        return asdict(value) if name in ("plan", "log") and value is not None else value

    @classmethod
    def upgrade(cls, d: dict) -> dict:
        d = dict(d)
        plan = d.pop("plan", None)
        if not isinstance(plan, dict):  # versions before IndexMeta: the plan's fields at the top level, its name
            named = {f.name for f in fields(BuildPlan)} - {"name"}  # under "plan" ("name" is the index's)
            plan = {**{k: d.pop(k) for k in named & d.keys()}, "name": plan or ""}
        log = d.pop("log", None)
        return {**d, "plan": BuildPlan(**plan), "log": VersionLog(**log) if log else None}


@dataclass
class Folded:
    """The gallery writes a version holds beyond its manifest: the ids deleted through the log
    (so a rebuild from the manifest does not bring them back) and the items upserted through it,
    with their vectors (no media is kept, so these cannot be re-embedded by another model)."""

    erased: set[str] = field(default_factory=set)
    upserted: dict[str, tuple[Item, np.ndarray]] = field(default_factory=dict)

    def upsert(self, item: Item, vector: np.ndarray) -> None:
        self.erased.discard(item.item_id)
        self.upserted[item.item_id] = (item, vector)

    def delete(self, item_id: str) -> None:
        self.upserted.pop(item_id, None)
        self.erased.add(item_id)


def read_folded(root: Path, name: str, version: str) -> Folded:
    path = Path(root) / name / version
    if not (path / FOLDED[0]).exists():
        return Folded()
    d = json.loads((path / FOLDED[0]).read_text())
    vectors = np.load(path / FOLDED[1])
    return Folded(set(d["erased"]), {it["item_id"]: (Item(**it), vectors[i]) for i, it in enumerate(d["upserted"])})


def new_version() -> str:
    """Sorts by creation time (microseconds), unique across builders."""
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond:06d}Z-{uuid.uuid4().hex[:6]}"


def write_version(root: Path, name: str, index: faiss.Index, items: list[Item] | ItemTable, plan: BuildPlan, *,
                  model_version: str, metric: str, folded: Folded | None = None, **recorded) -> str:
    """Writes a new immutable version (not yet served); returns its name. `recorded`: more of
    IndexMeta's fields (what `index build` records: runner, tuned_on, planner, log, details)."""
    version = new_version()
    tmp = Path(root) / name / f".tmp-{version}"
    tmp.mkdir(parents=True)
    faiss.write_index(faiss.index_gpu_to_cpu(index) if faiss.get_num_gpus() else index, str(tmp / "index.faiss"))
    table = items if isinstance(items, ItemTable) else ItemTable.of(items)
    table_files = table.write(tmp)
    index_bytes = (tmp / "index.faiss").stat().st_size
    IndexMeta(name=name, version=version, model_version=model_version, metric=metric, size=table.n, dim=index.d,
              plan=plan, file_bytes_per_item=index_bytes / max(table.n, 1),
              built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **recorded).write(tmp)
    files = (*FILES, *table_files)
    if folded is not None:
        ups = list(folded.upserted.values())
        (tmp / FOLDED[0]).write_text(json.dumps({"erased": sorted(folded.erased),
                                                 "upserted": [asdict(it) for it, _ in ups]}))
        with open(tmp / FOLDED[1], "wb") as f:
            np.save(f, np.stack([v for _, v in ups]).astype(np.float32) if ups else np.zeros((0, index.d), np.float32))
        files = files + FOLDED
    checksums.write(tmp, list(files))
    for f in tmp.iterdir():
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    os.replace(tmp, Path(root) / name / version)
    return version


def publish(root: Path, name: str, version: str) -> None:
    """Points NAME's `current` at VERSION, atomically."""
    if any(p in ("", ".", "..") or "/" in p or "\\" in p for p in (name, version)):
        raise IndexVersionError(f"{name!r} / {version!r}: an index and a version are plain names")
    if not (Path(root) / name / version / META).exists():
        raise IndexVersionError(f"{root}/{name}/{version}: no such index version")
    tmp = Path(root) / name / f".current-{uuid.uuid4().hex[:8]}"
    tmp.write_text(version + "\n")
    os.replace(tmp, Path(root) / name / "current")


def current_version(root: Path, name: str) -> str | None:
    try:
        return (Path(root) / name / "current").read_text().strip() or None
    except FileNotFoundError:
        return None


def read_meta(root: Path, name: str, version: str) -> IndexMeta:
    return IndexMeta.read(Path(root) / name / version)


def verify(path: Path, defer_over: int | None = None) -> dict[str, str]:
    """Checks the version's checksums, which must cover its index, meta and item table. Files
    larger than `defer_over` bytes are left out and returned ({file: digest}) for the caller to
    check later (verify_files); None checks every file now."""
    try:
        digests = checksums.read(path)
        required = [*FILES, *(ItemTable.files(path) if (path / SCHEMA).exists() else [LEGACY_ITEMS])]
        if unknown := sorted(set(digests) - set(required) - set(FOLDED)):
            raise checksums.ChecksumMismatch(f"{path}: checksums name files a version does not have: {unknown}")
        if unlisted := [f for f in required if f not in digests]:
            raise checksums.ChecksumMismatch(f"{path}: checksums do not cover {unlisted}")
    except (checksums.ChecksumMismatch, ValueError, KeyError, TypeError) as e:
        raise IndexVersionError(f"checksum mismatch: {e}") from e
    later = {f: d for f, d in digests.items()
             if defer_over is not None and (path / f).is_file() and (path / f).stat().st_size > defer_over}
    verify_files(path, {f: d for f, d in digests.items() if f not in later})
    return later


def verify_files(path: Path, digests: dict[str, str]) -> None:
    """The files verify() left for later; IndexVersionError on a mismatch."""
    try:
        checksums.verify(path, digests)
    except (checksums.ChecksumMismatch, OSError) as e:
        raise IndexVersionError(f"checksum mismatch: {e}") from e


def load_version(root: Path, name: str, version: str, model_version: str, use_gpu: bool = False,
                 mmap: bool = False, verify_later_over: int | None = None) -> Gallery:
    """Verified and ready to search; refuses an index built by another model version. With `mmap`
    the index's codes stay in the page cache (IO_FLAG_MMAP_IFC) and the item table's columns are
    mapped: a replica starts without reading them all, and the gallery reads the index file into
    memory before its first write (the table is never written; edits are its overlay).

    `verify_later_over`: files larger than this many bytes are checked after the load, by the
    caller, from `gallery.unverified` (a 10M-item index file takes seconds to hash); their size
    and structure are still read here. None checks every file before the gallery is returned."""
    path = Path(root) / name / version
    later = verify(path, verify_later_over)
    try:
        meta = IndexMeta.read(path)
        if meta.model_version != model_version:
            raise IndexVersionError(f"{path}: built by model version {meta.model_version}, "
                                    f"the service runs {model_version}")
        index = faiss.read_index(str(path / "index.faiss"), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
        items = ItemTable.open(path, mmap=mmap) if (path / SCHEMA).exists() else _legacy_items(path)
        plan = meta.plan
    except (FormatError, OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise IndexVersionError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    held = len(items) if isinstance(items, dict) else items.n
    if held != meta.size:
        raise IndexVersionError(f"{path}: meta.json says {meta.size} items, the item table holds {held}")
    apply_search_params(index, plan.params)
    if plan.removes and faiss.extract_index_ivf(index).direct_map.type == faiss.DirectMap.NoMap:
        index = faiss.read_index(str(path / "index.faiss"))  # built before the map was stored: make it here
        apply_search_params(index, plan.params)
        faiss.extract_index_ivf(index).set_direct_map_type(faiss.DirectMap.Hashtable)
        mmap = False
    gallery = Gallery(index, items, meta.metric, plan, use_gpu=use_gpu, meta=meta,
                      mapped_from=str(path / "index.faiss") if mmap else None)
    gallery.unverified = later
    return gallery


def _legacy_items(path: Path) -> dict[int, Item]:
    """A version written before the item table: one JSON line per item, read into memory."""
    items = {}
    with open(path / LEGACY_ITEMS) as f:
        for line in f:
            d = json.loads(line)
            row = d.pop("row")
            items[row] = Item(**d)
    return items
