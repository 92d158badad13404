"""Gallery writes across two real `facevoice serve` processes: an acknowledged upsert reaches
both replicas and survives SIGKILL + restart of either; a deleted item is gone everywhere and stays
gone after `index build`; with Redis down, writes fail cleanly and searches go on. Once with the
embedded default (the file log in the shared index root), once with the Redis stream."""

from __future__ import annotations

import grpc
import pytest

from devtools.local_servers import LocalRedis, LocalService, eventually
from facevoice.service.build import IndexBuildOptions, index_build
from facevoice.service.logtool import IndexLogOptions, index_log_repair, index_log_verify
from facevoice.v1 import facevoice_pb2 as pb
from tests.serving import copy_indexes, media


class Replica(LocalService):
    def __init__(self, stack, root, *extra: str):
        super().__init__(stack.repo, root, "--poll-s", "0.2", "--workers", "4", *extra)

    def face_ids(self, stack) -> set[str]:
        voice = pb.Audio(data=media(stack, "toy005", "voice"))
        return {h.item_id for h in self.stub.SearchFaces(pb.SearchFacesRequest(voice=voice, top_k=200),
                                                         timeout=30).hits}


def _upsert(stub, item_id: str, stack) -> pb.UpsertItemsResponse:
    face = pb.Image(data=media(stack, "toy007", "face", 0))
    return stub.UpsertItems(pb.UpsertItemsRequest(items=[pb.GalleryItem(
        item_id=item_id, identity="newcomer", media=pb.Media(image=face), attributes={"gender": "male"})]), timeout=30)


def _rebuild(stack, root, **extra) -> None:
    index_build(IndexBuildOptions(stack.corpus / "manifest.csv", stack.repo, root, modalities=("face",),
                                  no_progress=True, **extra))


def _lifecycle(stack, root, extra: tuple[str, ...], build_extra: dict) -> None:
    a, b = Replica(stack, root, *extra).start(), Replica(stack, root, *extra).start()
    try:
        assert _upsert(a.stub, "live-1", stack).upserted == 1
        assert "live-1" in a.face_ids(stack)  # read your write on the replica that took it
        assert eventually(lambda: "live-1" in b.face_ids(stack))  # and on the other
        # a replica SIGKILLed right after acknowledging comes back with the write
        assert _upsert(a.stub, "live-2", stack).upserted == 1
        a.kill()
        a.start()
        assert {"live-1", "live-2"} <= a.face_ids(stack)
        b.kill()
        b.start()
        assert {"live-1", "live-2"} <= b.face_ids(stack)
        # deletion: a live item and a manifest item, gone from both replicas
        gone = b.stub.DeleteItems(pb.DeleteItemsRequest(modality=pb.FACE, item_ids=["live-1", "toy003-face-0"]))
        assert gone.deleted == 2
        assert eventually(lambda: not {"live-1", "toy003-face-0"} & a.face_ids(stack))
        assert not {"live-1", "toy003-face-0"} & b.face_ids(stack)
        # the nightly rebuild from the manifest folds the log in: the deleted stay deleted, the live stay
        before = {r.stub.GetIndexInfo(pb.GetIndexInfoRequest()).indexes[0].version for r in (a, b)}
        _rebuild(stack, root, **build_extra)
        for r in (a, b):
            assert eventually(lambda r=r: {i.version for i in r.stub.GetIndexInfo(pb.GetIndexInfoRequest()).indexes
                                            if i.name == "face"} - before)
            ids = r.face_ids(stack)
            assert "live-2" in ids and not {"live-1", "toy003-face-0"} & ids
        a.kill()  # and a restart on the new version replays nothing it already holds
        a.start()
        ids = a.face_ids(stack)
        assert "live-2" in ids and not {"live-1", "toy003-face-0"} & ids and len(ids) == 48
    finally:
        a.stop()
        b.stop()


def test_two_replicas_on_the_file_log(stack, tmp_path):
    root = copy_indexes(stack, tmp_path / "indexes")
    _lifecycle(stack, root, ("--gallery-log", "file"), {})


def test_two_replicas_on_the_redis_stream(stack, tmp_path):
    root = copy_indexes(stack, tmp_path / "indexes")
    with LocalRedis(data_dir=tmp_path / "redis") as redis_server:
        _lifecycle(stack, root, ("--redis-url", redis_server.url), {"redis": redis_server.url})


def test_redis_down_writes_fail_cleanly_and_searches_go_on(stack, tmp_path):
    root = copy_indexes(stack, tmp_path / "indexes")
    redis_server = LocalRedis(data_dir=tmp_path / "redis").start()
    a = Replica(stack, root, "--redis-url", redis_server.url).start()
    try:
        assert _upsert(a.stub, "kept", stack).upserted == 1
        redis_server.kill()
        with pytest.raises(grpc.RpcError) as e:
            _upsert(a.stub, "refused", stack)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "gallery log" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            a.stub.DeleteItems(pb.DeleteItemsRequest(modality=pb.FACE, item_ids=["kept"]), timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        ids = a.face_ids(stack)  # searches go on, and nothing was half-applied
        assert "kept" in ids and "refused" not in ids
        st = a.stub.GetIndexInfo(pb.GetIndexInfoRequest()).log  # and the replica says why writes fail
        assert st.state == "unavailable" and not st.writes and "Redis" in st.error
        redis_server = LocalRedis(port=redis_server.port, data_dir=tmp_path / "redis").start()  # same AOF
        assert eventually(lambda: _try(a, stack, "after"))  # writes work again once Redis is back
        a.kill()
        a.start()  # replays the acknowledged writes from Redis's AOF
        ids = a.face_ids(stack)
        assert {"kept", "after"} <= ids and "refused" not in ids
    finally:
        a.stop()
        redis_server.stop()


def _try(replica, stack, item_id: str) -> bool:
    try:
        return _upsert(replica.stub, item_id, stack).upserted == 1
    except grpc.RpcError:
        return False


def _health(replica, service: str) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{replica.port}"))
    status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def _damage_lifecycle(stack, root, extra: tuple[str, ...], damage, log: IndexLogOptions) -> None:
    """A replica that meets a damaged entry applies what comes before it, says so (GetIndexInfo, health,
    /metrics), stops every replica's writes, answers searches, and goes on by itself after the repair."""
    import urllib.request

    from devtools.local_servers import free_port
    from facevoice.service.serve import REPLICA_SERVICE, SERVICE_NAME, WRITES_SERVICE

    metrics_port = free_port()
    a = Replica(stack, root, *extra).start()
    b = Replica(stack, root, *extra, "--metrics-port", str(metrics_port)).start()
    try:
        b.kill()  # b is down while a takes three writes, and the middle one is damaged on disk
        for item_id in ("before", "damaged", "after"):
            assert _upsert(a.stub, item_id, stack).upserted == 1
        damage()
        b.start()
        assert eventually(lambda: b.stub.GetIndexInfo(pb.GetIndexInfoRequest()).log.state == "damaged")
        st = b.stub.GetIndexInfo(pb.GetIndexInfoRequest()).log
        assert "index log repair" in st.error and not st.writes and st.lag_entries >= 2
        ids = b.face_ids(stack)  # searches go on, with what came before the damage
        assert "before" in ids and not {"damaged", "after"} & ids
        assert _health(b, SERVICE_NAME) == "SERVING"
        assert _health(b, WRITES_SERVICE) == "NOT_SERVING" and _health(b, REPLICA_SERVICE) == "NOT_SERVING"
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert "facevoice_gallery_log_damaged 1.0" in scraped
        with pytest.raises(grpc.RpcError) as e:  # the other replica stops writing too
            _upsert(a.stub, "refused", stack)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "index log repair" in e.value.details()
        assert index_log_verify(log).status == 1
        assert index_log_repair(log).status == 0
        assert index_log_verify(log).status == 0
        assert eventually(lambda: "after" in b.face_ids(stack))  # b goes on by itself
        assert "damaged" not in b.face_ids(stack)
        assert eventually(lambda: b.stub.GetIndexInfo(pb.GetIndexInfoRequest()).log.state == "ok")
        assert eventually(lambda: _health(b, WRITES_SERVICE) == "SERVING")
        # a, which refused writes at the damage, also goes on by itself, on its own next look at the log
        assert eventually(lambda: _health(a, WRITES_SERVICE) == "SERVING")
        assert _upsert(a.stub, "later", stack).upserted == 1
        assert eventually(lambda: "later" in b.face_ids(stack))
    finally:
        a.stop()
        b.stop()


def test_a_damaged_file_log_record_stops_writes_and_replay_until_repaired(stack, tmp_path):
    from facevoice.service.writelog import FileLog

    root = copy_indexes(stack, tmp_path / "indexes")

    def damage() -> None:
        log = FileLog(root)
        ends = {c.upserts["face"].items[0]["item_id"]: int(o) for o, c in log.entries()}
        start = max(e for e in ends.values() if e < ends["damaged"])
        segment = next((root / ".gallery-log").glob("*.log"))
        data = bytearray(segment.read_bytes())
        data[(start + ends["damaged"]) // 2] ^= 0x10  # one flipped bit inside the middle record
        segment.write_bytes(data)

    _damage_lifecycle(stack, root, ("--gallery-log", "file"), damage, IndexLogOptions(root))


def test_an_undecodable_redis_entry_stops_writes_and_replay_until_repaired(stack, tmp_path):
    root = copy_indexes(stack, tmp_path / "indexes")
    with LocalRedis(data_dir=tmp_path / "redis") as redis_server:
        import redis

        def damage() -> None:  # the middle entry replaced by one no version of facevoice wrote
            client = redis.Redis.from_url(redis_server.url)
            (damaged_id, _), (after_id, after_fields) = client.xrange("facevoice:gallery")[-2:]
            client.xdel("facevoice:gallery", damaged_id, after_id)
            client.xadd("facevoice:gallery", {"c": b"\x05\x00\x00\x00{not}"})
            client.xadd("facevoice:gallery", after_fields)

        _damage_lifecycle(stack, root, ("--redis-url", redis_server.url), damage,
                          IndexLogOptions(root, redis=redis_server.url))
