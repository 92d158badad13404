"""The gallery write log: records survive a torn tail, segments roll and trim, Redis streams
behave as the file does (a real redis-server), and an entry carries no media."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.log_damage import STEPS, ids
from devtools.local_servers import LocalRedis
from facevoice.service.errors import DependencyUnavailable, FormatError
from facevoice.service.writelog import Change, FileLog, IndexChange, LogTrimmed, RedisLog, open_log


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


# --- damage is never cut away; crash points -------------------------------------------------------

def _segment(root) -> Path:
    return next((root / ".gallery-log").glob("*.log"))


def _fixed(i: int) -> Change:
    c = upsert(i)
    c.at = 1.0  # a fixed time: a fixed record length
    return c


def test_a_log_cut_at_every_byte_of_its_last_record_keeps_every_earlier_record(tmp_path):
    from bench.log_damage import cut_everywhere, upsert

    cases, failures = cut_everywhere(tmp_path, dim=4)
    assert failures == [] and cases == len(upsert(0, 4).encode()) + 8


def test_every_bit_flipped_in_a_middle_record_stops_the_log_and_repair_keeps_the_rest(tmp_path):
    """Each flip: verify names the record, reads past it and appends refuse naming its byte, the
    segment is unchanged, and repair keeps every other record at its own offset."""
    from bench.log_damage import flip_everywhere, upsert

    cases, failures = flip_everywhere(tmp_path, dim=4)
    assert failures == [] and cases == 8 * (len(upsert(0, 4).encode()) + 8)


def test_repair_quarantines_the_damaged_bytes_and_records_what_it_did(tmp_path):
    from facevoice.service.writelog import LogDamaged

    log = FileLog(tmp_path)
    offsets = [log.append(_fixed(i)) for i in range(3)]
    path = _segment(tmp_path)
    data = bytearray(path.read_bytes())
    start, end = int(offsets[0]), int(offsets[1])
    data[start + 20] ^= 4
    path.write_bytes(data)
    assert len(log.read(log.start)) == 1  # up to the damage
    with pytest.raises(LogDamaged):
        log.read(offsets[0])
    assert log.damaged().offset == offsets[0]  # marked for every replica
    log.repair()
    quarantine = tmp_path / ".gallery-log" / "quarantine"
    assert (quarantine / f"{start:020d}.bin").read_bytes() == bytes(data[start:end])
    record = json.loads((quarantine / "repairs.jsonl").read_text().splitlines()[-1])
    assert record["offset"] == offsets[0] and record["bytes"] == end - start
    assert log.damaged() is None and log.verify().void == 1 and ids(log) == ["it0", "it2"]
    assert oct(quarantine.stat().st_mode & 0o777) == "0o700"


def test_a_zeroed_stretch_across_records_is_damage_and_a_reader_inside_it_resumes_after_repair(tmp_path):
    from facevoice.service.writelog import LogDamaged

    log = FileLog(tmp_path)
    offsets = [log.append(_fixed(i)) for i in range(6)]
    path = _segment(tmp_path)
    data = bytearray(path.read_bytes())
    lo, hi = int(offsets[1]) + 3, int(offsets[3]) - 5  # a bad sector: parts of it2 and it3 read as zeros
    data[lo:hi] = bytes(hi - lo)
    path.write_bytes(data)
    assert [o for o, _ in log.read(offsets[0])] == [offsets[1]]
    with pytest.raises(LogDamaged):
        log.read(offsets[1])
    assert len(log.repair()) == 1
    assert ids(log) == ["it0", "it1", "it4", "it5"]
    assert [o for o, _ in log.read(offsets[2])] == offsets[4:]  # a replica that had applied it2 (now void)
    assert log.verify().ok


def test_an_intact_record_that_cannot_be_decoded_is_damage_too(tmp_path):
    import zlib

    from facevoice.service.writelog import HEADER, LogDamaged

    log = FileLog(tmp_path)
    log.append(_fixed(0))
    junk = b"\x05\x00\x00\x00{not}"
    with open(_segment(tmp_path), "ab") as f:
        f.write(HEADER.pack(len(junk), zlib.crc32(junk)) + junk)
    after = FileLog(tmp_path).append(_fixed(2))
    with pytest.raises(LogDamaged, match="cannot be decoded"):
        list(log.entries())
    assert log.repair()[0].why.startswith("an intact record that cannot be decoded")
    assert [o for o, _ in log.entries()][-1] == after and ids(log) == ["it0", "it2"]


@pytest.mark.parametrize(("step", "roll"), STEPS)
def test_a_writer_killed_between_the_steps_of_an_append_loses_nothing_it_acknowledged(tmp_path, step, roll):
    """A real SIGKILL at each step of the 4th append (with a segment roll on that append, or not; the
    directory is fsync'd only when an append starts a segment)."""
    from bench.log_damage import kill_at

    assert kill_at(tmp_path, step, roll, dim=4) == []


def test_head_and_behind_read_no_more_than_the_newest_segment(tmp_path):
    log = FileLog(tmp_path, segment_bytes=300)
    offsets = [log.append(_fixed(i)) for i in range(10)]
    fresh = FileLog(tmp_path)
    assert fresh.head() == offsets[-1] and fresh._known[0] == int(max(p.stem for p in (tmp_path / ".gallery-log")
                                                                      .glob("*.log")))
    assert [fresh.behind(o) for o in (fresh.start, offsets[4], offsets[-1])] == [10, 5, 0]
    assert fresh.behind(fresh.start, cap=3) == 3
    assert FileLog(tmp_path / "empty").head() == "0"


def test_the_redis_stream_quarantines_an_entry_it_cannot_decode():
    from facevoice.service.writelog import LogDamaged

    with LocalRedis() as r:
        log = RedisLog(r.url)
        first = log.append(upsert(0))
        bad = log.client.xadd(log.stream, {"c": b"\x05\x00\x00\x00{not}"}).decode()
        last = log.append(upsert(2))
        assert log.head() == last and log.behind(log.start) == 3 and log.behind(first) == 2
        assert [o for o, _ in log.read(log.start)] == [first]  # up to the damage
        with pytest.raises(LogDamaged, match=f"entry {bad}"):
            log.read(first)
        with pytest.raises(LogDamaged):  # marked damaged: every writer refuses until the repair
            log.append(upsert(3))
        assert [d.offset for d in log.verify().damage] == [bad]
        assert [d.offset for d in log.repair()] == [bad]
        assert [o for o, _ in log.read(first)] == [last] and log.verify().ok and log.verify().quarantined == 1
        assert log.damaged() is None and log.key(log.append(upsert(3))) > log.key(last)
        log.trim(last)  # what trim drops, its quarantine drops too (vectors are erased with the log)
        assert log.verify().quarantined == 0
        log.close()


def test_a_replica_that_does_not_apply_the_log_reports_how_far_behind(tmp_path):
    import time

    from facevoice.service.indexes import IndexSet
    from facevoice.service.metrics import Metrics

    log, metrics = FileLog(tmp_path), Metrics()
    replica = IndexSet(tmp_path, {}, metrics, write_log=log, max_lag_s=0.05)
    assert replica.report().state == "ok"
    for i in range(3):
        log.append(upsert(i))
    time.sleep(0.1)
    st = replica.report()
    assert (st.state, st.lag_entries, st.head) == ("behind", 3, log.head()) and st.lag_seconds >= 0.05
    assert metrics.log_lag_entries._value.get() == 3 and metrics.log_lag_seconds._value.get() >= 0.05
    replica.catch_up()
    st = replica.report()
    assert (st.state, st.lag_entries, st.applied) == ("ok", 0, log.head()) and st.lag_seconds < 0.05


def test_a_reader_that_met_damage_before_a_repair_does_not_mark_the_repaired_log(tmp_path):
    import zlib

    from facevoice.service.writelog import HEADER, LogDamaged

    log = FileLog(tmp_path)
    first = log.append(_fixed(0))
    junk = b"\x05\x00\x00\x00{not}"
    with open(_segment(tmp_path), "ab") as f:  # the newest record intact but undecodable
        f.write(HEADER.pack(len(junk), zlib.crc32(junk)) + junk)
    with pytest.raises(LogDamaged) as met:
        log.read(first)
    log.repair()
    log._report_damage(met.value)  # a slow reader reporting what it met before the repair
    assert log.damaged() is None and log.append(_fixed(1))
    assert log.behind(first) == 1  # the void record is no entry
