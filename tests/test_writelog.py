"""The gallery write log: records survive a torn tail, segments roll and trim, Redis streams
behave as the file does (a real redis-server), and an entry carries no media."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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


# --- damage is never cut away; crash points -------------------------------------------------------

def _segment(root) -> Path:
    return next((root / ".gallery-log").glob("*.log"))


def _ids(log) -> list[str]:
    return [c.upserts["face"].items[0]["item_id"] for _, c in log.entries()]


def _fixed(i: int) -> Change:
    c = upsert(i)
    c.at = 1.0  # a fixed time: a fixed record length
    return c


def test_a_log_cut_at_every_byte_of_its_last_record_keeps_every_earlier_record(tmp_path):
    log = FileLog(tmp_path / "log")
    offsets = [log.append(_fixed(i)) for i in range(4)]
    whole = _segment(tmp_path / "log").read_bytes()
    last = int(offsets[-2])
    for cut in range(last, len(whole)):
        root = tmp_path / f"cut{cut}"
        (root / ".gallery-log").mkdir(parents=True)
        (root / ".gallery-log" / _segment(tmp_path / "log").name).write_bytes(whole[:cut])
        cut_log = FileLog(root)
        assert _ids(cut_log) == ["it0", "it1", "it2"], cut
        assert cut_log.head() == offsets[-2]
        assert cut_log.verify().torn_tail == cut - last and cut_log.verify().ok
        again = cut_log.append(_fixed(3))  # the partial record is cut, the new one takes its place
        assert again == offsets[-1] and _ids(FileLog(root)) == ["it0", "it1", "it2", "it3"]


def test_every_bit_flipped_in_a_middle_record_stops_the_log_and_repair_keeps_the_rest(tmp_path):
    from facevoice.service.writelog import LogDamaged

    log = FileLog(tmp_path / "log")
    offsets = [log.append(_fixed(i)) for i in range(5)]
    whole = _segment(tmp_path / "log").read_bytes()
    start, end = int(offsets[1]), int(offsets[2])  # record it2
    name = _segment(tmp_path / "log").name
    for bit in range((end - start) * 8):
        bad = bytearray(whole)
        bad[start + bit // 8] ^= 1 << (bit % 8)
        root = tmp_path / "flip"
        (root / ".gallery-log").mkdir(parents=True, exist_ok=True)
        path = root / ".gallery-log" / name
        path.write_bytes(bad)
        damaged = FileLog(root)
        report = damaged.verify()
        assert [d.offset for d in report.damage] == [offsets[1]] and report.records == 4, bit
        assert len(damaged.read(damaged.start)) == 2  # up to the damage
        with pytest.raises(LogDamaged, match=f"byte {start}"):
            list(damaged.entries())
        with pytest.raises(LogDamaged):
            damaged.append(_fixed(9))
        assert damaged.damaged().offset == offsets[1]  # marked for every replica
        assert path.read_bytes() == bytes(bad)  # nothing truncated, nothing written
        assert [d.offset for d in damaged.repair()] == [offsets[1]]
        assert _ids(damaged) == ["it0", "it1", "it3", "it4"]
        assert [o for o, _ in damaged.entries()] == [offsets[0], offsets[1], *offsets[3:]]  # no offset moved
        assert damaged.append(_fixed(9)) == str(int(offsets[-1]) + end - start)
        quarantine = root / ".gallery-log" / "quarantine"
        assert (quarantine / f"{start:020d}.bin").read_bytes() == bytes(bad[start:end])
        assert json.loads((quarantine / "repairs.jsonl").read_text().splitlines()[-1])["offset"] == offsets[1]
        assert damaged.verify().ok and damaged.verify().void == 1
        shutil.rmtree(root)


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
    assert _ids(log) == ["it0", "it1", "it4", "it5"]
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
    assert [o for o, _ in log.entries()][-1] == after and _ids(log) == ["it0", "it2"]


@pytest.mark.parametrize(("step", "roll"), [("write-half", False), ("write", False), ("fsync", False),
                                            ("write-half", True), ("write", True), ("fsync", True), ("dirsync", True)])
def test_a_writer_killed_between_the_steps_of_an_append_loses_nothing_it_acknowledged(tmp_path, step, roll):
    """A real SIGKILL at each step of the 4th append (with a segment roll on that append, or not; the
    directory is fsync'd only when an append starts a segment)."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, numpy as np\n"
        "from facevoice.service.writelog import Change, FileLog, IndexChange\n"
        f"log = FileLog(sys.argv[1], segment_bytes={3 * 150 if roll else 1 << 20})\n"
        "for i in range(6):\n"
        "    c = Change('upsert', {'face': IndexChange('m1', [{'item_id': f'it{i}', 'identity': 'x', "
        "'attributes': {}}], np.full((1, 4), i, np.float32))}, at=1.0)\n"
        "    print(log.append(c), flush=True)\n")
    env = {**os.environ, "FACEVOICE_LOG_FAULT": f"{step}:4"}
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == -9, run.stderr  # it really died there
    acknowledged = run.stdout.split()
    assert len(acknowledged) == 3
    log = FileLog(tmp_path)
    got = [o for o, _ in log.entries()]
    assert got[:3] == acknowledged and len(got) in (3, 4)  # the unacknowledged one may or may not be there
    assert log.verify().ok
    log.append(_fixed(7))
    assert [o for o, _ in log.entries()][:3] == acknowledged and log.verify().torn_tail == 0
    assert len(sorted((tmp_path / ".gallery-log").glob("*.log"))) >= (2 if roll else 1)


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
