"""The Milvus gallery backend against a real Milvus Lite server (`milvus-lite server`, the Milvus
gRPC protocol): the same hits as the FAISS gallery, filters that cannot be injected into, upsert,
delete, the alias hot swap, a refused model version, acknowledged writes that survive a kill -9,
and the whole service on it."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from devtools.local_servers import LocalMilvus
from facevoice.service.errors import BadRequest, NotLoaded
from facevoice.service.gallery import Item, normalise
from facevoice.service.metrics import Metrics
from facevoice.service.milvus import (
    IndexMilvusOptions,
    MilvusIndexSet,
    _collections_of,
    expression,
    field_of,
    index_milvus,
)
from facevoice.service.planner import plan_and_build
from facevoice.service.versions import load_version, publish, write_version
from tests.test_index import clustered

pytestmark = pytest.mark.timeout(300)
ODD = 'q"uo\\te'  # a value with a quote and a backslash
ATTACK = '"] or item_id != "'  # a value that would widen the filter if it were pasted in


def people(n: int) -> list[Item]:
    out = []
    for i in range(n):
        attrs = {"gender": "female" if i % 2 else "male", "first language": ["en", "fr", ODD][i % 3]}
        if i % 5 == 0:
            del attrs["gender"]
        out.append(Item(f"item{i}", f"p{i // 4}", attrs))
    return out


@pytest.fixture()
def milvus(tmp_path):
    with LocalMilvus(data_dir=tmp_path / "milvus") as m:
        yield m


def published(root, n=400, metric="l2", model="m1", seed=0):
    x = clustered(n, seed=seed)
    if metric == "cosine":
        x = normalise(x)
    index, plan = plan_and_build(x, metric, kind="flat")
    v = write_version(root, "face", index, people(n), plan, model_version=model, metric=metric)
    publish(root, "face", v)
    return x, v


def test_filter_expressions_quote_every_value():
    assert field_of("gender") == "a_gender" and field_of("first language") == "x_" + b"first language".hex()
    assert expression({"gender": {"male", ""}}) == '(a_gender in ["male"] or not exists a_gender)'
    assert expression({"g": {ATTACK}}) == r'(a_g in ["\"] or item_id != \""])'
    assert expression({}) == ""


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_milvus_answers_as_the_faiss_gallery_does(milvus, tmp_path, metric):
    x, v = published(tmp_path, metric=metric)
    faiss_g = load_version(tmp_path, "face", v, "m1")
    result = index_milvus(IndexMilvusOptions(tmp_path, milvus.uri, no_progress=True))
    assert result.sizes == {"face": 400} and "facevoice_face" in result.summary()
    s = MilvusIndexSet(milvus.uri, {"face": "m1"}, Metrics())
    try:
        assert s.refresh() == {"face": v}
        g = s.get("face")
        assert g.size == 400 and g.attribute_names() == {"gender", "first language"} and g.meta.version == v
        for filters in [None, {"gender": {"female"}}, {"gender": {""}}, {"first language": {ODD}},
                        {"gender": {"male", ""}, "first language": {"fr"}}, {"gender": {ATTACK}}]:
            for q in (x[3] + 0.3, x[77]):
                ours = g.search(q, 10, filters)
                ref = faiss_g.search(q, 10, filters)
                assert [it.item_id for it, _ in ours] == [it.item_id for it, _ in ref], filters
                assert np.allclose([d for _, d in ours], [d for _, d in ref], atol=1e-3)
                assert [it for it, _ in ours] == [it for it, _ in ref]  # identity and attributes come back
        assert g.search(x[3], 10, {"gender": {ATTACK}}) == []  # the attack matched nothing, as in FAISS
        with pytest.raises(BadRequest, match="dimensions"):
            g.search(np.zeros(3, np.float32), 5)
    finally:
        s.stop()


def test_writes_swaps_and_refusals(milvus, tmp_path):
    from facevoice.service.writelog import FileLog

    x, v1 = published(tmp_path)
    index_milvus(IndexMilvusOptions(tmp_path, milvus.uri, no_progress=True))
    metrics = Metrics()
    s = MilvusIndexSet(milvus.uri, {"face": "m1"}, metrics, write_log=FileLog(tmp_path))
    other = MilvusIndexSet(milvus.uri, {"face": "m1"}, Metrics(), write_log=FileLog(tmp_path))  # a second replica
    try:
        s.refresh()
        other.refresh()
        assert "colour" not in other.get("face").attribute_names()
        s.upsert({"face": ([Item("new", "pn", {"colour": "blue"})], x[5:6] + 0.01)})
        hit = other.get("face").search(x[5] + 0.01, 1)[0][0]
        assert hit == Item("new", "pn", {"colour": "blue"})  # the other replica sees the write at once
        time.sleep(other.get("face").ATTRIBUTES_TTL_S + 0.1)  # and, within a second, the new attribute name
        assert "colour" in other.get("face").attribute_names()
        assert other.get("face").search(x[5], 3, {"colour": {"blue"}})[0][0].item_id == "new"
        for odd in ("o'brien", 'a"] or item_id != "', "back\\slash"):  # ids that would break an unescaped filter
            s.upsert({"face": ([Item(odd, "p", {})], x[9:10])})
            assert other.get("face").has(odd)
            missing, _ = s.delete(["face"], [odd])
            assert missing == [] and not other.get("face").has(odd)
        assert other.get("face").size == 401  # nothing else went with them
        with pytest.raises(BadRequest, match="control characters"):
            s.upsert({"face": ([Item("line\nbreak", "p", {})], x[:1])})
        with pytest.raises(BadRequest, match="control characters"):
            other.get("face").search(x[0], 3, {"gender": {"a\nb"}})
        missing, offset = s.delete(["face"], ["new", "item5", "nobody"])
        assert missing == ["nobody"] and offset and not other.get("face").has("item5")
        assert s.get("face").size == 399
        # the same version again: nothing copied; the log replayed onto it in order changes nothing
        assert index_milvus(IndexMilvusOptions(tmp_path, milvus.uri, no_progress=True)).replayed["face"] >= 8
        assert s.get("face").size == 399 and not s.get("face").has("new") and not s.get("face").has("item5")
        # a new version: copied beside, the log's writes replayed onto it, then the alias moves
        _, v2 = published(tmp_path, n=300, seed=9)
        done = index_milvus(IndexMilvusOptions(tmp_path, milvus.uri, keep=1, no_progress=True))
        assert done.replayed["face"] >= 8  # every logged write, replayed in order
        assert s.get("face").meta.version == v1
        assert s.refresh() == {"face": v2}
        g = s.get("face")
        # item5 is deleted by the log replayed onto the new version
        assert g.size == 299 and not g.has("item5") and not g.has("new") and not g.has("o'brien")
        assert len(_collections_of(s.client, "face")) == 1
        # a version of another model is refused, the served one kept
        published(tmp_path, n=200, model="m2")
        index_milvus(IndexMilvusOptions(tmp_path, milvus.uri, no_progress=True))
        assert s.refresh() == {} and s.get("face").meta.version == v2
        assert metrics.index_swaps.labels("face", "refused")._value.get() == 1
        with pytest.raises(NotLoaded):
            MilvusIndexSet(milvus.uri, {"voice": "m1"}, Metrics()).get("voice")
    finally:
        s.stop()
        other.stop()


def test_collections_of_one_index_are_not_another_s(milvus, tmp_path):
    x = clustered(100)
    index, plan = plan_and_build(x, "l2", kind="flat")
    for name in ("face", "face_feature"):
        publish(tmp_path, name, write_version(tmp_path, name, index, people(100), plan, model_version="m1",
                                              metric="l2"))
    index_milvus(IndexMilvusOptions(tmp_path, milvus.uri, keep=1, no_progress=True))
    _, v2 = published(tmp_path, n=50, seed=4)  # a new face version; keep 1 drops face's old one only
    index_milvus(IndexMilvusOptions(tmp_path, milvus.uri, index=("face",), keep=1, no_progress=True))
    s = MilvusIndexSet(milvus.uri, {"face": "m1", "face_feature": "m1"}, Metrics())
    try:
        s.refresh()
        assert s.get("face").meta.version == v2 and s.get("face_feature").size == 100
        assert len(_collections_of(s.client, "face")) == 1 and len(_collections_of(s.client, "face_feature")) == 1
    finally:
        s.stop()


def test_an_acknowledged_write_survives_a_kill(milvus, tmp_path):
    from facevoice.service.writelog import FileLog

    x, _ = published(tmp_path, n=100)
    index_milvus(IndexMilvusOptions(tmp_path, milvus.uri, no_progress=True))
    s = MilvusIndexSet(milvus.uri, {"face": "m1"}, Metrics(), write_log=FileLog(tmp_path))
    s.refresh()
    s.upsert({"face": ([Item("acked", "p", {})], x[:1])})
    s.delete(["face"], ["item1"])
    s.stop()
    milvus.kill()  # SIGKILL straight after the acknowledgement: no flush, no clean shutdown
    milvus.start()
    s = MilvusIndexSet(milvus.uri, {"face": "m1"}, Metrics())
    try:
        s.refresh()
        assert s.get("face").has("acked") and not s.get("face").has("item1") and s.get("face").size == 100
    finally:
        s.stop()


def test_the_service_on_milvus(stack, milvus, tmp_path):
    """SearchFaces, filters, UpsertItems, DeleteItems and GetIndexInfo through the real server, the
    hits the same as the FAISS-backed server's on the same version; Milvus down is UNAVAILABLE and
    the server lives on."""
    from facevoice.v1 import facevoice_pb2 as pb
    from tests.serving import copy_indexes, media, start_service

    root = copy_indexes(stack, tmp_path / "indexes")
    index_milvus(IndexMilvusOptions(root, milvus.uri, no_progress=True))
    on_faiss, faiss_stub = start_service(stack, index_root=root)
    running, stub = start_service(stack, index_root=None, gallery_backend="milvus", milvus_uri=milvus.uri)
    try:
        voice = pb.Audio(data=media(stack, "toy005", "voice", 0))
        ours = stub.SearchFaces(pb.SearchFacesRequest(voice=voice, top_k=5))
        ref = faiss_stub.SearchFaces(pb.SearchFacesRequest(voice=voice, top_k=5))
        assert [h.item_id for h in ours.hits] == [h.item_id for h in ref.hits]
        assert np.allclose([h.score for h in ours.hits], [h.score for h in ref.hits], atol=1e-3)
        assert ours.index_version == ref.index_version
        info = stub.GetIndexInfo(pb.GetIndexInfoRequest())
        face = next(i for i in info.indexes if i.name == "face")
        assert face.device == "milvus" and info.log.kind == "milvus" and face.size == ref_size(faiss_stub)
        face_png = pb.Image(data=media(stack, "toy007", "face", 0))
        stub.UpsertItems(pb.UpsertItemsRequest(items=[pb.GalleryItem(
            item_id="live", identity="p", attributes={"team": "x"}, media=pb.Media(image=face_png))]))
        got = stub.SearchFaces(pb.SearchFacesRequest(voice=voice, top_k=3,
                                                     filters=[pb.AttributeFilter(name="team", values=["x"])]))
        assert [h.item_id for h in got.hits] == ["live"]
        with pytest.raises(grpc.RpcError) as e:
            stub.SearchFaces(pb.SearchFacesRequest(voice=voice, top_k=3,
                                                   filters=[pb.AttributeFilter(name="nope", values=["x"])]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        deleted = stub.DeleteItems(pb.DeleteItemsRequest(modality=pb.FACE, item_ids=["live", "ghost"]))
        assert deleted.deleted == 1 and list(deleted.not_found) == ["ghost"]
        milvus.kill()
        with pytest.raises(grpc.RpcError) as e:
            stub.SearchFaces(pb.SearchFacesRequest(voice=voice, top_k=3), timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        milvus.start()
        assert [h.item_id for h in stub.SearchFaces(pb.SearchFacesRequest(voice=voice, top_k=5)).hits] == \
            [h.item_id for h in ref.hits]
    finally:
        running.stop(0)
        on_faiss.stop(0)


def ref_size(stub) -> int:
    from facevoice.v1 import facevoice_pb2 as pb

    return next(i.size for i in stub.GetIndexInfo(pb.GetIndexInfoRequest()).indexes if i.name == "face")
