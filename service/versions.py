"""Index versions on disk: `ROOT/NAME/VERSION/` (index.faiss, items.jsonl, meta.json, checksums),
immutable once written, and `ROOT/NAME/current`, a one-line file naming the served version that
is replaced atomically. A build that dies leaves only a `.tmp-*` directory, never a half version."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np

from facevoice.service import checksums
from facevoice.service.errors import FacevoiceError
from facevoice.service.gallery import BuildPlan, Gallery, Item, apply_search_params

FILES = ("index.faiss", "items.jsonl", "meta.json")
FOLDED = ("folded.json", "folded.npy")  # the write log folded in: what a later build carries forward


class IndexVersionError(FacevoiceError):
    """An index version that must not be served (bad checksum, wrong model version, unreadable)."""


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


def write_version(root: Path, name: str, index: faiss.Index, items: list[Item], plan: BuildPlan, *,
                  model_version: str, metric: str, extra: dict | None = None, folded: Folded | None = None) -> str:
    """Writes a new immutable version (not yet served); returns its name."""
    version = new_version()
    tmp = Path(root) / name / f".tmp-{version}"
    tmp.mkdir(parents=True)
    faiss.write_index(faiss.index_gpu_to_cpu(index) if faiss.get_num_gpus() else index, str(tmp / "index.faiss"))
    with open(tmp / "items.jsonl", "w") as f:
        for row, it in enumerate(items):
            f.write(json.dumps({"row": row, **asdict(it)}) + "\n")
    index_bytes = (tmp / "index.faiss").stat().st_size
    meta = {"name": name, "version": version, "model_version": model_version, "metric": metric,
            "size": len(items), "dim": index.d, "kind": plan.kind, "params": plan.params,
            "recall_at_10": plan.recall_at_10, "plan": plan.name or plan.kind, "factory": plan.factory,
            "bytes_per_item": plan.bytes_per_item, "min_recall": plan.min_recall,
            "memory_budget": plan.memory_budget, "file_bytes_per_item": index_bytes / max(len(items), 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra or {})}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    files = FILES
    if folded is not None:
        ups = list(folded.upserted.values())
        (tmp / FOLDED[0]).write_text(json.dumps({"erased": sorted(folded.erased),
                                                 "upserted": [asdict(it) for it, _ in ups]}))
        with open(tmp / FOLDED[1], "wb") as f:
            np.save(f, np.stack([v for _, v in ups]).astype(np.float32) if ups else np.zeros((0, index.d), np.float32))
        files = FILES + FOLDED
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
    if not (Path(root) / name / version / "meta.json").exists():
        raise IndexVersionError(f"{root}/{name}/{version}: no such index version")
    tmp = Path(root) / name / f".current-{uuid.uuid4().hex[:8]}"
    tmp.write_text(version + "\n")
    os.replace(tmp, Path(root) / name / "current")


def current_version(root: Path, name: str) -> str | None:
    try:
        return (Path(root) / name / "current").read_text().strip() or None
    except FileNotFoundError:
        return None


def read_meta(root: Path, name: str, version: str) -> dict:
    return json.loads((Path(root) / name / version / "meta.json").read_text())


def verify(path: Path) -> None:
    try:
        digests = checksums.read(path)
        if unknown := sorted(set(digests) - set(FILES + FOLDED)):
            raise checksums.ChecksumMismatch(f"{path}: checksums name files a version does not have: {unknown}")
        checksums.verify(path, digests)
    except checksums.ChecksumMismatch as e:
        raise IndexVersionError(f"checksum mismatch: {e}") from e


def load_version(root: Path, name: str, version: str, model_version: str, use_gpu: bool = False,
                 mmap: bool = False) -> Gallery:
    """Verified and ready to search; refuses an index built by another model version. With `mmap`
    the index's codes stay in the page cache (IO_FLAG_MMAP_IFC): a replica starts without reading
    them all, and the gallery reads the file into memory before its first write."""
    path = Path(root) / name / version
    verify(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta["model_version"] != model_version:
            raise IndexVersionError(f"{path}: built by model version {meta['model_version']}, "
                              f"the service runs {model_version}")
        index = faiss.read_index(str(path / "index.faiss"), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
        items = {}
        with open(path / "items.jsonl") as f:
            for line in f:
                d = json.loads(line)
                row = d.pop("row")
                items[row] = Item(**d)
        plan = BuildPlan(meta["kind"], meta["params"], meta["recall_at_10"], name=meta.get("plan", ""),
                         factory=meta.get("factory", ""), bytes_per_item=meta.get("bytes_per_item", 0.0),
                         min_recall=meta.get("min_recall", 0.0), memory_budget=meta.get("memory_budget", 0))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise IndexVersionError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    apply_search_params(index, plan.params)
    if plan.removes and faiss.extract_index_ivf(index).direct_map.type == faiss.DirectMap.NoMap:
        index = faiss.read_index(str(path / "index.faiss"))  # built before the map was stored: make it here
        apply_search_params(index, plan.params)
        faiss.extract_index_ivf(index).set_direct_map_type(faiss.DirectMap.Hashtable)
        mmap = False
    return Gallery(index, items, meta["metric"], plan, use_gpu=use_gpu, meta=meta,
                   mapped_from=str(path / "index.faiss") if mmap else None)

