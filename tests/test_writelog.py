"""The gallery write log: records survive a torn tail, segments roll and trim, Redis streams
behave as the file does (a real redis-server), and an entry carries no media."""

from __future__ import annotations

import numpy as np
import pytest

from facevoice.service.errors import DependencyUnavailable, FormatError
from facevoice.service.writelog import Change, FileLog, IndexChange, LogTrimmed, RedisLog, open_log
from tests.local_servers import LocalRedis


def upsert(i: int, dim: int = 4) -> Change:
    return Change("upsert", {"face": IndexChange("m1", [{"item_id": f"it{i}", "identity": f"id{i}",
                                                         "attributes": {"gender": "f"}}],
                                                 np.full((1, dim), i, np.float32))}, actor="test")


def test_change_round_trip_and_bad_records():
    c = upsert(3)
    d = Change.decode(c.encode())
    assert d.op == "upsert" and d.upserts["face"].items == c.upserts["face"].items
    assert np.array_equal(d.upserts["face"].vectors, c.upserts["face"].vectors)
    deleted = Change.decode(Change("delete", indexes=["face", "face_feature"], item_ids=["a", "b"]).encode())
    assert (deleted.indexes, deleted.item_ids) == (["face", "face_feature"], ["a", "b"])
    for bad in (b"", b"\x00", c.encode()[:-3], c.encode() + b"x", b"\x05\x00\x00\x00{not}"):
        with pytest.raises(FormatError):
            Change.decode(bad)


def test_file_log_appends_reads_in_order_and_survives_a_torn_tail(tmp_path):
    log = FileLog(tmp_path)
    offsets = [log.append(upsert(i)) for i in range(5)]
    assert offsets == sorted(offsets, key=log.key) and len(set(offsets)) == 5
    got = log.read(log.start)
    assert [o for o, _ in got] == offsets and [c.upserts["face"].items[0]["item_id"] for _, c in got][-1] == "it4"
    assert [o for o, _ in log.read(offsets[1], limit=2)] == offsets[2:4]
    assert log.read(offsets[-1]) == [] and log.head() == offsets[-1]
    # a writer that died mid-record: readers stop before it, the next append drops it
    segment = next((tmp_path / ".gallery-log").glob("*.log"))
    with open(segment, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00half a record")
    assert len(FileLog(tmp_path).read(log.start)) == 5
    ninth = upsert(9)
    ninth.at = 1.0  # a fixed time: a fixed record length
    after = FileLog(tmp_path).append(ninth)
    assert [o for o, _ in log.read(offsets[-1])] == [after]
    assert log.key(after)[0] == log.key(offsets[-1])[0] + len(ninth.encode()) + 8  # the torn bytes are gone
    assert len(log.read(log.start, limit=100)) == 6


def test_two_writers_on_one_file_log_interleave_into_one_order(tmp_path):
    """Two replicas on one index root: each appender checks what the other appended since."""
    a, b = FileLog(tmp_path), FileLog(tmp_path)
    offsets = [(a if i % 3 else b).append(upsert(i)) for i in range(9)]
    got = FileLog(tmp_path).read(a.start, limit=100)
    assert [o for o, _ in got] == offsets
    assert [c.upserts["face"].items[0]["item_id"] for _, c in got] == [f"it{i}" for i in range(9)]


def test_file_log_segments_roll_and_trim(tmp_path):
    log = FileLog(tmp_path, segment_bytes=300)
    offsets = [log.append(upsert(i)) for i in range(12)]
    segments = sorted((tmp_path / ".gallery-log").glob("*.log"))
    assert len(segments) > 2
    assert [o for o, _ in log.entries()] == offsets  # read across segments
    dropped = log.trim(offsets[6])
    assert dropped > 0 and log.key(log.first()) <= log.key(offsets[6])
    assert [o for o, _ in log.read(offsets[6])] == offsets[7:]  # what a kept version needs is there
    with pytest.raises(LogTrimmed):
        log.read(log.start)
    assert (tmp_path / ".gallery-log").stat().st_mode & 0o077 == 0  # biometric vectors: owner only


def test_file_log_fails_unavailable_when_its_directory_is_gone(tmp_path):
    import shutil

    log = FileLog(tmp_path / "root")
    shutil.rmtree(tmp_path / "root")
    (tmp_path / "root").write_text("not a directory")
    with pytest.raises(DependencyUnavailable, match="cannot be written"):
        log.append(upsert(1))


def test_redis_log_is_the_same_log_on_a_real_redis():
    with LocalRedis() as r:
        log = RedisLog(r.url)
        assert log.durability() == {"appendonly": "yes", "appendfsync": "always"}
        offsets = [log.append(upsert(i)) for i in range(6)]
        assert offsets == sorted(offsets, key=log.key)
        assert [o for o, _ in log.read(log.start)] == offsets
        assert [o for o, _ in log.read(offsets[2], limit=2)] == offsets[3:5]
        assert log.read(offsets[-1], wait_s=0.05) == []
        assert log.head() == offsets[-1]
        assert log.trim(offsets[3]) == 3
        assert [o for o, _ in log.read(offsets[3])] == offsets[4:]
        with pytest.raises(LogTrimmed):
            log.read(offsets[0])
        r.kill()
        with pytest.raises(DependencyUnavailable, match="cannot be written"):
            log.append(upsert(7))
        log.close()


def test_open_log_chooses_by_settings(tmp_path):
    assert isinstance(open_log("auto", tmp_path, None), FileLog)
    assert isinstance(open_log("auto", tmp_path, "redis://127.0.0.1:1/0"), RedisLog)
    assert isinstance(open_log("file", tmp_path, "redis://127.0.0.1:1/0"), FileLog)
    assert open_log("auto", None, None) is None
    with pytest.raises(FormatError):
        open_log("kafka", tmp_path, None)
    with pytest.raises(FormatError):
        open_log("redis", tmp_path, None)
