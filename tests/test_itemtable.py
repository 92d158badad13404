"""The columnar item table: written, mapped, looked up and filtered as the JSON lines were; its
overlay of live edits; damaged tables refused; versions written before it still served."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict

import numpy as np
import pytest

from facevoice.service import checksums
from facevoice.service.gallery import Item
from facevoice.service.itemtable import ItemTable, ItemTableError
from facevoice.service.planner import plan_and_build
from facevoice.service.versions import IndexVersionError, load_version, write_version
from tests.test_index import clustered


def people(n: int) -> list[Item]:
    """Attributes of every kind: present, absent (""), non-ASCII values and ids."""
    out = []
    for i in range(n):
        attrs = {"gender": "female" if i % 3 else "male"}
        if i % 5:
            attrs["language"] = ["en", "fr", "日本語"][i % 3]
        out.append(Item(f"id-{i}-é" if i % 7 == 0 else f"id-{i}", f"person{i // 4}", attrs))
    return out


def test_written_and_mapped_the_table_reads_as_the_items(tmp_path):
    items = people(500)
    files = ItemTable.of(items).write(tmp_path)
    assert set(files) == set(ItemTable.files(tmp_path))
    table = ItemTable.open(tmp_path)
    assert isinstance(table.identity.codes, np.memmap) and table.n == 500
    assert [table.item(r) for r in range(500)] == items
    assert all(table.row_of(it.item_id) == r for r, it in enumerate(items))
    assert table.row_of("id-500") is None and table.row_of("") is None
    assert table.attribute_names() == {"gender", "language"}
    assert table.identity.codes.dtype == np.int8 and len(table.identity.values) == 125
    for name, values in [("gender", {"male"}), ("language", {"日本語", "fr"}), ("language", {""}),
                         ("language", {"", "en"}), ("gender", {"nobody"}), ("height", {""}), ("height", {"tall"})]:
        expect = [it.attributes.get(name, "") in values for it in items]
        assert table.mask(name, frozenset(values)).tolist() == expect, (name, values)


def test_an_empty_table_and_wide_dictionaries():
    assert ItemTable.of([]).n == 0 and ItemTable.of([]).row_of("x") is None
    many = [Item(f"i{i}", f"p{i}", {"k": str(i % 40_000)}) for i in range(40_000)]
    t = ItemTable.of(many)
    assert t.identity.codes.dtype == np.int32 and t.attributes["k"].codes.dtype == np.int32
    assert t.mask("k", frozenset({"39999"})).sum() == 1 and t.item(39_999) == many[39_999]


def test_a_damaged_table_is_refused(tmp_path):
    ItemTable.of(people(50)).write(tmp_path)
    (tmp_path / "items.json").write_text("[1, 2]")
    with pytest.raises(ItemTableError, match="schema"):
        ItemTable.open(tmp_path)
    ItemTable.of(people(50)).write(tmp_path)
    schema = json.loads((tmp_path / "items.json").read_text())
    (tmp_path / "items.json").write_text(json.dumps({**schema, "rows": 51}))
    with pytest.raises(ItemTableError, match="51 rows"):
        ItemTable.open(tmp_path)
    ItemTable.of(people(50)).write(tmp_path)
    codes = tmp_path / "items.identity.codes.npy"
    codes.write_bytes(codes.read_bytes()[:-10])  # truncated
    with pytest.raises(ItemTableError, match=r"identity\.codes"):
        ItemTable.open(tmp_path)
    ItemTable.of(people(50)).write(tmp_path)
    np.save(tmp_path / "items.identity.codes.npy", np.zeros(49, np.int8))  # a column of the wrong length
    with pytest.raises(ItemTableError, match="49 rows"):
        ItemTable.open(tmp_path)
    np.save(tmp_path / "items.identity.codes.npy", np.array([{"a": 1}] * 50, object), allow_pickle=True)
    with pytest.raises(ItemTableError, match="unreadable"):  # pickles are never loaded
        ItemTable.open(tmp_path)


def _version(tmp_path, n=3000, kind="ivf"):
    x = clustered(n)
    index, plan = plan_and_build(x, "l2", kind=kind)
    return x, write_version(tmp_path, "face", index, people(n), plan, model_version="m", metric="l2")


def test_a_version_serves_its_mapped_table_under_the_overlay(tmp_path):
    x, v = _version(tmp_path)
    g = load_version(tmp_path, "face", v, "m", mmap=True)
    items = people(len(x))
    assert g.table.path is not None and g.size == len(x)
    g.exact_filter_rows = 100  # broad filters go through the index with a bitmap selector
    for filters in [{"gender": {"male"}}, {"language": {""}}, {"gender": {"female"}, "language": {"fr"}}]:
        hits = g.search(x[7], 10, filters)
        assert len(hits) == 10 and all(all(it.attributes.get(k, "") in v for k, v in filters.items())
                                       for it, _ in hits)
    # the overlay: a deleted table row disappears from search, masks and lookups; new items join them
    victim = g.search(x[7], 1, {"gender": {"male"}})[0][0]
    g.delete([victim.item_id])
    assert not g.has(victim.item_id) and g.size == len(x) - 1
    assert victim.item_id not in [it.item_id for it, _ in g.search(x[7], 50, {"gender": {"male"}})]
    g.upsert([Item("fresh", "pnew", {"gender": "male", "colour": "blue"})], x[7:8])
    assert g.search(x[7], 1, {"gender": {"male"}})[0][0].item_id == "fresh"
    assert g.search(x[7], 5, {"colour": {"blue"}})[0][0].item_id == "fresh"
    assert "colour" in g.attribute_names() and g.row_of("fresh") >= g.table.n
    # a table row replaced by an upsert: its new attributes, once
    g.upsert([Item(items[8].item_id, "p2", {"gender": "female"})], x[8:9])
    found = [it for it, _ in g.search(x[8], 50)]
    assert [it.item_id for it in found].count(items[8].item_id) == 1
    assert next(it for it in found if it.item_id == items[8].item_id).attributes == {"gender": "female"}
    males = {it.item_id for it in items if it.attributes["gender"] == "male"} - {victim.item_id, items[8].item_id}
    assert g.allowed({"gender": {"male"}}).count == len(males | {"fresh"})


def test_tombstones_are_compacted_into_a_new_table(tmp_path):
    x, v = _version(tmp_path, 2000, "flat")
    g = load_version(tmp_path, "face", v, "m", mmap=True)
    items = people(2000)
    gone = [it.item_id for it in items[:1200]]
    g.delete(gone)
    assert not g.tombstones and g.table.n == 800 and g.table.path is None  # rebuilt without them
    assert [g.item(r).item_id for r in range(800)] == [it.item_id for it in items[1200:]]
    assert g.search(x[1500], 1)[0][0].item_id == items[1500].item_id
    assert g.allowed({"gender": {"male"}}).count == sum(it.attributes["gender"] == "male" for it in items[1200:])


def test_checksums_must_cover_the_table(tmp_path):
    _, v = _version(tmp_path, 300, "flat")
    path = tmp_path / "face" / v
    digests = checksums.read(path)
    del digests["items.id_rows.npy"]
    (path / checksums.NAME).write_text("".join(f"{d}  {f}\n" for f, d in digests.items()))
    with pytest.raises(IndexVersionError, match="do not cover"):
        load_version(tmp_path, "face", v, "m")


def test_a_version_written_before_the_table_still_loads(tmp_path):
    x, v = _version(tmp_path, 300, "flat")
    path = tmp_path / "face" / v
    for f in ItemTable.files(path):
        (path / f).unlink()
    with open(path / "items.jsonl", "w") as f:
        for row, it in enumerate(people(300)):
            f.write(json.dumps({"row": row, **asdict(it)}) + "\n")
    checksums.write(path, ["index.faiss", "items.jsonl", "meta.json"])
    g = load_version(tmp_path, "face", v, "m", mmap=True)
    assert g.size == 300 and g.search(x[3], 1)[0][0] == people(300)[3]
    assert g.search(x[3], 3, {"language": {""}})[0][0].attributes.get("language") is None


def test_background_verification_serves_first_and_goes_back_on_a_mismatch(tmp_path, monkeypatch):
    """index_verify = "background": large files are hashed after the swap. A damaged one takes the
    version out of service again; the previous version comes back with the writes it missed."""
    import time

    import facevoice.service.indexes as indexes
    from facevoice.service.errors import UsageError
    from facevoice.service.indexes import IndexSet
    from facevoice.service.metrics import Metrics
    from facevoice.service.versions import publish
    from facevoice.service.writelog import FileLog

    with pytest.raises(UsageError, match="before, background"):
        IndexSet(tmp_path, {"face": "m"}, Metrics(), verify="sometimes")
    monkeypatch.setattr(indexes, "VERIFY_LATER_OVER", 10_000)  # "large" at this test's size
    _, v1 = _version(tmp_path, 3000, "flat")
    publish(tmp_path, "face", v1)
    metrics = Metrics()
    s = IndexSet(tmp_path, {"face": "m"}, metrics, verify="background", write_log=FileLog(tmp_path))
    s.refresh()
    first = s.get("face")
    deferred = load_version(tmp_path, "face", v1, "m", verify_later_over=10_000).unverified
    digests = checksums.read(tmp_path / "face" / v1)
    large = {f for f in digests if (tmp_path / "face" / v1 / f).stat().st_size > 10_000}
    assert "index.faiss" in large and deferred == {f: digests[f] for f in large} and len(large) < len(digests)

    def settled(g):
        for _ in range(200):
            if not g.unverified:
                return True
            time.sleep(0.05)
        return False

    assert settled(first)
    x2, v2 = _version(tmp_path, 3000, "flat")
    path = tmp_path / "face" / v2 / "index.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one vector: FAISS reads it as well as any other
    path.write_bytes(bytes(data))
    publish(tmp_path, "face", v2)
    real = indexes.verify_files
    entered, release = threading.Event(), threading.Event()

    def held(*a):  # hold the check until a write has gone to the new version
        entered.set()
        release.wait(10)
        return real(*a)

    monkeypatch.setattr(indexes, "verify_files", held)
    assert s.refresh() == {"face": v2} and entered.wait(10)
    assert s.get("face").meta.version == v2  # served while its index file is hashed
    s.upsert({"face": ([Item("during", "p", {})], x2[:1])})
    release.set()
    for _ in range(200):
        if s.get("face").meta.version == v1:
            break
        time.sleep(0.05)
    back = s.get("face")
    assert back is first and back.has("during")  # the old version, with the write it missed
    assert metrics.index_swaps.labels("face", "refused")._value.get() == 1
    assert s.refresh() == {}  # the damaged version is refused, not loaded again at the next poll


def test_an_empty_value_reads_as_a_missing_attribute_in_the_table_and_the_overlay(tmp_path):
    items = [Item("a", "p", {"team": ""}), Item("b", "p", {}), Item("c", "p", {"team": "x"})]
    x = clustered(3)
    index, plan = plan_and_build(x, "l2", kind="flat")
    v = write_version(tmp_path, "face", index, items, plan, model_version="m", metric="l2")
    g = load_version(tmp_path, "face", v, "m", mmap=True)
    assert g.allowed({"team": {""}}).rows().tolist() == [0, 1]
    g.upsert([Item("d", "p", {"team": ""})], x[:1])  # the overlay agrees
    assert g.allowed({"team": {""}}).rows().tolist() == [0, 1, 3]
