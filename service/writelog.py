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

Damage is never cut away. Only a trailing partial record (a writer that died mid-append: nothing
intact follows it in the newest segment) is cut, by the next append. A damaged record with intact
records after it, or an intact one that cannot be decoded, raises `LogDamaged` naming the segment
and byte position (the Redis stream: the entry ID): writes and replay stop there, searches go on,
until an operator runs `facevoice index log repair`, which moves the damaged bytes aside into
`quarantine/` and writes a void record of the same length in their place, so every offset stays
valid (docs/operations.md, "When the log reports damage").
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import signal
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facevoice.service.errors import DependencyUnavailable, FacevoiceError, FormatError

if TYPE_CHECKING:
    from facevoice.service.versions import IndexMeta

log = logging.getLogger("facevoice.writelog")
LOG_DIR = ".gallery-log"
STREAM = "facevoice:gallery"
HEADER = struct.Struct("<II")  # payload length, crc32
MAX_RECORD = 256 << 20
MIN_PAYLOAD = 4  # the shortest payload: a Change's head length (an all-zero run is not a record)
VOID = b"\xffFVQ"  # a void record's payload starts so (no Change's head is 1.4 GB long)
CHUNK = 4 << 20  # the file log is read in chunks of this many bytes (or one record, if longer)
QUARANTINE = "quarantine"
DAMAGED = "DAMAGED"  # the file log's damage mark (the Redis stream's: the key <stream>:damaged)
QUARANTINE_STREAM = ":quarantine"
DAMAGED_KEY = ":damaged"  # the Redis stream's quarantine is a stream of this suffix

# A fault point the crash-point tests switch on: FACEVOICE_LOG_FAULT="STEP:N" SIGKILLs this process
# at step STEP of its N-th append (write-half, write, fsync, dirsync). Off unless set.
_FAULT = os.environ.get("FACEVOICE_LOG_FAULT", "")
_appends = itertools.count(1)


def _fault(step: str, n: int) -> None:
    if f"{step}:{n}" == _FAULT:
        os.kill(os.getpid(), signal.SIGKILL)


class LogTrimmed(FacevoiceError):
    """The log no longer holds the entries after this offset (trimmed by `index prune`)."""


class LogDamaged(FacevoiceError):
    """A damaged record with intact records after it (or an intact record that cannot be decoded):
    the log stops for writes and replay at `where` until `facevoice index log repair` runs."""

    def __init__(self, log_name: str, damage: Damage):
        self.log_name, self.damage = log_name, damage
        super().__init__(f"the gallery log {log_name} is damaged at {damage.where} ({damage.why}); writes and "
                         "replay stop there until an operator runs `facevoice index log repair` "
                         "(docs/operations.md)")


@dataclass
class Damage:
    """One damaged stretch of a log, as `verify` reports it and `repair` quarantines it."""

    where: str  # "segment 00000000000000000000.log, byte 4096" / "entry 1700000000000-0"
    offset: str  # the log offset before the damaged bytes (the previous record's end)
    why: str
    length: int = 0  # bytes (file log)
    segment: int = -1  # file log: the segment's base offset
    position: int = -1  # file log: the damaged bytes' position in the segment


@dataclass
class Verified:
    """What `facevoice index log verify` found."""

    kind: str
    records: int = 0
    void: int = 0  # records a repair wrote over damage
    bytes: int = 0
    segments: int = 0
    first: str = "0"
    head: str = "0"
    torn_tail: int = 0  # bytes of a trailing partial record (cut by the next append)
    damage: list[Damage] = field(default_factory=list)
    quarantined: int = 0  # records moved aside by earlier repairs

    @property
    def ok(self) -> bool:
        return not self.damage


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
    name = ""  # how messages name it: its folder, or its Redis stream
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
        """The offset of the newest entry (start when empty), without reading the log."""
        raise NotImplementedError

    def behind(self, after: str, cap: int = 10_000) -> int:
        """How many entries follow `after` (at most `cap`), without decoding them."""
        raise NotImplementedError

    def verify(self) -> Verified:
        """Every record checked: counts, the torn tail, and each damaged stretch."""
        raise NotImplementedError

    def damaged(self) -> Damage | None:
        """The damage a reader or writer of this log has reported (and no repair has cleared): while it
        stands, every writer refuses, whichever replica found it."""
        raise NotImplementedError

    def _report_damage(self, e: LogDamaged) -> None:
        """Marks the whole log damaged, for every replica, until `repair` clears the mark."""
        raise NotImplementedError

    def repair(self) -> list[Damage]:
        """Moves each damaged record aside into the quarantine and keeps everything after it; returns
        what it moved. Only an operator runs it (`facevoice index log repair`)."""
        raise NotImplementedError

    def later(self, a: str, b: str) -> bool:
        return self.key(a) > self.key(b)


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a short write is not an acknowledged record)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError("the gallery log took no bytes")
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _intact_at(data, pos: int) -> int:
    """The end of the intact record that starts at pos, or -1."""
    if pos + HEADER.size + MIN_PAYLOAD > len(data):
        return -1
    n, crc = HEADER.unpack_from(data, pos)
    end = pos + HEADER.size + n
    if n < MIN_PAYLOAD or n > MAX_RECORD or end > len(data):
        return -1
    return end if zlib.crc32(memoryview(data)[pos + HEADER.size:end]) == crc else -1


def _resync(data: bytes, start: int) -> int:
    """The first position after `start` where an intact record begins, or -1. Candidates are where a
    payload could begin: a Change's head length then '{', or a void record."""
    first = start + 1
    if len(data) - first < HEADER.size + MIN_PAYLOAD:
        return -1
    view = np.frombuffer(data, np.uint8)
    brace = np.flatnonzero(view[first + HEADER.size + 4:] == ord("{"))
    void = np.flatnonzero(view[first + HEADER.size:] == VOID[0])
    for p in np.union1d(brace, void) + first:
        if _intact_at(data, int(p)) >= 0:
            return int(p)
    return -1


class FileLog(WriteLog):
    """Segments `<base offset, 20 digits>.log` in `root/.gallery-log/`; a new segment starts when
    the last one passes `segment_bytes`. Offset = base + the byte position after a record."""

    kind = "file"

    def __init__(self, root: Path, segment_bytes: int = 64 << 20):
        self.dir = Path(root) / LOG_DIR
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.name = str(self.dir)
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

    def damaged(self) -> Damage | None:
        try:
            return Damage(**json.loads((self.dir / DAMAGED).read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            return Damage("an unreadable damage mark", "", str(e))

    def _still_damaged(self, d: Damage) -> bool:
        """Whether the bytes at d still read as damage (a repair may have voided them meanwhile)."""
        try:
            with open(self._path(d.segment), "rb") as f:
                f.seek(d.position)
                data = f.read(max(d.length, HEADER.size + MIN_PAYLOAD))
        except OSError:
            return False
        end = _intact_at(data, 0)
        if end < 0:
            return True
        try:
            self._entry(d.segment, d.position, d.position + end, data[HEADER.size:end])
            return False
        except LogDamaged:
            return True

    def _report_damage(self, e: LogDamaged, locked: bool = False) -> None:
        """Marks the log under the writers' lock (`locked`: the caller holds it), after reading the
        damaged bytes again: a reader that met them just before a repair does not mark the repaired log."""
        try:
            with open(self.dir / "lock", "a") as lock:
                if not locked:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # released when `lock` closes
                if not (self.dir / DAMAGED).exists() and self._still_damaged(e.damage):
                    tmp = self.dir / f".{DAMAGED}.{os.getpid()}"
                    tmp.write_text(json.dumps(asdict(e.damage)))
                    os.replace(tmp, self.dir / DAMAGED)
        except OSError as err:
            log.error("gallery log %s: cannot mark it damaged (%s)", self.dir, err)

    def _entry(self, base: int, start: int, end: int, payload: bytes) -> Change | None:
        """The change an intact record holds; None for a void record; LogDamaged when it cannot be
        decoded."""
        if payload[:4] == VOID:
            return None
        try:
            return Change.decode(payload)
        except FormatError as e:
            raise LogDamaged(self.name, self._damage(base, start, end - start, f"an intact record that "
                                                     f"cannot be decoded: {e}")) from e

    def _damage(self, base: int, position: int, length: int, why: str) -> Damage:
        return Damage(f"segment {self._path(base).name}, byte {position}", str(base + position), why, length,
                      base, position)

    def _scan(self, f, base: int, pos: int, size: int, newest: bool) -> Iterator[tuple[int, int, bytes]]:
        """(start, end, payload) of each intact record of the open segment `f` from pos to size, read
        in chunks. Stops quietly at a trailing partial record of the newest segment (a writer died
        mid-append, or is appending now); LogDamaged at any other bad record."""
        buf, at = b"", pos  # buf holds the file's bytes [at, at + len(buf))
        while pos < size:
            if pos + HEADER.size > at + len(buf):
                f.seek(pos)
                buf, at = f.read(min(CHUNK, size - pos)), pos
            end = -1
            if pos + HEADER.size <= at + len(buf):
                n, crc = HEADER.unpack_from(buf, pos - at)
                end = pos + HEADER.size + n
                if MIN_PAYLOAD <= n <= MAX_RECORD and end <= size:
                    if end > at + len(buf):
                        f.seek(pos)
                        buf, at = f.read(max(CHUNK, end - pos)), pos
                    payload = buf[pos - at + HEADER.size:end - at]
                    if zlib.crc32(payload) == crc:
                        yield pos, end, payload
                        pos = end
                        continue
            f.seek(pos)  # a bad record: is anything intact after it?
            rest = f.read(size - pos)
            resume = _resync(rest, 0)
            if resume < 0 and newest:
                return
            length = resume if resume >= 0 else len(rest)
            why = ("a header that promises more bytes than the segment holds" if end < 0 or end > size
                   else "a checksum mismatch")
            why += ", with intact records after it" if resume >= 0 else " at the end of a closed segment"
            raise LogDamaged(self.name, self._damage(base, pos, length, why))

    def _checked_end(self, f, base: int, size: int) -> int:
        """The end of the newest segment's intact records (what this process checked is not re-read)."""
        valid = self._known[1] if self._known[0] == base and self._known[1] <= size else 0
        for _, end, _ in self._scan(f, base, valid, size, newest=True):
            valid = end
        self._known = (base, valid)
        return valid

    def append(self, change: Change) -> str:
        payload = change.encode()
        record = HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        n = next(_appends)
        try:
            with self._lock, open(self.dir / "lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                marked = self.damaged()
                if marked is not None:
                    raise LogDamaged(self.name, marked)
                segments = self._segments() or [0]
                base = segments[-1]
                path = self._path(base)
                first = not path.exists()  # the log's first segment: made owner-only, its folder fsync'd
                with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+b") as f:
                    size = os.fstat(f.fileno()).st_size
                    try:
                        valid = self._checked_end(f, base, size)  # nothing is cut, nothing written
                    except LogDamaged as e:
                        self._report_damage(e, locked=True)
                        raise
                    if valid != size:  # a trailing partial record: a writer that died mid-append
                        log.warning("gallery log %s: cutting a trailing partial record of %d bytes (never "
                                    "acknowledged)", path.name, size - valid)
                        f.truncate(valid)
                        os.fsync(f.fileno())
                    if valid >= self.segment_bytes:
                        base += valid
                        path, valid = self._path(base), 0
                new = first or not path.exists()
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    if f"write-half:{n}" == _FAULT:
                        os.write(fd, record[:len(record) // 2])
                        _fault("write-half", n)
                    _write_all(fd, record)
                    _fault("write", n)
                    os.fsync(fd)
                    _fault("fsync", n)
                finally:
                    os.close(fd)
                if new:
                    _fsync_dir(self.dir)
                    _fault("dirsync", n)
                self._known = (base, valid + len(record))
                return str(base + valid + len(record))
        except OSError as e:
            raise DependencyUnavailable(f"the gallery log {self.dir} cannot be written ({e})") from e

    def first(self) -> str:
        segments = self._segments()
        return str(segments[0]) if segments else self.start

    def head(self) -> str:
        """The end of the newest segment's intact records: one segment is read at most once per
        process, and then only what was appended since (so the cost does not grow with the log)."""
        for _ in range(100):
            with self._lock:
                segments = self._segments()
                if not segments:
                    return self.start
                base = segments[-1]
                try:
                    with open(self._path(base), "rb") as f:
                        return str(base + self._checked_end(f, base, os.fstat(f.fileno()).st_size))
                except FileNotFoundError:  # trimmed meanwhile: ask again, outside the lock
                    pass
        raise DependencyUnavailable(f"the gallery log {self.dir} keeps changing under its reader")

    def _segments_after(self, after: int) -> Iterator[tuple[int, bool]]:
        """(base, newest) of each segment that can hold entries after the offset, oldest first."""
        segments = self._segments()
        for i, base in enumerate(segments):
            newest = i + 1 == len(segments)
            if newest or after < segments[i + 1]:
                yield base, newest

    def behind(self, after: str, cap: int = 10_000) -> int:
        count, pos = 0, int(after)
        for base, _ in self._segments_after(pos):
            try:
                with open(self._path(base), "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    at = max(pos - base, 0)
                    while at + HEADER.size <= size and count < cap:
                        f.seek(at)
                        head = f.read(HEADER.size + len(VOID))
                        n, _ = HEADER.unpack_from(head)
                        if n < MIN_PAYLOAD or at + HEADER.size + n > size:
                            break
                        at += HEADER.size + n
                        count += head[HEADER.size:] != VOID  # a void record is no entry
            except FileNotFoundError:
                continue
        return count

    def read(self, after: str, limit: int = 256, wait_s: float = 0.0) -> list[tuple[str, Change]]:
        deadline = time.monotonic() + wait_s
        seen = None
        while True:
            mark = self._mark()
            if mark != seen:  # waiting costs two stat calls per poll, not a listing and a read
                try:
                    out = self._read(int(after), limit)
                except LogDamaged as e:
                    self._report_damage(e)
                    raise
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

    def _realign(self, f, base: int, pos: int, size: int) -> int:
        """A reader's offset inside what a repair voided (a record that ended inside the damage):
        the end of that void record; else pos itself."""
        try:
            for start, end, payload in self._scan(f, base, 0, size, newest=True):
                if start < pos < end and payload[:4] == VOID:
                    return end
                if end >= pos:
                    break
        except LogDamaged:
            pass
        return pos

    def _read(self, after: int, limit: int) -> list[tuple[str, Change]]:
        segments = self._segments()
        if not segments:
            return []
        if after < segments[0]:
            raise LogTrimmed(f"gallery log trimmed to {segments[0]}; entries after {after} are gone")
        out = []
        for base, newest in self._segments_after(after):
            pos = after - base if after > base else 0
            with self._open(base) as f:
                size = os.fstat(f.fileno()).st_size
                try:
                    if self._read_segment(f, base, pos, size, newest, out, limit):
                        return out
                except LogDamaged as e:
                    if out:  # what comes before the damage is read; the next read stops at it
                        return out
                    moved = self._realign(f, base, pos, size) if e.damage.position == pos and pos else pos
                    if moved == pos:
                        raise
                    if self._read_segment(f, base, moved, size, newest, out, limit):
                        return out
        return out

    def _open(self, base: int):
        try:
            return open(self._path(base), "rb")
        except FileNotFoundError:  # trimmed while reading
            raise LogTrimmed(f"gallery log segment {base} trimmed while being read") from None

    def _read_segment(self, f, base: int, pos: int, size: int, newest: bool, out: list, limit: int) -> bool:
        """Appends the segment's entries from pos to out; True once out holds `limit`."""
        for start, end, payload in self._scan(f, base, pos, size, newest):
            change = self._entry(base, start, end, payload)
            if change is None:
                continue
            out.append((str(base + end), change))
            if len(out) >= limit:
                return True
        return False

    def verify(self) -> Verified:
        v = Verified(self.kind)
        segments = self._segments()
        v.segments, v.first = len(segments), self.first()
        v.head = v.first
        for i, base in enumerate(segments):
            newest = i == len(segments) - 1
            with open(self._path(base), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                v.bytes += size
                pos = 0
                while True:
                    try:
                        for start, end, payload in self._scan(f, base, pos, size, newest):
                            pos = end
                            try:
                                if self._entry(base, start, end, payload) is None:
                                    v.void += 1
                                else:
                                    v.records += 1
                            except LogDamaged as e:
                                v.damage.append(e.damage)
                        break
                    except LogDamaged as e:
                        v.damage.append(e.damage)
                        pos = e.damage.position + e.damage.length
                if newest:
                    v.torn_tail, v.head = size - pos, str(base + pos)
        quarantine = self.dir / QUARANTINE
        v.quarantined = len(list(quarantine.glob("*.bin"))) if quarantine.exists() else 0
        return v

    def repair(self) -> list[Damage]:
        """Each damaged stretch: its bytes copied to `quarantine/<offset>.bin`, then overwritten in
        place by a void record of the same length (so no offset moves), both fsync'd, and a line in
        `quarantine/repairs.jsonl`. Runs under the writers' lock."""
        with self._lock, open(self.dir / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = self.verify().damage
            if not found:
                (self.dir / DAMAGED).unlink(missing_ok=True)  # a mark left by damage mended otherwise
                return []
            quarantine = self.dir / QUARANTINE
            quarantine.mkdir(mode=0o700, exist_ok=True)
            for d in found:
                if d.length < HEADER.size + len(VOID):
                    raise FormatError(f"{d.where}: {d.length} damaged bytes are too few to void; move the "
                                      "segment aside and restore it from a backup")
                with open(self._path(d.segment), "r+b") as f:
                    f.seek(d.position)
                    bad = f.read(d.length)
                    kept = quarantine / f"{d.segment + d.position:020d}.bin"
                    for again in itertools.count(1):  # a repair run again never overwrites what one kept
                        if not kept.exists():
                            break
                        kept = quarantine / f"{d.segment + d.position:020d}-{again}.bin"
                    fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    try:
                        _write_all(fd, bad)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    void = VOID + bytes(d.length - HEADER.size - len(VOID))
                    f.seek(d.position)
                    f.write(HEADER.pack(len(void), zlib.crc32(void)) + void)
                    f.flush()
                    os.fsync(f.fileno())
                with open(quarantine / "repairs.jsonl", "a") as f:
                    f.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "where": d.where,
                                        "offset": d.offset, "bytes": d.length, "why": d.why, "file": kept.name,
                                        "sha256": hashlib.sha256(bad).hexdigest()}) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                log.warning("gallery log repair: %s (%d bytes, %s) moved to %s", d.where, d.length, d.why, kept)
            (self.dir / DAMAGED).unlink(missing_ok=True)
            for folder in (quarantine, self.dir):
                _fsync_dir(folder)
            self._known = (-1, 0)
            return found

    def trim(self, before: str) -> int:
        """Deletes whole segments that end at or below `before`; a newest segment that does is
        closed first (an empty one starts at its end). Quarantined records below it go too."""
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
            low = segments[0] if segments else 0
            for base, next_base in itertools.pairwise(segments):
                if next_base <= int(before):
                    path = self._path(base)
                    dropped += path.stat().st_size
                    path.unlink()
                    low = next_base
            for kept in (self.dir / QUARANTINE).glob("*.bin"):  # quarantined vectors are erased with their segment
                if kept.stem.isdigit() and int(kept.stem) < low:
                    kept.unlink()
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
        self.name = f"Redis stream {stream}"
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

    # the append refuses, atomically, while the log is marked damaged
    _APPEND = ("if redis.call('EXISTS', KEYS[2]) == 1 then return redis.error_reply('FACEVOICE-DAMAGED') end "
               "return redis.call('XADD', KEYS[1], '*', 'c', ARGV[1])")

    def append(self, change: Change) -> str:
        try:
            return self.client.eval(self._APPEND, 2, self.stream, self.stream + DAMAGED_KEY, change.encode()).decode()
        except self.redis.ResponseError as e:
            if "FACEVOICE-DAMAGED" in str(e):
                raise LogDamaged(self.name, self.damaged() or Damage("?", "", "marked")) from e
            raise self._unavailable("be written", e) from e
        except self.redis.RedisError as e:
            raise self._unavailable("be written", e) from e

    def damaged(self) -> Damage | None:
        try:
            mark = self.client.get(self.stream + DAMAGED_KEY)
        except self.redis.RedisError as e:
            raise self._unavailable("be read", e) from e
        try:
            return Damage(**json.loads(mark)) if mark else None
        except (ValueError, TypeError) as e:
            return Damage("an unreadable damage mark", "", str(e))

    # marks only while the damaged entry is still there (a repair may have removed it meanwhile)
    _MARK = ("if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 1 then "
             "return redis.call('SET', KEYS[2], ARGV[2], 'NX') end return false")

    def _report_damage(self, e: LogDamaged) -> None:
        try:
            self.client.eval(self._MARK, 2, self.stream, self.stream + DAMAGED_KEY, e.damage.offset,
                             json.dumps(asdict(e.damage)))
        except self.redis.RedisError as err:
            log.error("gallery log %s: cannot mark it damaged (%s)", self.stream, err)

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
        try:
            for _, entries in got or []:
                for entry_id, fields in entries:
                    out.append((entry_id.decode(), self._decode(entry_id.decode(), fields)))
        except LogDamaged as e:
            self._report_damage(e)
            if not out:  # what comes before the damage is read; the next read stops at it
                raise
        return out

    def _decode(self, entry_id: str, fields: dict) -> Change:
        try:
            return Change.decode(fields[b"c"])
        except (KeyError, FormatError) as e:
            raise LogDamaged(self.name, Damage(f"entry {entry_id}", entry_id, f"an entry that "
                                                                  f"cannot be decoded: {e}")) from e

    def head(self) -> str:
        """The stream's last entry ID (XREVRANGE ... COUNT 1): one entry, however long the log."""
        try:
            last = self.client.xrevrange(self.stream, count=1)
        except self.redis.RedisError as e:
            raise self._unavailable("be read", e) from e
        return last[0][0].decode() if last else max(self.start, self.first(), key=self.key)

    _COUNT = "return #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])"

    def behind(self, after: str, cap: int = 10_000) -> int:
        """Counted inside Redis (a script), so no entry crosses the network; at most 1,000 (the script
        holds the entries it counts)."""
        try:
            return int(self.client.eval(self._COUNT, 1, self.stream, after, min(cap, 1000)))
        except self.redis.RedisError as e:
            raise self._unavailable("be read", e) from e

    def _quarantine(self) -> str:
        return self.stream + QUARANTINE_STREAM

    def verify(self) -> Verified:
        v = Verified(self.kind, first=self.first())
        v.head = v.first
        try:
            pos = "-"
            while True:
                batch = self.client.xrange(self.stream, min=pos, max="+", count=1024)
                for entry_id, fields in batch:
                    v.head = entry_id.decode()
                    v.bytes += sum(len(x) for x in fields.values())
                    try:
                        self._decode(v.head, fields)
                        v.records += 1
                    except LogDamaged as e:
                        v.damage.append(e.damage)
                if len(batch) < 1024:
                    break
                pos = "(" + batch[-1][0].decode()
            v.quarantined = self.client.xlen(self._quarantine())
        except self.redis.RedisError as e:
            raise self._unavailable("be read", e) from e
        return v

    def repair(self) -> list[Damage]:
        """Each entry that cannot be decoded: copied to the stream `<stream>:quarantine` (its ID, its
        bytes, why, when), then deleted from the log (XDEL; no other ID moves), in one MULTI."""
        found = self.verify().damage
        try:
            for d in found:
                entry = self.client.xrange(self.stream, min=d.offset, max=d.offset)
                if not entry:  # a concurrent repair took it
                    continue
                fields = entry[0][1]
                pipe = self.client.pipeline(transaction=True)
                pipe.xadd(self._quarantine(), {"id": d.offset, "why": d.why, "at": str(time.time()),
                                               **{b"field:" + k: val for k, val in fields.items()}})
                pipe.xdel(self.stream, d.offset)
                pipe.execute()
                log.warning("gallery log repair: %s (%s) moved to %s", d.where, d.why, self._quarantine())
            self.client.delete(self.stream + DAMAGED_KEY)
        except self.redis.RedisError as e:
            raise self._unavailable("be repaired", e) from e
        return found

    def trim(self, before: str) -> int:
        try:
            pipe = self.client.pipeline()
            pipe.xtrim(self.stream, minid=before, approximate=False)  # removes IDs lower than `before`
            pipe.set(f"{self.stream}:trimmed", before)
            dropped = int(pipe.execute()[0])
            # quarantined entries below it go too: they hold vectors, erased with the log
            gone = [qid for qid, fields in self.client.xrange(self._quarantine())
                    if self.key(fields.get(b"id", b"0-0").decode()) < self.key(before)]
            if gone:
                self.client.xdel(self._quarantine(), *gone)
            return dropped
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


def offset_of(meta: IndexMeta, wlog: WriteLog) -> str:
    """Where a version's replay starts: its recorded offset in this log, else the log's start
    (a version built without this log: replaying all of it is safe, changes are idempotent)."""
    return meta.log.offset if meta.log is not None and meta.log.kind == wlog.kind else wlog.start
