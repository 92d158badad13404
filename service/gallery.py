"""A searchable gallery: a FAISS index over one embedding space plus each item's metadata, an
ItemTable (service/itemtable.py: mapped columns, immutable per version) under an overlay of the
live edits since the version (rows deleted, rows added).

Which index a gallery gets (flat, IVF with flat, fp16, SQ8 or re-ranked PQ codes, or HNSW) and its
search settings are chosen at build time under a memory budget (service/planner.py). Cosine spaces
are L2-normalised and searched by inner product. Exact filtered search reads the index's own
vectors back, so over SQ / fp16 codes its distances are the codes' (an IVF-PQ re-ranks from exact
vectors).

Filters follow the usual planner rule of vector databases: a selective filter (at most
`exact_filter_rows` matching items) is searched exactly over the matching vectors; a broad one
goes through the index with an IDSelector, widened (nprobe / efSearch x4 at a time) until top_k
is reached, and exactly when even the widest search falls short. So a search returns fewer than
top_k hits only when fewer items pass the filter. GPU indexes take no selector: they are searched
wider (at most FAISS-GPU's k limit, GPU_MAX_K) and post-filtered, then exactly on the CPU copy
when short. Deleted rows of flat, HNSW and re-ranked indexes (which cannot remove) are tombstones,
compacted away by rebuilding the in-memory index once they pass `compact_at` of it. A version
loaded memory-mapped is read into memory before its first write.
"""

from __future__ import annotations

import functools
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import faiss
import numpy as np

from facevoice.service.errors import BadRequest
from facevoice.service.itemtable import ItemTable

if TYPE_CHECKING:
    from facevoice.service.versions import IndexMeta

MASK_CACHE = 32  # filters whose live-row masks a gallery keeps between edits
GPU_MAX_K = 2048  # FAISS-GPU's largest k (and nprobe)
EXACT_FILTER_ROWS = 20_000  # filters matching at most this many items are searched exactly


@dataclass
class Item:
    item_id: str
    identity: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildPlan:
    """How an index was chosen (service/planner.py): its family, search settings and recall. A
    version's meta.json holds it whole (versions.IndexMeta), so a field added here is kept there."""

    kind: str  # flat | ivf | hnsw: how rows are numbered, removed and searched
    params: dict
    recall_at_10: float
    name: str = ""  # the planner's candidate: flat, ivf-flat, ivf-fp16, ivf-sq8, ivf-pq, hnsw
    factory: str = ""  # FAISS's index factory string, e.g. IVF1024,SQ8
    bytes_per_item: float = 0.0  # resident bytes per item, as the planner counts them
    min_recall: float = 0.0  # the target the build tuned for
    memory_budget: int = 0  # the budget it was chosen under (bytes)

    @property
    def removes(self) -> bool:
        """IVF indexes (but not a re-ranked one) take row ids and remove rows; the rest keep tombstones."""
        return self.kind == "ivf" and "k_factor" not in self.params


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_index(dim: int, metric: str) -> faiss.Index:
    return faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)


def apply_search_params(index: faiss.Index, params: dict) -> None:
    """Search settings are not all kept in an index file: set them on the index read back."""
    if "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    if "k_factor" in params:
        faiss.downcast_index(index).k_factor = float(params["k_factor"])
    if "efSearch" in params:
        faiss.downcast_index(index).hnsw.efSearch = int(params["efSearch"])


class Allowed:
    """The rows a filter lets through: a bool mask over the index's rows, with its count, its
    row numbers (for an exact search) and its bits as FAISS's IDSelectorBitmap reads them."""

    def __init__(self, mask: np.ndarray):
        self.mask = mask
        self.count = int(np.count_nonzero(mask))
        self._rows: np.ndarray | None = None
        self._bits: np.ndarray | None = None

    def rows(self) -> np.ndarray:
        if self._rows is None:
            self._rows = np.flatnonzero(self.mask).astype(np.int64)
        return self._rows

    def bits(self) -> np.ndarray:
        """Bit i of byte i >> 3 is row i (IDSelectorBitmap's order: little-endian bits)."""
        if self._bits is None:
            self._bits = np.packbits(self.mask, bitorder="little")
        return self._bits


class ReadWriteLock:
    """Many searches at once (FAISS releases the GIL), or one edit alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def read(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._writing)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._writing)
            self._writing = True  # new readers wait from here
            self._cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


def gpu_k(k: int, ntotal: int, tombstones: int) -> int:
    """How many neighbours a GPU index is asked for so that k survive post-filtering: 4x k or
    k + every tombstone, never more than the index holds or FAISS-GPU's limit."""
    return max(1, min(ntotal, GPU_MAX_K, max(4 * k, k + tombstones)))


class Gallery:
    """FAISS index (IDs = row numbers) + items; searches run in parallel, edits one at a time.

    `applied` is the write-log offset this gallery has applied up to; `edited` the item ids
    changed since its version was built (the live overlay, bounded by the caller)."""

    def __init__(self, index: faiss.Index, items: dict[int, Item], metric: str, plan: BuildPlan,
                 use_gpu: bool = False, meta: IndexMeta | None = None, exact_filter_rows: int = EXACT_FILTER_ROWS,
                 compact_at: float = 0.25, mapped_from: str | None = None):
        self.metric, self.plan, self.meta = metric, plan, meta  # meta: the version's, None for one built here
        self.mapped_from = mapped_from  # a memory-mapped (read-only) index file: read into memory before a write
        self._owning = threading.Lock()
        self.exact_filter_rows, self.compact_at = exact_filter_rows, compact_at
        self.applied: str | None = None
        self.edited: set[str] = set()
        self.unverified: dict[str, str] = {}  # {file: SHA-256} of its version still to be checked
        self._load(index, items)
        self.lock = ReadWriteLock()
        self.cpu_index = self.index
        from facevoice.service.gpu import place, to_gpu

        self.placement = place(plan, self.size, faiss.get_num_gpus() if use_gpu else 0)
        self.device = self.placement.device
        if self.device == "gpu":
            self.index = to_gpu(index, self.placement)  # faiss does not fall back by itself

    def _load(self, index: faiss.Index, items: dict[int, Item] | ItemTable) -> None:
        """The index and its rows: an immutable ItemTable (rows 0..n-1, mapped from the version or
        built here) under the overlay of live edits. A dict whose rows are not 0..n-1 is all overlay."""
        self.index = index
        if isinstance(items, ItemTable):
            self.table, extra = items, {}
        elif sorted(items) == list(range(len(items))):
            self.table, extra = ItemTable.of([items[r] for r in range(len(items))]), {}
        else:
            self.table, extra = ItemTable.of([]), dict(items)
        self.dead: set[int] = set()  # table rows deleted since the version
        self.extra: dict[int, Item] = {}  # rows added since (>= table.n)
        self.extra_by_id: dict[str, int] = {}
        self.extra_having: dict[str, set[int]] = {}  # attribute name -> added rows having it
        self._masks: dict[tuple, Allowed] = {}  # filter -> live rows passing it, for this overlay
        for row, it in extra.items():
            self._add_extra(row, it)
        # flat and HNSW number their rows in order, so a new row's id is ntotal; IVF takes ids
        self.next_id = max(self.table.n, max(extra, default=-1) + 1, index.ntotal)
        # rows flat/HNSW cannot remove
        self.tombstones: set[int] = set(range(self.table.n, index.ntotal)) - set(extra)

    def _add_extra(self, row: int, item: Item) -> None:
        self.extra[row] = item
        self.extra_by_id[item.item_id] = row
        for name in item.attributes:
            self.extra_having.setdefault(name, set()).add(row)

    def _drop_extra(self, row: int) -> None:
        item = self.extra.pop(row)
        del self.extra_by_id[item.item_id]
        for name in item.attributes:
            self.extra_having[name].discard(row)

    def attribute_names(self) -> set[str]:
        """Every attribute name the gallery has held (one whose items were deleted stays filterable)."""
        return self.table.attribute_names() | set(self.extra_having)

    def row_of(self, item_id: str) -> int | None:
        """The live row holding ITEM_ID, or None."""
        row = self.extra_by_id.get(item_id)
        if row is not None:
            return row
        row = self.table.row_of(item_id)
        return None if row is None or row in self.dead else row

    def has(self, item_id: str) -> bool:
        return self.row_of(item_id) is not None

    def live(self, row: int) -> bool:
        return row in self.extra if row >= self.table.n else row >= 0 and row not in self.dead

    def item(self, row: int) -> Item:
        return self.extra[row] if row >= self.table.n else self.table.item(row)

    @property
    def size(self) -> int:
        return self.table.n - len(self.dead) + len(self.extra)

    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def generation(self) -> str:
        """Names this gallery's content: its version and the log offset applied on top of it."""
        return f"{self.meta.version if self.meta else ''}@{self.applied}"

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.atleast_2d(x), np.float32)
        if x.shape[1] != self.dim:
            raise BadRequest(f"embedding has {x.shape[1]} dimensions, the index {self.dim}")
        return normalise(x) if self.metric == "cosine" else x

    def allowed(self, filters: dict[str, set[str]]) -> Allowed | None:
        """The live rows passing every attribute filter (None: no filter), as a mask over the
        index's rows. An item without the attribute reads as the value "". The table's part comes
        from its dictionary-encoded columns; masks are kept per filter until the next edit."""
        if not filters:
            return None
        key = tuple(sorted((name, frozenset(values)) for name, values in filters.items()))
        cached = self._masks.get(key)
        if cached is not None:
            return cached
        masks = [self.table.mask(name, values) for name, values in key]
        if len(masks) > 1:
            mask = functools.reduce(np.logical_and, masks)  # a new array
        elif self.dead:
            mask = masks[0].copy()
        else:
            mask = masks[0]  # one filter, nothing deleted: the table's own (read-only) mask
        if self.dead:
            mask[np.fromiter(self.dead, np.int64, len(self.dead))] = False
        if self.next_id > self.table.n:
            tail = np.zeros(self.next_id - self.table.n, bool)
            for row, it in self.extra.items():
                tail[row - self.table.n] = all(it.attributes.get(n, "") in v for n, v in key)
            mask = np.concatenate([mask, tail])
        out = Allowed(mask)
        if len(self._masks) >= MASK_CACHE:
            self._masks.clear()
        self._masks[key] = out
        return out

    def search(self, query: np.ndarray, k: int, filters: dict[str, set[str]] | None = None
               ) -> list[tuple[Item, float]]:
        """Best first: (item, distance) with L2 distance, or 1 - cosine. Fewer than k hits only
        when fewer items pass the filter."""
        q = self._prepare(query)
        with self.lock.read():
            allowed = self.allowed(filters or {})
            if allowed is not None and allowed.count == 0:
                return []
            k_eff = min(k, self.size if allowed is None else allowed.count)
            if k_eff == 0:
                return []
            if allowed is not None and allowed.count <= self.exact_filter_rows:
                dist, ids = self._exact(q, allowed.rows(), k_eff)
            elif allowed is None and not self.tombstones:
                dist, ids = self.index.search(q, k_eff)
            elif self.device == "gpu":
                dist, ids = self._gpu_filtered(q, k_eff, allowed)
            else:
                dist, ids = self._selected(q, k_eff, allowed)
            return [(self.item(int(i)), self._distance(float(d))) for d, i in zip(dist[0], ids[0], strict=True)
                    if i >= 0 and self.live(int(i))]

    def _exact(self, q: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search over these rows only (their vectors read back from the CPU index)."""
        vectors = self.cpu_index.reconstruct_batch(rows)
        if self.metric == "cosine":
            score = vectors @ q[0]
            order = np.argsort(-score, kind="stable")[:k]
        else:
            score = ((vectors - q[0]) ** 2).sum(axis=1)
            order = np.argsort(score, kind="stable")[:k]
        return score[order][None].astype(np.float32), rows[order][None]

    def _gpu_filtered(self, q: np.ndarray, k: int, allowed: Allowed | None) -> tuple[np.ndarray, np.ndarray]:
        """GPU indexes take no selector: search wider, post-filter, exactly on the CPU when short."""
        dist, ids = self.index.search(q, gpu_k(k, self.index.ntotal, len(self.tombstones)))
        if allowed is not None:
            found = ids[0]
            keep = (found >= 0) & (found < len(allowed.mask))
            keep[keep] = allowed.mask[found[keep]]
        else:
            dead = np.fromiter(self.tombstones, np.int64, len(self.tombstones))
            keep = (ids[0] >= 0) & ~np.isin(ids[0], dead)
        dist, ids = dist[:, keep][:, :k], ids[:, keep][:, :k]
        if ids.shape[1] < k:
            return self._exact(q, self._rows(allowed), k)
        return dist, ids

    def _selected(self, q: np.ndarray, k: int, allowed: Allowed | None) -> tuple[np.ndarray, np.ndarray]:
        """The index with an IDSelector (a bitmap of the allowed rows, or all but tombstones),
        widened until k hits are found; exact when the widest setting still falls short."""
        if allowed is not None:
            bits = allowed.bits()
            selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))  # n: the bitmap's bytes
            share = allowed.count / max(self.size, 1)
        else:
            dead = np.fromiter(self.tombstones, np.int64, len(self.tombstones))
            inner = faiss.IDSelectorBatch(dead)
            selector = faiss.IDSelectorNot(inner)
            share = 1.0
        for params in self._widening(selector, share, k):
            dist, ids = self.index.search(q, k, params=params)
            if (ids[0] >= 0).sum() >= k:
                return dist, ids
        return self._exact(q, self._rows(allowed), k)

    def _rows(self, allowed: Allowed | None) -> np.ndarray:
        """The rows a search may return: the filter's, or every live row."""
        if allowed is not None:
            return allowed.rows()
        rows = np.arange(self.table.n, dtype=np.int64)
        if self.dead:
            rows = np.delete(rows, np.fromiter(sorted(self.dead), np.int64, len(self.dead)))
        return np.concatenate([rows, np.fromiter(sorted(self.extra), np.int64, len(self.extra))])

    def _widening(self, selector: faiss.IDSelector, share: float, k: int):
        """Search settings from the tuned one up. A filter passing a share s of the gallery starts
        at nprobe / s lists (efSearch / s), so as many passing candidates are scanned as an
        unfiltered search scans; then x4 at a time."""
        if self.plan.kind == "ivf":
            nlist = faiss.extract_index_ivf(self.cpu_index).nlist
            nprobe = min(nlist, math.ceil(self.plan.params["nprobe"] / max(share, 1e-9)))
            while True:
                ivf = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)  # held here while searched
                if "k_factor" in self.plan.params:  # the re-rank's base takes the selector
                    yield faiss.IndexRefineSearchParameters(k_factor=float(self.plan.params["k_factor"]),
                                                            base_index_params=ivf)
                else:
                    yield ivf
                if nprobe >= nlist:
                    return
                nprobe = min(nprobe * 4, nlist)
        elif self.plan.kind == "hnsw":
            ef = max(k, min(4096, math.ceil(self.plan.params["efSearch"] / max(share, 1e-9))))
            while True:
                yield faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
                if ef >= 4096:
                    return
                ef = min(ef * 4, 4096)
        else:
            yield faiss.SearchParameters(sel=selector)

    def _distance(self, d: float) -> float:
        if self.metric == "cosine":
            return 1.0 - d
        return math.sqrt(max(d, 0.0))  # FAISS L2 indexes return squared distances

    def upsert(self, items: list[Item], vectors: np.ndarray) -> None:
        x = self._prepare(vectors)
        self._own()
        with self.lock.write():
            self._delete([it.item_id for it in items if self.has(it.item_id)])
            ids = np.arange(self.next_id, self.next_id + len(items), dtype=np.int64)
            for index in self._copies():
                if self.plan.removes:
                    index.add_with_ids(x, ids)
                else:
                    index.add(x)
            for i, it in zip(ids, items, strict=True):
                self._add_extra(int(i), it)
                self.edited.add(it.item_id)
            self.next_id += len(items)
            self._masks = {}
            self._maybe_compact()

    def delete(self, item_ids: list[str]) -> list[str]:
        """Removes the items; returns the ids that were not there. Ids not in the gallery are
        found under the read lock, so a delete of unknown ids never holds up a search."""
        with self.lock.read():
            present = [i for i in item_ids if self.has(i)]
        if present:
            self._own()
            with self.lock.write():
                self._delete(present)
                self._masks = {}
                self._maybe_compact()
        present_set = set(present)
        self.edited.update(present)
        return [i for i in item_ids if i not in present_set]

    def _delete(self, item_ids: list[str]) -> None:
        rows = []
        for item_id in item_ids:
            row = self.row_of(item_id)
            if row is None:
                continue
            if row >= self.table.n:
                self._drop_extra(row)
            else:
                self.dead.add(row)
            rows.append(row)
        if not rows:
            return
        if self.plan.removes:
            for index in self._copies():
                index.remove_ids(np.asarray(rows, np.int64))
        else:
            self.tombstones.update(rows)

    def _copies(self) -> list[faiss.Index]:
        """The indexes a write goes to: the searched one and, under a GPU copy, the CPU one."""
        return [self.index] if self.index is self.cpu_index else [self.index, self.cpu_index]

    def _own(self) -> None:
        """A memory-mapped index is read-only (FAISS aborts the process on a write to it): read
        the same immutable file into memory once, before the first write. Searches go on while
        it is read; only the swap takes the write lock."""
        if self.mapped_from is None:
            return
        with self._owning:
            if self.mapped_from is None:  # another writer read it meanwhile
                return
            index = faiss.read_index(self.mapped_from)
            apply_search_params(index, self.plan.params)
            with self.lock.write():
                if self.index is self.cpu_index:
                    self.index = index
                self.cpu_index, self.mapped_from = index, None

    def _maybe_compact(self) -> None:
        """Flat, HNSW and re-ranked IVF-PQ keep deleted rows as tombstones: past `compact_at` of the
        index (and at least 1,000 rows) the live rows are re-added to a fresh index and renumbered."""
        if self.plan.removes or len(self.tombstones) < max(1000, self.compact_at * self.index.ntotal):
            return
        rows = self._rows(None)
        vectors = self.cpu_index.reconstruct_batch(rows) if len(rows) else np.zeros((0, self.dim), np.float32)
        if self.plan.kind == "hnsw":
            old = faiss.downcast_index(self.cpu_index)
            index = faiss.IndexHNSWFlat(self.dim, self.plan.params.get("M", 32), old.metric_type)
            index.hnsw.efConstruction = old.hnsw.efConstruction
            index.hnsw.efSearch = old.hnsw.efSearch
        elif self.plan.kind == "ivf":  # re-ranked IVF-PQ: the trained, emptied index takes the rows again
            index = faiss.clone_index(self.cpu_index)
            index.reset()
            apply_search_params(index, self.plan.params)
        else:
            index = exact_index(self.dim, self.metric)
        index.add(vectors)
        self._load(index, ItemTable.of([self.item(int(r)) for r in rows]))
        self.cpu_index = self.index
        if self.device == "gpu":
            from facevoice.service.gpu import to_gpu

            self.index = to_gpu(index, self.placement)
