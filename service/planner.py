"""Index plans under a memory budget: which FAISS index a gallery gets, and its search settings.

As autofaiss does, on our own embeddings: each candidate's resident bytes per item are estimated
first, the ones over the budget are skipped, and the rest are built and tuned in order of accuracy
(flat, IVF-Flat, IVF-fp16, IVF-SQ8, IVF-PQ with an exact re-rank, and HNSW when asked for) until
one reaches the recall@10 target against exact search, on queries of the other modality when the
build has them. The first candidate that fits and reaches the target is the plan.

- IVF lists: nlist is the power of two nearest 4 sqrt(n), at most `MAX_NLIST` and n / 39 (FAISS's
  fewest training points per list). From `HNSW_QUANTIZER_FROM` items the lists' centroids are found
  through an HNSW graph (IVF..._HNSW32, as autofaiss does), so adding 10M items does not cost 10M x
  nlist distances. The coarse quantizer and the codecs are trained on a sample of
  `TRAIN_PER_LIST` points per list (at most `MAX_TRAIN`, at least `PQ_MIN_TRAIN` for PQ), and the
  gallery is added in batches of `ADD_BATCH`.
- Tuning: nprobe (efSearch for HNSW) rises until the target is reached; for IVF-PQ the largest code
  (bytes per item) that fits the budget is used and the re-rank depth `k_factor` rises with nprobe.
- IVF-PQ's re-rank reads exact vectors of its top k x k_factor candidates only. Memory-mapped (the
  service's default), those vectors stay on disk and only the rows it touches are read, so the
  budget counts the PQ codes, not them.
- HNSW is not in the default candidates: deletes are tombstones and compaction rebuilds the whole
  graph, and its build costs far more than IVF's (see docs/benchmarks.md's curve).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

import faiss
import numpy as np
from tqdm import tqdm

from facevoice.service.errors import UsageError
from facevoice.service.gallery import BuildPlan, apply_search_params, exact_index, normalise

KINDS = ("flat", "ivf-flat", "ivf-fp16", "ivf-sq8", "ivf-pq", "hnsw")
DEFAULT_KINDS = ("flat", "ivf-flat", "ivf-fp16", "ivf-sq8", "ivf-pq")
ALIASES = {"ivf": "ivf-flat"}
DEFAULT_BUDGET = "4GB"  # per index
MAX_NLIST = 4096
TRAIN_PER_LIST = 64
MAX_TRAIN = 1 << 18
PQ_MIN_TRAIN = 256 * 39  # FAISS's fewest points to train 256 centroids per sub-quantizer
ADD_BATCH = 1 << 16
PQ_SIZES = (64, 32, 16, 8)  # bytes per code, most accurate first
K_FACTORS = (2, 4, 8, 16)
HNSW_M = 32
HNSW_QUANTIZER_FROM = 1_000_000
ID_BYTES = 8  # an IVF entry's id
MAP_BYTES = 32  # an IVF direct map's hash-table entry (exact filtered search reads vectors by id)
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
EF_SEARCH = (16, 32, 64, 128, 256, 512)


class PlanError(UsageError):
    """No candidate fits the memory budget and reaches the recall target (the settings cannot work)."""


def parse_bytes(text: str | int) -> int:
    """'4GB', '512MB', '1.5GiB', '2000000' -> bytes (GB = 10^9, GiB = 2^30)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?b?|b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a size (say 4GB, 512MB or a number of bytes)")
    unit = (m.group(2) or "b").lower().rstrip("b") or "b"
    scale = {"b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
             "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}[unit]
    return int(float(m.group(1)) * scale)


def nlist_for(n: int) -> int:
    """Inverted lists for n vectors: the power of two nearest 4 sqrt(n), within FAISS's limits."""
    if n < 39:
        return 1
    target = 4 * math.sqrt(n)
    return int(max(1, min(2 ** round(math.log2(target)), MAX_NLIST, n // 39)))


@dataclass(frozen=True)
class Candidate:
    """One index the planner may build: its name, FAISS factory string and resident bytes."""

    name: str
    dim: int
    nlist: int = 0
    pq: int = 0  # bytes per PQ code
    graph_quantizer: bool = False  # centroids found through HNSW (large galleries)

    @property
    def family(self) -> str:
        return self.name.split("-")[0]

    @property
    def factory(self) -> str:
        codec = {"ivf-flat": "Flat", "ivf-fp16": "SQfp16", "ivf-sq8": "SQ8", "ivf-pq": f"PQ{self.pq},RFlat"}
        if self.name == "flat":
            return "Flat"
        if self.name == "hnsw":
            return f"HNSW{HNSW_M},Flat"
        return f"IVF{self.nlist}{'_HNSW32' if self.graph_quantizer else ''},{codec[self.name]}"

    def bytes_per_item(self) -> float:
        """What each item keeps in memory while searched (the budget's unit)."""
        d = self.dim
        per = {"flat": 4 * d, "hnsw": 4 * d + 2 * HNSW_M * 4 + 16, "ivf-flat": 4 * d + ID_BYTES + MAP_BYTES,
               "ivf-fp16": 2 * d + ID_BYTES + MAP_BYTES, "ivf-sq8": d + ID_BYTES + MAP_BYTES,
               "ivf-pq": self.pq + ID_BYTES}  # the re-rank's vectors are mapped, read per candidate
        return float(per[self.name])

    def fixed_bytes(self) -> int:
        """Per index, not per item: centroids and codebooks."""
        graph = self.nlist * 2 * HNSW_M * 4 if self.graph_quantizer else 0
        trained = 8 * self.dim if "sq" in self.name else 0  # the scalar quantizer's ranges
        return 4 * self.dim * (self.nlist + (256 if self.pq else 0)) + graph + trained

    def bytes_for(self, n: int) -> int:
        return int(n * self.bytes_per_item() + self.fixed_bytes())


def candidates(n: int, dim: int, budget: int, kinds: tuple[str, ...], exact_below: int) -> list[tuple[Candidate, str]]:
    """Each candidate with why it is or is not built ('' = build it), in the planner's order."""
    out = []
    nlist, graph = nlist_for(n), n >= HNSW_QUANTIZER_FROM
    for kind in kinds:
        if kind == "flat" and n >= exact_below and len(kinds) > 1:
            out.append((Candidate("flat", dim), f"{n} items >= exact_below {exact_below}"))
            continue
        if kind == "ivf-pq":
            sizes = [m for m in PQ_SIZES if dim % m == 0 and m < dim]
            fitting = [m for m in sizes if Candidate(kind, dim, nlist, m, graph).bytes_for(n) <= budget]
            c = Candidate(kind, dim, nlist, fitting[0] if fitting else (sizes[-1] if sizes else 0), graph)
            why = "" if fitting else f"{_gb(c.bytes_for(n))} over the {_gb(budget)} budget"
            out.append((c, why if sizes else f"no PQ size divides {dim}"))
            continue
        c = Candidate(kind, dim, *((nlist, 0, graph) if kind.startswith("ivf") else ()))
        over = c.bytes_for(n) > budget
        out.append((c, f"{_gb(c.bytes_for(n))} over the {_gb(budget)} budget" if over else ""))
    return out


def _gb(b: float) -> str:
    return f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.1f} MB"


@dataclass
class Tried:
    """A candidate as the planner saw it: estimated bytes, what it reached, how long it took."""

    name: str
    factory: str
    bytes_per_item: float
    skipped: str = ""
    recall_at_10: float = 0.0
    params: dict = field(default_factory=dict)
    build_s: float = 0.0


def tuning_queries(vectors: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Gallery rows moved by noise of about their nearest-neighbour distance: queries near, not on,
    the gallery (a row as its own query makes any index look perfect)."""
    picked = vectors[rng.choice(len(vectors), size=min(n, len(vectors)), replace=False)]
    scale = np.median(np.linalg.norm(picked - vectors[rng.choice(len(vectors), len(picked))], axis=1))
    noise = rng.standard_normal(picked.shape).astype(np.float32) * scale / (2 * math.sqrt(vectors.shape[1]))
    return np.ascontiguousarray(picked + noise, np.float32)


def faiss_metric(metric: str) -> int:
    """Our metric name -> FAISS's (cosine spaces are normalised and searched by inner product)."""
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def ground_truth(vectors: np.ndarray, queries: np.ndarray, metric: str, k: int) -> np.ndarray:
    """Exact top-k ids of each query, without copying the gallery into an index."""
    return faiss.knn(queries, vectors, k, metric=faiss_metric(metric))[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the exact top-k that the index's top-k holds."""
    k = truth.shape[1]
    return float(np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found[:, :k], strict=True)]))


def build_candidate(c: Candidate, vectors: np.ndarray, metric: str, rng: np.random.Generator,
                    progress: bool = False) -> faiss.Index:
    """The untuned index: trained on a sample, then the gallery added in batches."""
    n, d = vectors.shape
    fm = faiss_metric(metric)
    if c.name == "flat":
        index = exact_index(d, metric)
    elif c.name == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, fm)
        index.hnsw.efConstruction = 80
    else:
        if c.graph_quantizer:
            quantizer = faiss.IndexHNSWFlat(d, HNSW_M, fm)
            quantizer.hnsw.efSearch = 64
        else:
            quantizer = exact_index(d, metric)
        if c.name == "ivf-flat":
            index = faiss.IndexIVFFlat(quantizer, d, c.nlist, fm)
        elif c.name == "ivf-pq":
            index = faiss.IndexIVFPQ(quantizer, d, c.nlist, c.pq, 8, fm)
        else:
            qt = faiss.ScalarQuantizer.QT_fp16 if c.name == "ivf-fp16" else faiss.ScalarQuantizer.QT_8bit
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, c.nlist, qt, fm)
        index.cp.niter = 10  # k-means on 2 cores: 10 rounds on 64 points per list places the lists well
        sample = min(n, max(TRAIN_PER_LIST * c.nlist, PQ_MIN_TRAIN if c.pq else 0), MAX_TRAIN)
        index.train(vectors[np.sort(rng.choice(n, size=sample, replace=False))])
        if c.name == "ivf-pq":
            index = faiss.IndexRefineFlat(index)  # exact distances for the top k x k_factor
    sequential = c.name in ("flat", "hnsw", "ivf-pq")  # these number rows 0..n-1 themselves
    with tqdm(total=n, desc=f"adding to {c.factory}", unit="item", disable=not progress or n < ADD_BATCH) as bar:
        for s in range(0, n, ADD_BATCH):
            chunk = vectors[s:s + ADD_BATCH]
            if sequential:
                index.add(chunk)
            else:
                index.add_with_ids(chunk, np.arange(s, s + len(chunk), dtype=np.int64))
            bar.update(len(chunk))
    if c.family == "ivf" and c.name != "ivf-pq":
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct by id: exact filtered search
    return index


def tune(index: faiss.Index, c: Candidate, queries: np.ndarray, truth: np.ndarray, target: float) -> tuple[dict, float]:
    """The cheapest search setting reaching the target (or the widest one tried) and its recall."""
    k = truth.shape[1]
    if c.name == "flat":
        return {}, recall(index.search(queries, k)[1], truth)
    if c.name == "hnsw":
        settings = [{"M": HNSW_M, "efSearch": ef} for ef in EF_SEARCH]
    else:
        probes = [p for p in NPROBES if p < c.nlist] + [c.nlist]
        factors = K_FACTORS if c.name == "ivf-pq" else (0,)
        settings = [{"nlist": c.nlist, "nprobe": p, **({"k_factor": f} if f else {})} for p in probes for f in factors]
    best, best_r = settings[-1], -1.0
    for s in settings:
        apply_search_params(index, s)
        r = recall(index.search(queries, k)[1], truth)
        if r > best_r:
            best, best_r = s, r
        if r >= target:
            return s, r
    apply_search_params(index, best)
    return best, best_r


def plan_and_build(vectors: np.ndarray, metric: str, exact_below: int = 50_000, kind: str = "auto",
                   target_recall: float = 0.95, queries: np.ndarray | None = None, seed: int = 0,
                   memory_budget: str | int = DEFAULT_BUDGET, kinds: tuple[str, ...] | None = None,
                   progress: bool = False, tried: list[Tried] | None = None) -> tuple[faiss.Index, BuildPlan]:
    """The index for `vectors` (already normalised for cosine) and how it was chosen.

    kind='auto' walks `kinds` (DEFAULT_KINDS) under the budget; a named kind builds only that one,
    and returns it even below the target (its recall says so); over the budget nothing is built.
    `queries` are the other modality's embeddings when the caller has them, else gallery rows moved
    by noise. `tried` collects every candidate's outcome."""
    n, dim = vectors.shape
    budget = parse_bytes(memory_budget)
    kind = ALIASES.get(kind, kind)
    order = tuple(ALIASES.get(k, k) for k in (kinds or DEFAULT_KINDS)) if kind == "auto" else (kind,)
    unknown = [k for k in order if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown index kind {unknown[0]!r} ({', '.join(('auto', *KINDS))})")
    if kind == "auto" and n < exact_below and "flat" in order:
        order = ("flat",)  # small galleries are searched exactly, if they fit
    rng = np.random.default_rng(seed)
    q = tuning_queries(vectors, 500, rng) if queries is None else np.ascontiguousarray(queries[:1000], np.float32)
    if metric == "cosine" and queries is not None:
        q = normalise(q)
    k = min(10, n)
    truth = ground_truth(vectors, q, metric, k) if n else np.zeros((len(q), 0), np.int64)
    tried = tried if tried is not None else []
    for c, why in candidates(n, dim, budget, order, exact_below):
        t = Tried(c.name, c.factory, c.bytes_per_item(), skipped=why)
        tried.append(t)
        if why:
            continue
        start = time.perf_counter()
        index = build_candidate(c, vectors, metric, rng, progress)
        params, r = tune(index, c, q, truth, target_recall) if n else ({}, 1.0)
        t.recall_at_10, t.params, t.build_s = r, params, time.perf_counter() - start
        plan = BuildPlan(c.family, {**params, **({"pq": c.pq} if c.pq else {})}, r, name=c.name,
                         factory=c.factory, bytes_per_item=c.bytes_per_item(), min_recall=target_recall,
                         memory_budget=budget)
        if r >= target_recall or kind != "auto":
            return index, plan
    lines = "\n".join(f"  {t.factory:<22} {t.bytes_per_item:>6.0f} B/item  "
                      + (f"skipped: {t.skipped}" if t.skipped and not t.params else f"recall@10 {t.recall_at_10:.3f}")
                      for t in tried)
    raise PlanError(f"no index of {n} x {dim} fits {_gb(budget)} with recall@10 >= {target_recall}:\n{lines}\n"
                    "raise --memory-budget, lower --min-recall, or name a --kind")
