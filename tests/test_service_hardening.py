"""Secure defaults and resource bounds of the service (issue 16): TLS halves, protected mode,
admin-only gallery writes, the concurrency limit, the audit log, a cached result never outliving
a delete, threads and clients closed on stop, and a subscriber that survives a bad handler."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from devtools.local_servers import LocalRedis
from facevoice.service.cache import Subscriber, announce
from facevoice.service.errors import UsageError
from facevoice.service.serve import Running, ServeConfig, check_security, is_loopback
from facevoice.v1 import facevoice_pb2 as pb
from tests.serving import media, start_service


def _face_item(stack, item_id: str) -> pb.GalleryItem:
    return pb.GalleryItem(item_id=item_id, identity="newcomer",
                          media=pb.Media(image=pb.Image(data=media(stack, "toy007", "face", 0))))


def test_tls_needs_both_halves_and_other_addresses_need_a_token(stack, tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(UsageError, match="go together"):
        check_security(ServeConfig(tls_cert=cert))
    with pytest.raises(UsageError, match="go together"):
        check_security(ServeConfig(tls_key=cert))
    with pytest.raises(UsageError, match="without a token"):
        Running(ServeConfig(model_repo=stack.repo, host="0.0.0.0", port=0, metrics_port=-1))
    check_security(ServeConfig(host="0.0.0.0", token="t"))
    check_security(ServeConfig(host="0.0.0.0", insecure=True))
    assert ServeConfig().host == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")


def test_gallery_writes_take_only_the_admin_token(stack, caplog):
    running, stub = start_service(stack, token="search-t", admin_token="admin-t")
    search, admin = [("authorization", "Bearer search-t")], [("authorization", "Bearer admin-t")]
    try:
        info = pb.GetIndexInfoRequest()
        assert stub.GetIndexInfo(info, metadata=search).indexes and stub.GetIndexInfo(info, metadata=admin).indexes
        with pytest.raises(grpc.RpcError) as e:
            stub.UpsertItems(pb.UpsertItemsRequest(items=[_face_item(stack, "x")]), metadata=search)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as e:
            stub.DeleteItems(pb.DeleteItemsRequest(modality=pb.FACE, item_ids=["toy001-face-0"]))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with caplog.at_level(logging.INFO, logger="facevoice.audit"):
            assert stub.UpsertItems(pb.UpsertItemsRequest(items=[_face_item(stack, "x")]), metadata=admin).upserted
            stub.DeleteItems(pb.DeleteItemsRequest(modality=pb.FACE, item_ids=["x", "ghost"]), metadata=admin)
    finally:
        running.stop(0)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "facevoice.audit"]
    assert [(x["method"], x["result"], x["item_ids"]) for x in lines] == [
        ("UpsertItems", "ok", ["x"]), ("DeleteItems", "ok", ["x", "ghost"])]
    assert all(x["actor"].startswith("token:") and "admin-t" not in x["actor"] and x["log_offset"] for x in lines)
    assert all(len(r.getMessage()) < 1000 for r in caplog.records)  # ids and counts, never media


def test_only_writes_protected_when_only_an_admin_token_is_set(stack):
    running, stub = start_service(stack, admin_token="admin-t")
    try:
        assert stub.GetIndexInfo(pb.GetIndexInfoRequest()).indexes
        with pytest.raises(grpc.RpcError) as e:
            stub.DeleteItems(pb.DeleteItemsRequest(modality=pb.FACE, item_ids=["a"]))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        running.stop(0)


def test_calls_beyond_the_concurrency_limit_are_refused_and_counted(stack):
    running, stub = start_service(stack, max_concurrent_rpcs=2, workers=2)
    face = pb.Image(data=media(stack, "toy001", "face", 0))
    voices = [pb.Media(audio=pb.Audio(data=media(stack, f"toy00{i}", "voice"))) for i in range(1, 9)]
    request = pb.MatchRequest(probe=pb.Media(image=face), candidates=voices)

    def call(_):
        try:
            stub.Match(request, timeout=60)
            return "OK"
        except grpc.RpcError as e:
            return e.code().name

    try:
        with ThreadPoolExecutor(24) as pool:
            codes = list(pool.map(call, range(48)))
        refused = running.metrics.rejected.labels("Match", "concurrency")._value.get()
        assert stub.GetIndexInfo(pb.GetIndexInfoRequest()).indexes  # and it still serves
        assert running.metrics.in_flight._value.get() == 0  # every accepted call was counted out
    finally:
        running.stop(0)
    assert "OK" in codes and "RESOURCE_EXHAUSTED" in codes
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"} and codes.count("RESOURCE_EXHAUSTED") == refused


def test_a_delete_is_never_answered_from_the_result_cache(stack):
    with LocalRedis() as redis_server:
        running, stub = start_service(stack, redis_url=redis_server.url)
        try:
            voice = pb.Audio(data=media(stack, "toy005", "voice"))
            request = pb.SearchFacesRequest(voice=voice, top_k=3)
            first = stub.SearchFaces(request)
            assert stub.SearchFaces(request).cached
            victim = first.hits[0].item_id
            stub.DeleteItems(pb.DeleteItemsRequest(modality=pb.FACE, item_ids=[victim]))
            after = stub.SearchFaces(request)
            assert not after.cached and victim not in [h.item_id for h in after.hits]
            assert stub.SearchFaces(request).cached  # caching goes on, at the new generation
        finally:
            running.stop(0)


def _facevoice_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("facevoice-")}


def test_stop_joins_every_thread_and_a_failed_start_leaves_none(stack, tmp_path):
    before = _facevoice_threads()
    with LocalRedis() as redis_server:
        running, _ = start_service(stack, redis_url=redis_server.url, poll_s=0.1)
        assert {"facevoice-log-follower", "facevoice-index-watch", "facevoice-index-subscriber"} <= _facevoice_threads()
        running.stop(0)
        assert _facevoice_threads() <= before
        # a start-up that fails late (the TLS files are not PEM) stops what it had started
        bad = tmp_path / "bad.pem"
        bad.write_text("not a certificate")
        with pytest.raises(Exception):  # noqa: B017 - whatever gRPC raises for bad PEM
            start_service(stack, redis_url=redis_server.url, tls_cert=bad, tls_key=bad)
        time.sleep(0.2)
        assert _facevoice_threads() <= before


def test_the_subscriber_survives_a_failing_handler():
    with LocalRedis() as redis_server:
        calls = []

        def handler(published):
            calls.append(published)
            if len(calls) == 1:
                raise RuntimeError("a bug in the handler")

        sub = Subscriber(redis_server.url, handler, backoff_s=0.05)
        sub.start()
        try:
            deadline = time.monotonic() + 20
            while len(calls) < 2 and time.monotonic() < deadline:
                announce(redis_server.url, {"face": f"v{len(calls)}"})
                time.sleep(0.1)
            assert len(calls) >= 2 and sub.is_alive()
        finally:
            sub.stop()
            sub.join(5)
        assert not sub.is_alive()
