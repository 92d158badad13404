"""A searchable gallery: a FAISS index over one embedding space plus each item's metadata.

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

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import faiss
import numpy as np

from facevoice.service.errors import BadRequest

if TYPE_CHECKING:
    from facevoice.service.versions import IndexMeta

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
        self._load(index, items)
        self.lock = ReadWriteLock()
        self.cpu_index = self.index
        from facevoice.service.gpu import place, to_gpu

        self.placement = place(plan, self.size, faiss.get_num_gpus() if use_gpu else 0)
        self.device = self.placement.device
        if self.device == "gpu":
            self.index = to_gpu(index, self.placement)  # faiss does not fall back by itself

    def _load(self, index: faiss.Index, items: dict[int, Item]) -> None:
        self.index = index
        self.items = items
        self.by_item_id = {it.item_id: i for i, it in items.items()}
        # rows by attribute value and by attribute name, so a filter costs its matches, not the gallery
        self.rows_with: dict[tuple[str, str], set[int]] = {}
        self.rows_having: dict[str, set[int]] = {}
        for row, it in items.items():
            self._index_attributes(row, it)
        # flat and HNSW number their rows in order, so a new row's id is ntotal; IVF takes ids
        self.next_id = max(max(items, default=-1) + 1, index.ntotal)
        self.tombstones: set[int] = set(range(index.ntotal)) - set(items)  # rows flat/HNSW cannot remove

    def _index_attributes(self, row: int, item: Item) -> None:
        for name, value in item.attributes.items():
            self.rows_with.setdefault((name, value), set()).add(row)
            self.rows_having.setdefault(name, set()).add(row)

    def attribute_names(self) -> set[str]:
        """Every attribute name the gallery has held (one whose items were deleted stays filterable)."""
        return set(self.rows_having)

    @property
    def size(self) -> int:
        return len(self.items)

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

    def allowed(self, filters: dict[str, set[str]]) -> np.ndarray | None:
        """Row IDs passing every attribute filter (None: no filter). An item without the attribute
        reads as the value ""."""
        if not filters:
            return None
        rows: set[int] | None = None
        for name, values in filters.items():
            match = set().union(*(self.rows_with.get((name, v), ()) for v in values))
            if "" in values:
                match |= self.items.keys() - self.rows_having.get(name, set())
            rows = match if rows is None else rows & match
        return np.fromiter(sorted(rows), np.int64, len(rows))

    def search(self, query: np.ndarray, k: int, filters: dict[str, set[str]] | None = None
               ) -> list[tuple[Item, float]]:
        """Best first: (item, distance) with L2 distance, or 1 - cosine. Fewer than k hits only
        when fewer items pass the filter."""
        q = self._prepare(query)
        with self.lock.read():
            allowed = self.allowed(filters or {})
            if allowed is not None and len(allowed) == 0:
                return []
            k_eff = min(k, self.size if allowed is None else len(allowed))
            if k_eff == 0:
                return []
            if allowed is not None and len(allowed) <= self.exact_filter_rows:
                dist, ids = self._exact(q, allowed, k_eff)
            elif allowed is None and not self.tombstones:
                dist, ids = self.index.search(q, k_eff)
            elif self.device == "gpu":
                dist, ids = self._gpu_filtered(q, k_eff, allowed)
            else:
                dist, ids = self._selected(q, k_eff, allowed)
            return [(self.items[int(i)], self._distance(float(d))) for d, i in zip(dist[0], ids[0], strict=True)
                    if i >= 0 and int(i) in self.items]

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

    def _gpu_filtered(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """GPU indexes take no selector: search wider, post-filter, exactly on the CPU when short."""
        dist, ids = self.index.search(q, gpu_k(k, self.index.ntotal, len(self.tombstones)))
        dead = np.fromiter(self.tombstones, np.int64, len(self.tombstones))
        keep = np.isin(ids[0], allowed) if allowed is not None else (ids[0] >= 0) & ~np.isin(ids[0], dead)
        dist, ids = dist[:, keep][:, :k], ids[:, keep][:, :k]
        if ids.shape[1] < k:
            return self._exact(q, self._rows(allowed), k)
        return dist, ids

    def _selected(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The index with an IDSelector (allowed rows, or all but tombstones), widened until k
        hits are found; exact when the widest setting still falls short."""
        if allowed is not None:
            selector = faiss.IDSelectorBatch(allowed)
        else:
            dead = np.fromiter(self.tombstones, np.int64, len(self.tombstones))
            inner = faiss.IDSelectorBatch(dead)
            selector = faiss.IDSelectorNot(inner)
        share = 1.0 if allowed is None else len(allowed) / max(self.size, 1)
        for params in self._widening(selector, share, k):
            dist, ids = self.index.search(q, k, params=params)
            if (ids[0] >= 0).sum() >= k:
                return dist, ids
        return self._exact(q, self._rows(allowed), k)

    def _rows(self, allowed: np.ndarray | None) -> np.ndarray:
        """The rows a search may return: the filter's, or every live row."""
        return allowed if allowed is not None else np.fromiter(self.items, np.int64, len(self.items))

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
            self._delete([it.item_id for it in items if it.item_id in self.by_item_id])
            ids = np.arange(self.next_id, self.next_id + len(items), dtype=np.int64)
            for index in self._copies():
                if self.plan.removes:
                    index.add_with_ids(x, ids)
                else:
                    index.add(x)
            for i, it in zip(ids, items, strict=True):
                self._index_attributes(int(i), it)
                self.items[int(i)] = it
                self.by_item_id[it.item_id] = int(i)
                self.edited.add(it.item_id)
            self.next_id += len(items)
            self._maybe_compact()

    def delete(self, item_ids: list[str]) -> list[str]:
        """Removes the items; returns the ids that were not there. Ids not in the gallery are
        found under the read lock, so a delete of unknown ids never holds up a search."""
        with self.lock.read():
            present = [i for i in item_ids if i in self.by_item_id]
        if present:
            self._own()
            with self.lock.write():
                self._delete(present)
                self._maybe_compact()
        present_set = set(present)
        self.edited.update(present)
        return [i for i in item_ids if i not in present_set]

    def _delete(self, item_ids: list[str]) -> None:
        rows = []
        for item_id in item_ids:
            row = self.by_item_id.pop(item_id, None)
            if row is None:
                continue
            for name, value in self.items.pop(row).attributes.items():
                self.rows_with[(name, value)].discard(row)
                self.rows_having[name].discard(row)
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
        rows = np.fromiter(sorted(self.items), np.int64, len(self.items))
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
        self._load(index, {new: self.items[int(old)] for new, old in enumerate(rows)})
        self.cpu_index = self.index
        if self.device == "gpu":
            from facevoice.service.gpu import to_gpu

            self.index = to_gpu(index, self.placement)
