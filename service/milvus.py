"""Galleries served by Milvus, for galleries no one host can hold: the same interface as the FAISS
gallery (search with attribute filters, upsert, delete, hot swap), with Milvus holding the vectors,
the items and their durability, and replicas holding nothing.

`facevoice index milvus --out INDEX_ROOT --uri URI` copies each current FAISS version into a
Milvus collection, `facevoice_<index>_<version>`, then moves the alias `facevoice_<index>` to it
(Milvus's `alter_alias`: the hot swap, atomic on the server) and drops all but the newest `keep`
collections of that index. `facevoice serve --gallery-backend milvus --milvus-uri URI` searches
the collection the alias names and polls the alias, as a FAISS replica polls `current`.

- Schema: `item_id` (VARCHAR, the primary key: an upsert replaces, a delete removes), `identity`,
  `vector` (FLOAT_VECTOR), and each attribute as a dynamic field `a_<name>` (hex-encoded names
  when a name is not an identifier); an item lacking the attribute lacks the field, which the
  filter `""` matches (`not exists a_<name>`). Values go into filter expressions as escaped
  string literals.
- Metrics: cosine spaces are COSINE (distance 1 - similarity), the rest L2 (Milvus returns the
  squared distance; the square root is taken here, as the FAISS gallery does).
- Each version's meta.json (and the attribute names upserts add) lives in the collection
  `facevoice_meta`, one row per collection, so a replica needs no index root.
- Writes are appended to the gallery write log first (a Redis stream or the index root's file log,
  as on FAISS: acknowledged once there), then applied to Milvus through the alias; `index milvus`
  replays the log onto a new collection before and after the alias moves, and onto the served one
  when it publishes nothing new. Upserts and deletes are idempotent.
- Search results are not cached in Redis (another replica's write changes them unseen);
  embeddings still are.

Tested against Milvus Lite's server (`milvus-lite server`), which speaks Milvus's gRPC protocol;
pointing `--milvus-uri` at a Milvus cluster (`http://milvus:19530`, a token from
`--milvus-token-file`) is the same code. docs/serving.md says when to use it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facevoice.service.errors import BadRequest, DependencyUnavailable, NotLoaded, Stopped, UsageError
from facevoice.service.gallery import Item, normalise
from facevoice.service.gpu import Placement
from facevoice.service.indexes import LogStatus, upsert_change
from facevoice.service.metrics import Metrics
from facevoice.service.versions import IndexMeta, current_version, load_version, read_meta

log = logging.getLogger("facevoice.milvus")
META_COLLECTION = "facevoice_meta"
BATCH = 2000  # rows per insert call
MAX_STRING = 4096  # item ids, identities and attribute values (bytes)
INDEX = {"index_type": "HNSW", "params": {"M": 16, "efConstruction": 200}}
EF = 128  # HNSW search breadth (at least top_k)


def collection_name(index: str, version: str) -> str:
    return "facevoice_" + re.sub(r"[^A-Za-z0-9_]", "_", f"{index}_{version}")


def alias_name(index: str) -> str:
    return f"facevoice_{index}"


def field_of(attribute: str) -> str:
    """The dynamic field holding an attribute: a_<name>, or x_<hex> for a name that is not one."""
    if re.fullmatch(r"[A-Za-z0-9_]{1,60}", attribute):
        return f"a_{attribute}"
    return "x_" + attribute.encode().hex()


def attribute_of(name: str) -> str | None:
    if name.startswith("a_"):
        return name[2:]
    if name.startswith("x_"):
        return bytes.fromhex(name[2:]).decode()
    return None


def literal(value: str) -> str:
    """A Milvus string literal: double-quoted, backslashes and quotes escaped. Control characters
    (a newline, say) have no escape Milvus's grammar is sure to read, so they are refused."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise BadRequest(f"{value[:40]!r}: control characters cannot go into a Milvus filter")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ids_filter(item_ids: list[str]) -> str:
    """item_id in [...] with each id escaped (pymilvus's own ids= form does not escape quotes)."""
    return f"item_id in [{', '.join(literal(i) for i in item_ids)}]"


def expression(filters: dict[str, set[str]]) -> str:
    """Every filter applies; within one, any value ("" = the item lacks the attribute)."""
    parts = []
    for name, values in sorted(filters.items()):
        f = field_of(name)
        named = sorted(v for v in values if v)
        ors = [f"{f} in [{', '.join(literal(v) for v in named)}]"] if named else []
        if "" in values:
            ors.append(f"not exists {f}")
        parts.append("(" + " or ".join(ors) + ")")
    return " and ".join(parts)


def connect(uri: str, token: str | None = None):
    from pymilvus import MilvusClient

    # pymilvus logs every failed call at ERROR with a traceback (an alias not made yet, each poll);
    # what a failure means is said here, once, by the caller
    logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)
    try:
        return MilvusClient(uri=uri, token=token or "")
    except Exception as e:
        raise DependencyUnavailable(f"Milvus at {uri}: {type(e).__name__}: {e}") from e


def _meta_collection(client) -> None:
    from pymilvus import DataType

    if client.has_collection(META_COLLECTION):
        return
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("value", DataType.VARCHAR, max_length=65535)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)  # Milvus requires a vector field
    ip = client.prepare_index_params()
    ip.add_index("v", index_type="FLAT", metric_type="L2")
    client.create_collection(META_COLLECTION, schema=schema, index_params=ip)
    client.load_collection(META_COLLECTION)


def _loaded(client, name: str) -> None:
    """Loads a collection unless it is (a restarted Milvus Lite releases every collection; a
    cluster keeps them loaded, and loading a loaded collection changes nothing)."""
    if "NotLoad" in str(client.get_load_state(name).get("state")):
        client.load_collection(name)


def _retrying(client, name: str, call):
    """CALL, and once more after loading NAME if Milvus says it is released."""
    try:
        return call()
    except Exception as e:
        if "released" not in str(e) and "not loaded" not in str(e).lower():
            raise
    _loaded(client, name)
    return call()


def _get_meta(client, key: str) -> dict | None:
    rows = _retrying(client, META_COLLECTION,
                     lambda: client.query(META_COLLECTION, filter=f"key == {literal(key)}", output_fields=["value"]))
    return json.loads(rows[0]["value"]) if rows else None


def _put_meta(client, key: str, value: dict | str) -> None:
    client.upsert(META_COLLECTION, [{"key": key, "value": value if isinstance(value, str) else json.dumps(value),
                                     "v": [0.0, 0.0]}])


def _attribute_key(collection: str, name: str) -> str:
    return f"attr#{collection}#{name}"


def _put_attributes(client, collection: str, names: set[str]) -> None:
    """Records attribute names a collection's items have, one meta row each, in one call."""
    if names:
        client.upsert(META_COLLECTION, [{"key": _attribute_key(collection, n), "value": n, "v": [0.0, 0.0]}
                                        for n in sorted(names)])


def _attributes(client, collection: str) -> set[str]:
    """The attribute names a collection's items have had: one meta row per name, so two replicas
    adding names at once cannot overwrite each other."""
    rows = _retrying(client, META_COLLECTION, lambda: client.query(
        META_COLLECTION, filter=f"key like {literal(f'attr#{collection}#')[:-1]}%\"", output_fields=["value"]))
    return {r["value"] for r in rows}


def _check(item: Item) -> None:
    """BadRequest for an item Milvus could hold but no filter or delete could name again."""
    for what, s in (("item_id", item.item_id), ("identity", item.identity), *item.attributes.items()):
        if len(s.encode()) > MAX_STRING:
            raise BadRequest(f"{what} is longer than {MAX_STRING} bytes")
        literal(s)  # refused now if it could never be filtered or deleted


def _row(item: Item, vector: np.ndarray) -> dict:
    _check(item)
    return {"item_id": item.item_id, "identity": item.identity, "vector": np.asarray(vector, np.float32).tolist(),
            **{field_of(k): v for k, v in item.attributes.items()}}


def _collections_of(client, index: str) -> list[str]:
    """The index's collections, oldest first (face's, not face_feature's: the version follows)."""
    pattern = re.compile(rf"^facevoice_{re.escape(index)}_\d{{8}}T\d{{6}}_")
    return sorted(c for c in client.list_collections() if pattern.match(c))


def _apply(client, target: str, index: str, change, model_version: str) -> None:
    """One gallery-log entry applied to one collection (or alias), when it names the index."""
    if change.op == "upsert" and index in change.upserts:
        u = change.upserts[index]
        if u.model_version != model_version:
            log.warning("log entry: %s vectors of model %s skipped (the collection holds %s)", index,
                        u.model_version, model_version)
            return
        rows = [_row(Item(**it), v) for it, v in zip(u.items, u.vectors, strict=True)]
        # the names first, so every replica can filter on them once the rows exist
        _put_attributes(client, _resolve(client, target), {a for it in u.items for a in it["attributes"]})
        for s in range(0, len(rows), BATCH):
            client.upsert(target, rows[s:s + BATCH])
    elif change.op == "delete" and index in change.indexes:
        for s in range(0, len(change.item_ids), 1000):
            client.delete(target, filter=ids_filter(change.item_ids[s:s + 1000]))


def _resolve(client, name: str) -> str:
    """A collection's own name, for an alias or a name."""
    return _alias_target(client, name) or name


def replay(client, wlog, collection: str, index: str, model_version: str, after: str) -> tuple[str, int]:
    """The gallery log's entries after AFTER applied to COLLECTION, in order; (the last offset, count)."""
    last, n = after, 0
    for offset, change in wlog.entries(after):
        _apply(client, collection, index, change, model_version)
        last, n = offset, n + 1
    return last, n


# publishing ---------------------------------------------------------------------------------------
def publish_version(client, root: Path, index: str, version: str, keep: int = 2, progress: bool = True,
                    wlog=None) -> tuple[str, int]:
    """Copies an index version (vectors read back from its FAISS index: exact for flat, IVF-Flat and
    re-ranked IVF-PQ, the codes' values for SQ / fp16) and its items into a new collection, applies
    the gallery log's entries after the version's offset, moves the index's alias to it, then
    applies the entries appended meanwhile (their writers wrote through the alias, to the old
    collection, until it moved). Returns (the collection, log entries replayed)."""
    from pymilvus import DataType

    from facevoice.service.writelog import offset_of

    meta = read_meta(root, index, version)
    name = collection_name(index, version)
    alias = alias_name(index)
    _meta_collection(client)
    if _alias_target(client, alias) == name:  # already served: nothing to copy (dropping it would lose
        # its writes); the log is replayed onto it, so a write whose Milvus call failed lands now
        if wlog is None:
            return name, 0
        return name, replay(client, wlog, name, index, meta.model_version, offset_of(meta, wlog))[1]
    g = load_version(root, index, version, meta.model_version, mmap=True)
    if client.has_collection(name):
        client.drop_collection(name)  # a copy that died part-way, never served: start it again
    schema = client.create_schema(auto_id=False, enable_dynamic_field=True)
    schema.add_field("item_id", DataType.VARCHAR, is_primary=True, max_length=MAX_STRING)
    schema.add_field("identity", DataType.VARCHAR, max_length=MAX_STRING)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=meta.dim)
    ip = client.prepare_index_params()
    ip.add_index("vector", metric_type="COSINE" if meta.metric == "cosine" else "L2", **INDEX)
    client.create_collection(name, schema=schema, index_params=ip)
    rows = np.arange(g.table.n)
    with tqdm(total=len(rows), desc=f"{index} -> Milvus", unit="item", disable=not progress) as bar:
        for s in range(0, len(rows), BATCH):
            part = rows[s:s + BATCH]
            x = g.cpu_index.reconstruct_batch(part)
            client.insert(name, [_row(g.item(int(r)), v) for r, v in zip(part, x, strict=True)])
            bar.update(len(part))
    client.load_collection(name)
    _put_meta(client, name, {"meta": meta.to_dict(), "index": index})
    _put_attributes(client, name, g.attribute_names())
    replayed = 0
    after = offset_of(meta, wlog) if wlog is not None else None
    if wlog is not None:
        after, replayed = replay(client, wlog, name, index, meta.model_version, after)
    if _alias_target(client, alias):
        client.alter_alias(name, alias)
    else:
        client.create_alias(name, alias)
    if wlog is not None:  # written through the alias to the old collection before it moved
        replayed += replay(client, wlog, name, index, meta.model_version, after)[1]
    old = [c for c in _collections_of(client, index) if c != name]
    for c in old[:max(0, len(old) - (keep - 1))]:
        client.drop_collection(c)
        client.delete(META_COLLECTION, filter=f"key == {literal(c)}")
        client.delete(META_COLLECTION, filter=f"key like {literal(f'attr#{c}#')[:-1]}%\"")
    return name, replayed


def _alias_target(client, alias: str) -> str | None:
    try:
        return client.describe_alias(alias).get("collection_name")
    except Exception:  # no such alias
        return None


# serving --------------------------------------------------------------------------------------------
class MilvusGallery:
    """One collection, searched as a FAISS gallery is (the handlers cannot tell them apart).
    Searches go to the collection the alias named at the last refresh (so the version reported
    is the one searched); writes go through the alias (so none lands in a collection that has just
    stopped being served: the publisher replays the log onto the new one)."""

    device = "milvus"
    mapped_from = None
    generation = None  # results are not cached: another replica's write changes them unseen
    ATTRIBUTES_TTL_S = 1.0

    def __init__(self, client, index: str, collection: str, meta: IndexMeta):
        self.client, self.index, self.collection, self.meta = client, index, collection, meta
        self.alias = alias_name(index)
        self.plan, self.metric = meta.plan, meta.metric
        self.placement = Placement("milvus", f"Milvus collection {collection}")
        self._attributes: set[str] = set()
        self._attributes_at = -float("inf")
        self.unverified: dict[str, str] = {}
        self.applied = None
        self.edited: set[str] = set()

    @property
    def dim(self) -> int:
        return self.meta.dim

    @property
    def size(self) -> int:
        try:
            return int(self.client.get_collection_stats(self.collection)["row_count"])
        except Exception as e:
            raise DependencyUnavailable(f"Milvus: {type(e).__name__}: {e}") from e

    def attribute_names(self) -> set[str]:
        """Read again at most once a second: another replica's upsert may add a name."""
        if time.monotonic() - self._attributes_at > self.ATTRIBUTES_TTL_S:
            try:
                self._attributes = _attributes(self.client, self.collection)
            except Exception as e:
                raise DependencyUnavailable(f"Milvus: {type(e).__name__}: {e}") from e
            self._attributes_at = time.monotonic()
        return set(self._attributes)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.atleast_2d(x), np.float32)
        if x.shape[1] != self.dim:
            raise BadRequest(f"embedding has {x.shape[1]} dimensions, the index {self.dim}")
        return normalise(x) if self.metric == "cosine" else x

    def search(self, query: np.ndarray, k: int, filters: dict[str, set[str]] | None = None
               ) -> list[tuple[Item, float]]:
        q = self._prepare(query)
        expr = expression(filters or {})  # BadRequest for a value no filter can hold
        try:
            found = _retrying(self.client, self.collection, lambda: self.client.search(
                self.collection, data=[q[0].tolist()], limit=k, filter=expr,
                output_fields=["identity", "$meta"], search_params={"params": {"ef": max(EF, k)}}))[0]
        except Exception as e:
            raise DependencyUnavailable(f"Milvus search: {type(e).__name__}: {e}") from e
        out = []
        for hit in found:
            entity = hit["entity"]
            attrs = {a: v for f, v in entity.items() if (a := attribute_of(f)) is not None}
            d = float(hit["distance"])
            out.append((Item(hit["item_id"], entity.get("identity", ""), attrs),
                        1.0 - d if self.metric == "cosine" else math.sqrt(max(d, 0.0))))
        return out

    def has(self, item_id: str) -> bool:
        return bool(self.present([item_id]))

    def present(self, item_ids: list[str]) -> set[str]:
        """The ids the served collection holds (an id no filter can name was never stored)."""
        ids = [i for i in item_ids if not any(ord(c) < 32 or ord(c) == 127 for c in i)]
        out: set[str] = set()
        try:
            for s in range(0, len(ids), 1000):
                part = ids_filter(ids[s:s + 1000])
                rows = _retrying(self.client, self.collection, lambda part=part: self.client.query(
                    self.collection, filter=part, output_fields=["item_id"]))
                out |= {r["item_id"] for r in rows}
        except Exception as e:
            raise DependencyUnavailable(f"Milvus: {type(e).__name__}: {e}") from e
        return out


@dataclass
class MilvusIndexSet:
    """IndexSet's interface (service/indexes.py) over Milvus aliases: what the handlers and
    `serve` call. A write is appended to the gallery log first (acknowledged once it is there,
    as on FAISS), then applied to Milvus through the alias; `index milvus` replays the log onto
    a new collection, so a write is never lost to a swap."""

    uri: str
    model_versions: dict[str, str]
    metrics: Metrics
    token: str | None = None
    write_log: object = None  # service.writelog.WriteLog; None: read-only
    galleries: dict[str, MilvusGallery] = field(default_factory=dict)
    on_status: object = None

    def __post_init__(self):
        self.client = connect(self.uri, self.token)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.error: str = ""
        self.log = self.write_log

    def get(self, name: str) -> MilvusGallery:
        g = self.galleries.get(name)
        if g is None:
            raise NotLoaded(f"no {name} collection is aliased in Milvus (run `facevoice index milvus`)")
        return g

    def refresh(self) -> dict[str, str]:
        swapped = {}
        with self._lock:
            for name, model_version in self.model_versions.items():
                try:
                    target = _alias_target(self.client, alias_name(name))
                    loaded = self.galleries.get(name)
                    if target is None or (loaded and loaded.collection == target):
                        continue
                    stored = _get_meta(self.client, target)
                    _loaded(self.client, target)
                except Exception as e:
                    self.error = f"Milvus at {self.uri}: {type(e).__name__}: {e}"
                    log.warning("cannot read the %s alias: %s", name, self.error)
                    continue
                if stored is None:
                    log.error("not serving %s: %s has no facevoice_meta row", name, target)
                    continue
                meta = IndexMeta.from_dict(stored["meta"])
                if meta.model_version != model_version:
                    self.metrics.index_swaps.labels(name, "refused").inc()
                    log.error("not serving %s/%s: built by model version %s, the service runs %s", name, target,
                              meta.model_version, model_version)
                    continue
                self.galleries[name] = MilvusGallery(self.client, name, target, meta)
                self.metrics.index_swaps.labels(name, "swapped").inc()
                self.metrics.index_items.labels(name).set(meta.size)
                swapped[name] = meta.version
                self.error = ""
        return swapped

    def catch_up(self, upto: str | None = None) -> None:
        """Milvus holds the state every replica reads: nothing to replay here."""

    def follow(self) -> None:
        return None

    def watch(self, every_s: float) -> threading.Thread:
        def loop() -> None:
            while not self._stop.wait(every_s):
                try:
                    self.refresh()
                    self.report()
                except Exception:
                    log.exception("Milvus alias refresh failed")

        thread = threading.Thread(target=loop, name="facevoice-milvus-watch", daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def _write(self, change) -> str:
        """Appended (acknowledged when this returns), then applied to each index's alias."""
        from facevoice.service.writelog import LogDamaged

        if self.log is None:
            raise DependencyUnavailable("no gallery log: serve with --index-root or a Redis to edit a Milvus gallery")
        try:
            offset = self.log.append(change)
        except LogDamaged as e:
            raise Stopped(str(e)) from e
        names = list(change.upserts) if change.op == "upsert" else change.indexes
        try:
            for name in names:
                g = self.get(name)
                _apply(self.client, g.alias, name, change, g.meta.model_version)
        except BadRequest:
            raise
        except Exception as e:  # in the log: the next `index milvus` applies it; a retry applies it now
            raise DependencyUnavailable(f"the write is logged at {offset} but Milvus did not take it yet "
                                        f"({type(e).__name__}: {e}); repeat the call") from e
        return offset

    def upsert(self, upserts: dict[str, tuple[list[Item], np.ndarray]], actor: str = "") -> str:
        galleries = {name: self.get(name) for name in upserts}  # every index loaded before any is written
        prepared = {name: (items, galleries[name]._prepare(v)) for name, (items, v) in upserts.items()}
        for items, _ in prepared.values():
            for it in items:
                _check(it)  # refused before it is logged
        return self._write(upsert_change({n: g.meta.model_version for n, g in galleries.items()}, prepared, actor))

    def delete(self, names: list[str], item_ids: list[str], actor: str = "") -> tuple[list[str], str]:
        from facevoice.service.writelog import Change

        there = self.get(names[0]).present(item_ids)
        offset = self._write(Change("delete", indexes=list(names), item_ids=list(item_ids), actor=actor))
        return [i for i in item_ids if i not in there], offset

    def log_status(self) -> LogStatus:
        writes = not self.error and self.log is not None
        return LogStatus("milvus", state="unavailable" if self.error else "ok", writes=writes,
                         error=self.error or ("" if self.log is not None else "no gallery log: read-only"))

    def report(self, every_s: float = 0.0) -> LogStatus:
        st = self.log_status()
        if self.on_status is not None:
            self.on_status(st)
        return st

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout_s)
        with contextlib.suppress(Exception):
            self.client.close()
        if self.log is not None:
            self.log.close()


# the verb ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexMilvusOptions:
    out: Path  # the index root whose current versions are copied
    uri: str  # Milvus: http://host:19530 (a cluster, or `milvus-lite server`)
    index: tuple[str, ...] = ()  # which indexes (default: every one with a current version)
    token_file: Path | None = None  # a file holding Milvus's token (user:password or an API key)
    keep: int = 2  # collections kept per index (the served one and the one before it, for a rollback)
    gallery_log: str = "auto"  # the replicas' gallery log, replayed onto each new collection
    redis: str | None = None  # its Redis, for gallery_log auto / redis
    no_progress: bool = False


@dataclass(frozen=True)
class IndexMilvusResult:
    uri: str
    published: dict[str, str]  # index -> collection
    sizes: dict[str, int]
    replayed: dict[str, int]
    seconds: float

    def summary(self) -> str:
        rows = [f"  {alias_name(n)} -> {c} ({self.sizes[n]} items in the version, {self.replayed[n]} log entries "
                "replayed)" for n, c in self.published.items()]
        return "\n".join([f"index milvus: {self.uri}, {len(rows)} aliases in {self.seconds:.1f} s", *rows])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="index root (its current versions are copied)")
    p.add_argument("--uri", required=True, help="Milvus, e.g. http://milvus:19530")
    p.add_argument("--index", nargs="+", default=(), help="indexes to copy (default: every current one)")
    p.add_argument("--token-file", type=Path, help="file holding Milvus's token (user:password, or an API key)")
    p.add_argument("--keep", type=int, default=2,
                   help="collections kept per index (default 2: the served one and the one before, for a rollback)")
    p.add_argument("--gallery-log", default="auto", choices=("auto", "file", "redis"),
                   help="the replicas' gallery log, replayed onto each new collection (the one they serve with)")
    p.add_argument("--redis", help="its Redis (redis://host:port/db): the replicas' --redis-url")
    p.add_argument("--no-progress", action="store_true")


def index_milvus(opts: IndexMilvusOptions) -> IndexMilvusResult:
    """`index milvus`: every named index's current version into Milvus, the log replayed, the alias moved."""
    from facevoice.service.writelog import open_log

    if opts.keep < 1:
        raise UsageError("--keep must be at least 1 (the served collection)")
    names = opts.index or tuple(sorted(p.name for p in Path(opts.out).iterdir()
                                       if p.is_dir() and current_version(opts.out, p.name)))
    if not names:
        raise UsageError(f"{opts.out}: no index has a current version")
    token = opts.token_file.read_text().strip() if opts.token_file else None
    client = connect(opts.uri, token)
    wlog = open_log(opts.gallery_log, opts.out, opts.redis)
    start = time.perf_counter()
    published, sizes, replayed = {}, {}, {}
    try:
        for name in names:
            version = current_version(opts.out, name)
            if version is None:
                raise UsageError(f"{opts.out}/{name}: no current version")
            published[name], replayed[name] = publish_version(client, opts.out, name, version, opts.keep,
                                                              not opts.no_progress, wlog)
            sizes[name] = read_meta(opts.out, name, version).size
    finally:
        client.close()
        if wlog is not None:
            wlog.close()
    return IndexMilvusResult(opts.uri, published, sizes, replayed, time.perf_counter() - start)


def run(args: argparse.Namespace) -> int:
    from facevoice.cli import options

    print(index_milvus(options(IndexMilvusOptions, args)).summary())
    return 0
