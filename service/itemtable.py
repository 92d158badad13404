"""The items of an index version as columns: immutable, memory-mapped, a few bytes per item in memory.

A version's items were a JSON line each, read into Python dicts at start-up: about 0.5 KB and 5-8 s
per million items (docs/benchmarks.md). Here each column is a NumPy array in its own `.npy` file,
described by `items.json`, and a replica maps them (`np.load(mmap_mode="r")`), so start-up reads
only the schema and a search touches only the pages it needs:

- strings (item ids, dictionaries): `offsets` (n + 1, uint32 or int64) and `data` (UTF-8 bytes),
  as Arrow lays out a string array;
- identity and each attribute: dictionary-encoded, `codes` (the narrowest signed integer that holds
  the dictionary; -1 = the item lacks the attribute) and the dictionary as a string column;
- `item_id` lookup: `id_hash` (64-bit BLAKE2b of each id, sorted) and `id_rows` (their rows): a
  binary search on the mapped arrays, then the id itself compared, so a hash collision cannot
  return the wrong item.

An attribute filter becomes a boolean mask over the rows from the codes column (`mask`); masks
are cached per filter, since a version never changes. The write log's overlay (service/gallery.py)
sits on top. NumPy was chosen over Arrow IPC by measurement (docs/benchmarks.md, "Item table"):
both map with no copy and filter at the same speed here, and NumPy keeps pyarrow (about 60 MB)
out of the service image.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import mmap
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from facevoice.service.errors import FormatError

SCHEMA = "items.json"
FORMAT = "facevoice-items/1"
MASK_CACHE = 32  # filters whose masks a table keeps
SMALL_DICTIONARY = 4096  # dictionaries this small are decoded once into Python strings (attributes, not identity)


class ItemTableError(FormatError):
    """An item table that cannot be read as written (missing column, wrong length, bad schema)."""


def id_hash(item_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")


def _code_dtype(n_values: int) -> np.dtype:
    for dt in (np.int8, np.int16, np.int32):
        if n_values <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _random_access(array: np.ndarray | None) -> None:
    """MADV_RANDOM on a mapped column: no read-ahead, so a lookup reads only the pages it needs."""
    m = getattr(array, "_mmap", None)
    if m is not None and hasattr(m, "madvise"):
        m.madvise(mmap.MADV_RANDOM)


class Strings:
    """A string column: offsets and UTF-8 data, each in memory or mapped."""

    def __init__(self, offsets: np.ndarray, data: np.ndarray):
        self.offsets, self.data = offsets, data

    @classmethod
    def of(cls, values: Iterable[str]) -> Strings:
        encoded = [v.encode() for v in values]
        lengths = np.fromiter((len(b) for b in encoded), np.int64, len(encoded))
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if offsets[-1] < np.iinfo(np.uint32).max:
            offsets = offsets.astype(np.uint32)
        return cls(offsets, np.frombuffer(b"".join(encoded), np.uint8).copy())

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return bytes(self.data[int(self.offsets[i]):int(self.offsets[i + 1])]).decode()

    def all(self) -> list[str]:
        blob = bytes(self.data)
        off = self.offsets.tolist()
        return [blob[a:b].decode() for a, b in itertools.pairwise(off)]


class Dictionary:
    """A dictionary-encoded column: codes (-1: absent) and the distinct values."""

    def __init__(self, codes: np.ndarray, values: Strings):
        self.codes, self.values = codes, values
        self._lookup: dict[str, int] | None = None
        self._decoded: list[str] | None = None  # the values as Python strings, for small dictionaries

    @classmethod
    def of(cls, column: list[str | None]) -> Dictionary:
        lookup: dict[str, int] = {}
        codes = [-1 if v is None else lookup.setdefault(v, len(lookup)) for v in column]
        return cls(np.asarray(codes, _code_dtype(len(lookup))), Strings.of(lookup))

    def code_of(self, value: str) -> int | None:
        if self._lookup is None:  # built once, on the first filter (attribute dictionaries are small)
            self._lookup = {v: i for i, v in enumerate(self.values.all())}
        return self._lookup.get(value)

    def value(self, row: int) -> str | None:
        c = int(self.codes[row])
        if c < 0:
            return None
        if self._lookup is not None or len(self.values) <= SMALL_DICTIONARY:
            if self._decoded is None:
                self._decoded = self.values.all()
            return self._decoded[c]
        return self.values[c]


class ItemTable:
    """Rows 0..n-1 of one version: item id, identity and attributes, by column."""

    def __init__(self, item_ids: Strings, identity: Dictionary, attributes: dict[str, Dictionary],
                 id_hash_sorted: np.ndarray, id_rows: np.ndarray, path: Path | None = None):
        self.item_ids, self.identity, self.attributes = item_ids, identity, attributes
        self.id_hash, self.id_rows = id_hash_sorted, id_rows
        self.n = len(item_ids)
        self.path = path  # the version directory when mapped from one
        self._masks: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        for name, col in [("identity", identity), *attributes.items()]:
            if len(col.codes) != self.n:
                raise ItemTableError(f"column {name!r} has {len(col.codes)} rows, the table {self.n}")
        if len(id_hash_sorted) != self.n or len(id_rows) != self.n:
            raise ItemTableError(f"the id lookup has {len(id_hash_sorted)} rows, the table {self.n}")

    # building ---------------------------------------------------------------------------------
    @classmethod
    def of(cls, items: list) -> ItemTable:
        """From Items in row order (row i = items[i])."""
        names = sorted({k for it in items for k in it.attributes})
        return cls.from_columns([it.item_id for it in items], [it.identity for it in items],
                                {n: [it.attributes.get(n) for it in items] for n in names})

    @classmethod
    def from_columns(cls, item_ids: list[str], identities: list[str] | Dictionary,
                     attributes: dict[str, list[str | None] | Dictionary]) -> ItemTable:
        hashes = np.fromiter((id_hash(i) for i in item_ids), np.uint64, len(item_ids))
        order = np.argsort(hashes, kind="stable")
        rows = order.astype(np.uint32 if len(item_ids) < np.iinfo(np.uint32).max else np.int64)
        ident = identities if isinstance(identities, Dictionary) else Dictionary.of(identities)
        attrs = {n: c if isinstance(c, Dictionary) else Dictionary.of(c) for n, c in attributes.items()}
        return cls(Strings.of(item_ids), ident, attrs, hashes[order], rows)

    # reading ----------------------------------------------------------------------------------
    def item(self, row: int):
        from facevoice.service.gallery import Item

        attrs = {}
        for name, col in self.attributes.items():
            v = col.value(row)
            if v is not None:
                attrs[name] = v
        return Item(self.item_ids[row], self.identity.value(row) or "", attrs)

    def row_of(self, item_id: str) -> int | None:
        h = np.uint64(id_hash(item_id))
        lo = int(np.searchsorted(self.id_hash, h, "left"))
        while lo < self.n and self.id_hash[lo] == h:
            row = int(self.id_rows[lo])
            if self.item_ids[row] == item_id:
                return row
            lo += 1
        return None

    def attribute_names(self) -> set[str]:
        return set(self.attributes)

    def mask(self, name: str, values: frozenset[str]) -> np.ndarray:
        """Rows whose attribute NAME is one of VALUES ("" = the item lacks it): a read-only bool
        array of n, cached per (name, values)."""
        key = (name, values)
        with self._lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        col = self.attributes.get(name)
        if col is None:
            out = np.full(self.n, "" in values, bool)
        else:
            codes = [c for v in values if (c := col.code_of(v)) is not None]
            if "" in values:  # "" = lacking the attribute (code -1), as an item whose value is "" does
                codes.append(-1)
            out = np.isin(col.codes, np.asarray(codes, col.codes.dtype)) if codes else np.zeros(self.n, bool)
        out.flags.writeable = False
        with self._lock:
            self._masks[key] = out
            while len(self._masks) > MASK_CACHE:
                self._masks.popitem(last=False)
        return out

    # on disk ----------------------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        out = {"item_id.offsets": self.item_ids.offsets, "item_id.data": self.item_ids.data,
               "id_hash": self.id_hash, "id_rows": self.id_rows,
               "identity.codes": self.identity.codes, "identity.values.offsets": self.identity.values.offsets,
               "identity.values.data": self.identity.values.data}
        for i, (_, col) in enumerate(sorted(self.attributes.items())):
            out[f"attr{i}.codes"] = col.codes
            out[f"attr{i}.values.offsets"] = col.values.offsets
            out[f"attr{i}.values.data"] = col.values.data
        return out

    def write(self, directory: Path) -> list[str]:
        """Writes items.json and one items.*.npy per array into DIRECTORY; the files' names."""
        directory = Path(directory)
        files = []
        for key, array in self._arrays().items():
            fname = f"items.{key}.npy"
            np.save(directory / fname, np.ascontiguousarray(array))
            files.append(fname)
        schema = {"format": FORMAT, "rows": self.n, "attributes": sorted(self.attributes), "files": files}
        (directory / SCHEMA).write_text(json.dumps(schema, indent=1) + "\n")
        return [SCHEMA, *files]

    @classmethod
    def open(cls, directory: Path, mmap: bool = True) -> ItemTable:
        """The table as written; mapped (nothing read but the schema) unless `mmap` is False."""
        directory = Path(directory)
        try:
            schema = json.loads((directory / SCHEMA).read_text())
        except (OSError, ValueError) as e:
            raise ItemTableError(f"{directory / SCHEMA}: unreadable ({type(e).__name__}: {e})") from e
        if not isinstance(schema, dict) or schema.get("format") != FORMAT:
            raise ItemTableError(f"{directory / SCHEMA}: not a {FORMAT} schema")

        arrays: dict[str, np.ndarray] = {}

        def load(key: str) -> np.ndarray:
            try:
                a = np.load(directory / f"items.{key}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ItemTableError(f"items.{key}.npy: unreadable ({type(e).__name__}: {e})") from e
            arrays[key] = a
            return a if mmap else np.asarray(a)

        def dictionary(prefix: str) -> Dictionary:
            return Dictionary(load(f"{prefix}.codes"), Strings(load(f"{prefix}.values.offsets"),
                                                               load(f"{prefix}.values.data")))

        attrs = {name: dictionary(f"attr{i}") for i, name in enumerate(schema.get("attributes", []))}
        table = cls(Strings(load("item_id.offsets"), load("item_id.data")), dictionary("identity"), attrs,
                    load("id_hash"), load("id_rows"), path=directory)
        if mmap:  # read a row at a time: no read-ahead (the codes of attributes are scanned whole by filters)
            for key in ("item_id.offsets", "item_id.data", "id_hash", "id_rows", "identity.codes",
                        "identity.values.offsets", "identity.values.data"):
                _random_access(arrays[key])
        if table.n != schema.get("rows"):
            raise ItemTableError(f"{directory / SCHEMA}: says {schema.get('rows')} rows, the columns hold {table.n}")
        return table

    @staticmethod
    def files(directory: Path) -> list[str]:
        """The files a written table consists of (from its schema), for checksums."""
        schema = json.loads((Path(directory) / SCHEMA).read_text())
        return [SCHEMA, *schema["files"]]
