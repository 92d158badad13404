"""A searchable gallery: a FAISS index over one embedding space plus each item's metadata.

Below `exact_below` items the index is exact (flat); above it IVF (or HNSW), with nprobe /
efSearch chosen at build time as the smallest value whose recall@10 against exact search reaches
the target, measured on the gallery's own embeddings. Cosine spaces are L2-normalised and
searched by inner product. Attribute filters and deletions from HNSW use an IDSelector on CPU;
GPU indexes (which take no selector) are searched wider and post-filtered.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import faiss
import numpy as np

from facevoice.service.errors import BadRequest


@dataclass
class Item:
    item_id: str
    identity: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildPlan:
    kind: str  # flat | ivf | hnsw
    params: dict
    recall_at_10: float


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_index(dim: int, metric: str) -> faiss.Index:
    return faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)


def recall_at_10(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, metric: str) -> float:
    """Share of the exact top-10 (by the same metric) that `index` returns in its top-10."""
    k = min(10, len(vectors))
    exact = exact_index(vectors.shape[1], metric)
    exact.add(vectors)
    _, truth = exact.search(queries, k)
    _, found = index.search(queries, k)
    return float(np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found, strict=True)]))


def tuning_queries(vectors: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Gallery rows moved by noise of about their nearest-neighbour distance: queries near, not on,
    the gallery (a row as its own query makes any index look perfect)."""
    picked = vectors[rng.choice(len(vectors), size=min(n, len(vectors)), replace=False)]
    scale = np.median(np.linalg.norm(picked - vectors[rng.choice(len(vectors), len(picked))], axis=1))
    noise = rng.standard_normal(picked.shape).astype(np.float32) * scale / (2 * math.sqrt(vectors.shape[1]))
    return np.ascontiguousarray(picked + noise, np.float32)


def plan_and_build(vectors: np.ndarray, metric: str, exact_below: int = 50_000, kind: str = "auto",
                   target_recall: float = 0.95, queries: np.ndarray | None = None, seed: int = 0
                   ) -> tuple[faiss.Index, BuildPlan]:
    """The index for `vectors` (already normalised for cosine) and how it was chosen. `queries` are
    real queries when the caller has them (the other modality's embeddings); else tuning_queries."""
    n, dim = vectors.shape
    if kind == "auto":
        kind = "flat" if n < exact_below else "ivf"
    if kind == "flat":
        index = exact_index(dim, metric)
        index.add(vectors)
        return index, BuildPlan("flat", {}, 1.0)
    rng = np.random.default_rng(seed)
    q = tuning_queries(vectors, 500, rng) if queries is None else np.ascontiguousarray(queries[:2000], np.float32)
    if metric == "cosine" and queries is not None:
        q = normalise(q)
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    if kind == "ivf":
        nlist = int(max(1, min(4 * math.sqrt(n), n // 39)))  # FAISS wants >= 39 training points per list
        index = faiss.IndexIVFFlat(exact_index(dim, metric), dim, nlist, faiss_metric)
        index.cp.niter = 10  # k-means on 2 cores: 10 rounds on 50 points per list is plenty for the lists
        index.train(vectors[rng.choice(n, size=min(n, 50 * nlist), replace=False)])
        index.add(vectors)
        knob, values, setter = "nprobe", [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256) if v < nlist] + [nlist], \
            lambda v: setattr(index, "nprobe", v)
        params = {"nlist": nlist}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss_metric)
        index.hnsw.efConstruction = 80
        index.add(vectors)
        knob, values, setter = "efSearch", [16, 32, 64, 128, 256, 512], lambda v: setattr(index.hnsw, "efSearch", v)
        params = {"M": 32}
    else:
        raise ValueError(f"unknown index kind {kind!r} (flat, ivf, hnsw, auto)")
    recall = 0.0
    for v in values:  # the smallest setting that reaches the target
        setter(v)
        recall = recall_at_10(index, vectors, q, metric)
        if recall >= target_recall:
            break
    return index, BuildPlan(kind, {**params, knob: v}, recall)


def apply_params(index: faiss.Index, plan: BuildPlan) -> None:
    """Search settings are not all stored in the index file; set them after reading it."""
    if plan.kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = plan.params["nprobe"]
    elif plan.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = plan.params["efSearch"]


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


class Gallery:
    """FAISS index (IDs = row numbers) + items; searches run in parallel, edits one at a time."""

    def __init__(self, index: faiss.Index, items: dict[int, Item], metric: str, plan: BuildPlan,
                 use_gpu: bool = False, meta: dict | None = None):
        self.metric, self.plan, self.meta = metric, plan, meta or {}
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
        self.lock = ReadWriteLock()
        self.index = index
        self.device = "cpu"
        if use_gpu and faiss.get_num_gpus() > 0 and plan.kind != "hnsw":
            self.index = faiss.index_cpu_to_all_gpus(index)  # faiss does not fall back by itself
            self.device = "gpu"

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
        """Best first: (item, distance) with L2 distance, or 1 - cosine."""
        q = self._prepare(query)
        with self.lock.read():
            allowed = self.allowed(filters or {})
            if allowed is not None and len(allowed) == 0:
                return []
            k_eff = min(k, self.size if allowed is None else len(allowed))
            if k_eff == 0:
                return []
            dead = np.fromiter(self.tombstones, np.int64, len(self.tombstones)) if allowed is None else None
            if allowed is None and not len(dead):
                dist, ids = self.index.search(q, k_eff)
            elif self.device == "gpu":  # GPU indexes take no selector: search wider, then filter
                wider = min(self.index.ntotal, max(4 * k_eff, k_eff + len(self.tombstones)))
                dist, ids = self.index.search(q, wider)
                keep = np.isin(ids[0], allowed) if allowed is not None else ~np.isin(ids[0], dead)
                dist, ids = dist[:, keep][:, :k_eff], ids[:, keep][:, :k_eff]
            else:
                inner = faiss.IDSelectorBatch(allowed if allowed is not None else dead)
                selector = inner if allowed is not None else faiss.IDSelectorNot(inner)
                dist, ids = self.index.search(q, k_eff, params=self._search_params(selector))
            return [(self.items[int(i)], self._distance(float(d))) for d, i in zip(dist[0], ids[0], strict=True)
                    if i >= 0 and int(i) in self.items]

    def _search_params(self, selector: faiss.IDSelector) -> faiss.SearchParameters:
        if self.plan.kind == "ivf":
            return faiss.SearchParametersIVF(sel=selector, nprobe=self.plan.params["nprobe"])
        if self.plan.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=self.plan.params["efSearch"])
        return faiss.SearchParameters(sel=selector)

    def _distance(self, d: float) -> float:
        if self.metric == "cosine":
            return 1.0 - d
        return math.sqrt(max(d, 0.0))  # FAISS L2 indexes return squared distances

    def upsert(self, items: list[Item], vectors: np.ndarray) -> None:
        x = self._prepare(vectors)
        with self.lock.write():
            self._delete([it.item_id for it in items if it.item_id in self.by_item_id])
            ids = np.arange(self.next_id, self.next_id + len(items), dtype=np.int64)
            if self.plan.kind == "ivf":
                self.index.add_with_ids(x, ids)
            else:
                self.index.add(x)
            for i, it in zip(ids, items, strict=True):
                self._index_attributes(int(i), it)
                self.items[int(i)] = it
                self.by_item_id[it.item_id] = int(i)
            self.next_id += len(items)

    def delete(self, item_ids: list[str]) -> list[str]:
        """Removes the items; returns the ids that were not there."""
        with self.lock.write():
            return self._delete(item_ids)

    def _delete(self, item_ids: list[str]) -> list[str]:
        missing = []
        for item_id in item_ids:
            row = self.by_item_id.pop(item_id, None)
            if row is None:
                missing.append(item_id)
                continue
            for name, value in self.items.pop(row).attributes.items():
                self.rows_with[(name, value)].discard(row)
                self.rows_having[name].discard(row)
            if self.plan.kind == "ivf":
                self.index.remove_ids(np.asarray([row], np.int64))
            else:
                self.tombstones.add(row)
        return missing
