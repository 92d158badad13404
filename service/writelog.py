"""The gallery write log: every acknowledged UpsertItems / DeleteItems, in order, durable.

A gallery write is validated, decoded and embedded first; then its `Change` is appended here,
and only an appended change is acknowledged. Every replica applies the log in order (so a write
reaches all of them), and a replica that loads an index version replays the log from the offset
recorded in that version. `facevoice index build` folds the log into a new version up to an
offset; `facevoice index prune` drops old versions and trims the log below every kept version's
offset.

Two logs, one interface:
- `FileLog` (the embedded default): append-only segment files in `INDEX_ROOT/.gallery-log/`,
  each record length-prefixed and CRC-checked, written under an exclusive `flock` and fsync'd
  before the append returns. Replicas on one host (or one POSIX file system with working locks)
  share it.
- `RedisLog` (production): a Redis Stream (XADD / XREAD / XTRIM MINID), on a Redis with AOF.
  With `appendfsync always` Redis fsyncs before it replies, so an acknowledged write survives a
  power loss; with `everysec` up to about a second of acknowledged writes can be lost to a power
  loss or a kernel crash (not to a Redis crash alone). docs/operations.md has the choice.

Offsets are strings: a byte position for the file log, a stream ID for Redis. Applying a change
is idempotent (an upsert replaces, a delete of a missing id does nothing), so replaying from an
earlier offset than needed is always safe; only the order matters.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facevoice.service.errors import DependencyUnavailable, FacevoiceError, FormatError

log = logging.getLogger("facevoice.writelog")
LOG_DIR = ".gallery-log"
STREAM = "facevoice:gallery"
HEADER = struct.Struct("<II")  # payload length, crc32
MAX_RECORD = 256 << 20


class LogTrimmed(FacevoiceError):
    """The log no longer holds the entries after this offset (trimmed by `index prune`)."""


@dataclass
class IndexChange:
    """An upsert into one index: the items and their vectors, embedded by `model_version`."""

    model_version: str
    items: list[dict]  # {item_id, identity, attributes}
    vectors: np.ndarray  # [n, dim] float32


@dataclass
class Change:
    """One acknowledged gallery write. An upsert names every index it writes (all or nothing);
    a delete names the indexes of one modality and the item ids. No media, only vectors."""

    op: str  # "upsert" | "delete"
    upserts: dict[str, IndexChange] = field(default_factory=dict)
    indexes: list[str] = field(default_factory=list)  # delete: the indexes
    item_ids: list[str] = field(default_factory=list)  # delete: the ids
    actor: str = ""
    at: float = 0.0

    def encode(self) -> bytes:
        names = sorted(self.upserts)
        head = {"op": self.op, "indexes": self.indexes, "item_ids": self.item_ids, "actor": self.actor,
                "at": self.at or time.time(),
                "upserts": {n: {"model_version": self.upserts[n].model_version, "items": self.upserts[n].items,
                                "shape": list(self.upserts[n].vectors.shape)} for n in names}}
        body = json.dumps(head, separators=(",", ":")).encode()
        vecs = b"".join(np.ascontiguousarray(self.upserts[n].vectors, "<f4").tobytes() for n in names)
        return struct.pack("<I", len(body)) + body + vecs

    @classmethod
    def decode(cls, data: bytes) -> Change:
        try:
            (n,) = struct.unpack_from("<I", data)
            head = json.loads(data[4:4 + n])
            pos = 4 + n
            upserts = {}
            for name in sorted(head["upserts"]):
                u = head["upserts"][name]
                rows, dim = u["shape"]
                size = rows * dim * 4
                vectors = np.frombuffer(data[pos:pos + size], "<f4").reshape(rows, dim).astype(np.float32)
                pos += size
                upserts[name] = IndexChange(u["model_version"], u["items"], vectors)
            if head["op"] not in ("upsert", "delete") or pos != len(data):
                raise ValueError("unknown op or trailing bytes")
            return cls(head["op"], upserts, head["indexes"], head["item_ids"], head["actor"], head["at"])
        except (struct.error, ValueError, KeyError, TypeError) as e:
            raise FormatError(f"unreadable gallery-log record ({type(e).__name__}: {e})") from e


class WriteLog:
    """append / read / trim; offsets are opaque strings, ordered by `key`."""

    kind = ""
    start = "0"  # the offset before the first entry ever written

    def key(self, offset: str) -> tuple[int, ...]:
        raise NotImplementedError

    def append(self, change: Change) -> str:
        """Durable when it returns; DependencyUnavailable when the log cannot be written."""
        raise NotImplementedError

    def read(self, after: str, limit: int = 256, wait_s: float = 0.0) -> list[tuple[str, Change]]:
        """Entries after `after`, oldest first (waits up to wait_s for one when there are none);
        LogTrimmed when entries after `after` were trimmed away."""
        raise NotImplementedError

    def first(self) -> str:
        """The lowest offset the log can still be read after."""
        raise NotImplementedError

    def trim(self, before: str) -> int:
        """Drops entries below `before` where it can (whole segments for the file log); returns how
        many bytes (file) or entries (Redis) went."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def entries(self, after: str | None = None, upto: str | None = None) -> Iterator[tuple[str, Change]]:
        """Every entry after `after` (default: all), up to and including `upto`."""
        pos = self.first() if after is None or self.key(after) < self.key(self.first()) else after
        while True:
            batch = self.read(pos, limit=1024)
            if not batch:
                return
            for offset, change in batch:
                if upto is not None and self.key(offset) > self.key(upto):
                    return
                yield offset, change
                pos = offset

    def head(self) -> str:
        """The offset of the newest entry (start when empty)."""
        last = self.start
        for offset, _ in self.entries():
            last = offset
        return last

    def later(self, a: str, b: str) -> bool:
        return self.key(a) > self.key(b)


class FileLog(WriteLog):
    """Segments `<base offset, 20 digits>.log` in `root/.gallery-log/`; a new segment starts when
    the last one passes `segment_bytes`. Offset = base + the byte position after a record."""

    kind = "file"

    def __init__(self, root: Path, segment_bytes: int = 64 << 20):
        self.dir = Path(root) / LOG_DIR
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()  # flock is per open file; one appender per process at a time
        self._known = (-1, 0)  # (segment base, end of its records checked so far)
        self._newest: int | None = None  # the newest segment seen by the last listing

    def key(self, offset: str) -> tuple[int, ...]:
        return (int(offset),)

    def _segments(self) -> list[int]:
        segments = sorted(int(p.stem) for p in self.dir.glob("*.log") if p.stem.isdigit())
        self._newest = segments[-1] if segments else None
        return segments

    def _path(self, base: int) -> Path:
        return self.dir / f"{base:020d}.log"

    @staticmethod
    def _records(data: bytes, pos: int = 0) -> Iterator[tuple[int, int, bytes]]:
        """(start, end, payload) of each whole, intact record from pos; stops at a torn one (or
        one being written)."""
        while pos + HEADER.size <= len(data):
            n, crc = HEADER.unpack_from(data, pos)
            end = pos + HEADER.size + n
            if n > MAX_RECORD or end > len(data):
                return
            payload = data[pos + HEADER.size:end]
            if zlib.crc32(payload) != crc:
                return
            yield pos, end, payload
            pos = end

    def append(self, change: Change) -> str:
        payload = change.encode()
        record = HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        try:
            with self._lock, open(self.dir / "lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                segments = self._segments() or [0]
                base = segments[-1]
                path = self._path(base)
                with open(path, "a+b") as f:
                    size = os.fstat(f.fileno()).st_size
                    # only what was appended since this process last looked is checked
                    start = self._known[1] if self._known[0] == base and self._known[1] <= size else 0
                    f.seek(start)
                    valid = start + max((end for _, end, _ in self._records(f.read(size - start))), default=0)
                    if valid != size:  # a torn tail from a writer that died mid-record
                        log.warning("gallery log %s: dropping a torn tail of %d bytes", path.name, size - valid)
                        f.truncate(valid)
                    if valid >= self.segment_bytes:
                        base += valid
                        path, valid = self._path(base), 0
                new = not path.exists()
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, record)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if new:
                    dfd = os.open(self.dir, os.O_RDONLY)
                    os.fsync(dfd)
                    os.close(dfd)
                self._known = (base, valid + len(record))
                return str(base + valid + len(record))
        except OSError as e:
            raise DependencyUnavailable(f"the gallery log {self.dir} cannot be written ({e})") from e

    def first(self) -> str:
        segments = self._segments()
        return str(segments[0]) if segments else self.start

    def read(self, after: str, limit: int = 256, wait_s: float = 0.0) -> list[tuple[str, Change]]:
        deadline = time.monotonic() + wait_s
        seen = None
        while True:
            mark = self._mark()
            if mark != seen:  # waiting costs two stat calls per poll, not a listing and a read
                out = self._read(int(after), limit)
                if out:
                    return out
                seen = mark
            if time.monotonic() >= deadline:
                return []
            time.sleep(min(0.01, max(deadline - time.monotonic(), 0)))

    def _mark(self) -> tuple[int, ...]:
        """Changes whenever a segment is added, removed or appended to (the folder's mtime, and the
        newest segment's size and mtime)."""
        try:
            folder = os.stat(self.dir).st_mtime_ns
            newest = os.stat(self._path(self._newest)) if self._newest is not None else None
        except OSError:
            return (-1,)  # gone or unreadable: let _read say what is wrong
        return (folder, *((newest.st_size, newest.st_mtime_ns) if newest else ()))

    def _read(self, after: int, limit: int) -> list[tuple[str, Change]]:
        segments = self._segments()
        if not segments:
            return []
        if after < segments[0]:
            raise LogTrimmed(f"gallery log trimmed to {segments[0]}; entries after {after} are gone")
        out = []
        for i, base in enumerate(segments):
            end_of_segment = segments[i + 1] if i + 1 < len(segments) else None
            if end_of_segment is not None and after >= end_of_segment:
                continue
            skip = after - base if after > base else 0
            try:
                with open(self._path(base), "rb") as f:  # only the part after `after`
                    f.seek(skip)
                    data = f.read()
            except FileNotFoundError:  # trimmed while reading
                raise LogTrimmed(f"gallery log segment {base} trimmed while being read") from None
            for _, end, payload in self._records(data):
                out.append((str(base + skip + end), Change.decode(payload)))
                if len(out) >= limit:
                    return out
        return out

    def trim(self, before: str) -> int:
        """Deletes whole segments that end at or below `before`; a newest segment that does is
        closed first (an empty one starts at its end)."""
        dropped = 0
        with self._lock, open(self.dir / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            segments = self._segments()
            if segments:  # a newest segment folded in whole is closed, so it can go too
                last = segments[-1]
                end = last + self._path(last).stat().st_size
                if end <= int(before) and end > last:
                    self._path(end).touch(mode=0o600)
                    segments.append(end)
            for base, next_base in itertools.pairwise(segments):
                if next_base <= int(before):
                    path = self._path(base)
                    dropped += path.stat().st_size
                    path.unlink()
        return dropped


class RedisLog(WriteLog):
    """A Redis Stream; entry IDs are the offsets. `facevoice:gallery:trimmed` remembers the
    highest ID trimmed away, so a reader behind it is told instead of silently skipping."""

    kind = "redis"
    start = "0-0"

    def __init__(self, url: str, stream: str = STREAM, timeout_s: float = 2.0):
        import redis

        self.redis = redis
        self.url, self.stream = url, stream
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           retry_on_timeout=False, health_check_interval=0)

    def key(self, offset: str) -> tuple[int, ...]:
        ms, _, seq = offset.partition("-")
        return (int(ms), int(seq or 0))

    def _unavailable(self, what: str, e: Exception) -> DependencyUnavailable:
        return DependencyUnavailable(f"the gallery log (Redis stream {self.stream} at {self.url}) cannot {what} ({e})")

    def durability(self) -> dict[str, str]:
        """Redis's appendonly / appendfsync settings ({} when CONFIG is not allowed)."""
        try:
            got = {}
            for name in ("appendonly", "appendfsync"):
                got.update({str(k, "utf8") if isinstance(k, bytes) else k: str(v, "utf8") if isinstance(v, bytes)
                            else v for k, v in self.client.config_get(name).items()})
            return got
        except self.redis.ResponseError:
            return {}
        except self.redis.RedisError as e:
            raise self._unavailable("be reached", e) from e

    def append(self, change: Change) -> str:
        try:
            return self.client.xadd(self.stream, {"c": change.encode()}).decode()
        except self.redis.RedisError as e:
            raise self._unavailable("be written", e) from e

    def first(self) -> str:
        try:
            trimmed = self.client.get(f"{self.stream}:trimmed")
        except self.redis.RedisError as e:
            raise self._unavailable("be read", e) from e
        return trimmed.decode() if trimmed else self.start

    def read(self, after: str, limit: int = 256, wait_s: float = 0.0) -> list[tuple[str, Change]]:
        if self.key(after) < self.key(self.first()):
            raise LogTrimmed(f"gallery log trimmed to {self.first()}; entries after {after} are gone")
        try:
            got = self.client.xread({self.stream: after}, count=limit,
                                    block=int(wait_s * 1000) if wait_s > 0 else None)
        except self.redis.RedisError as e:
            raise self._unavailable("be read", e) from e
        out = []
        for _, entries in got or []:
            for entry_id, fields in entries:
                out.append((entry_id.decode(), Change.decode(fields[b"c"])))
        return out

    def trim(self, before: str) -> int:
        try:
            pipe = self.client.pipeline()
            pipe.xtrim(self.stream, minid=before, approximate=False)  # removes IDs lower than `before`
            pipe.set(f"{self.stream}:trimmed", before)
            return int(pipe.execute()[0])
        except self.redis.RedisError as e:
            raise self._unavailable("be trimmed", e) from e

    def close(self) -> None:
        self.client.close()


def open_log(kind: str, index_root: Path | None, redis_url: str | None) -> WriteLog | None:
    """`auto`: the Redis stream when there is a Redis, else the file log in the index root."""
    if kind not in ("auto", "file", "redis"):
        raise FormatError(f"gallery_log must be auto, file or redis, not {kind!r}")
    if kind == "redis" or (kind == "auto" and redis_url):
        if not redis_url:
            raise FormatError("gallery_log = redis needs a Redis URL")
        return RedisLog(redis_url)
    return FileLog(index_root) if index_root is not None else None


def offset_of(meta: dict, wlog: WriteLog) -> str:
    """Where a version's replay starts: its recorded offset in this log, else the log's start
    (a version built without this log: replaying all of it is safe, changes are idempotent)."""
    recorded = meta.get("log") or {}
    return recorded.get("offset", wlog.start) if recorded.get("kind") == wlog.kind else wlog.start
