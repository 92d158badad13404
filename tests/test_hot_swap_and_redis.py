"""Real redis-server: caches, Redis killed mid-traffic, and index versions hot-swapped while
queries run, announced on pub/sub or found by polling."""

from __future__ import annotations

import urllib.request

import grpc
import pytest

from devtools.local_servers import Background, LocalRedis, eventually
from facevoice.service.build import IndexBuildOptions, index_build
from facevoice.service.versions import current_version
from facevoice.v1 import facevoice_pb2 as pb
from tests.serving import copy_indexes, media, start_service


@pytest.fixture
def redis_server():
    with LocalRedis() as r:
        yield r


def _metric(running, line_start: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


class Traffic(Background):
    """Four client threads calling SearchFaces until the block ends; keeps every answer and failure."""

    def __init__(self, stub, request):
        self.stub, self.request = stub, request
        self.answered: list[str] = []
        self.failures: list[str] = []
        super().__init__([()] * 4)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answered.append(self.stub.SearchFaces(self.request, timeout=30).index_version)
            except grpc.RpcError as e:
                self.failures.append(f"{e.code()}: {e.details()}")

    def more(self, n: int) -> None:
        """Waits for n more answers."""
        start = len(self.answered)
        assert eventually(lambda: len(self.answered) >= start + n)


def _rebuild(stack, root, **extra) -> None:
    index_build(IndexBuildOptions(stack.corpus / "manifest.csv", stack.repo, root, modalities=("face",),
                                  no_progress=True, **extra))


def test_results_and_embeddings_are_cached(stack, redis_server, tmp_path):
    running, stub = start_service(stack, redis_url=redis_server.url)
    try:
        request = pb.SearchFacesRequest(voice=pb.Audio(data=media(stack, "toy001", "voice")), top_k=3)
        first, second = stub.SearchFaces(request), stub.SearchFaces(request)
        assert not first.cached and second.cached
        assert [h.item_id for h in first.hits] == [h.item_id for h in second.hits]
        assert _metric(running, 'facevoice_cache_hits_total{cache="result"}') == 1
        other = stub.SearchFaces(pb.SearchFacesRequest(voice=request.voice, top_k=4))  # new result, cached embedding
        # the embedding was a hit for the second and third requests
        assert not other.cached and _metric(running, 'facevoice_cache_hits_total{cache="embedding"}') == 2
    finally:
        running.stop(0)


def test_redis_killed_during_queries(stack, redis_server):
    running, stub = start_service(stack, redis_url=redis_server.url)
    request = pb.SearchFacesRequest(voice=pb.Audio(data=media(stack, "toy001", "voice")), top_k=3)
    try:
        with Traffic(stub, request) as traffic:
            traffic.more(20)
            redis_server.kill()
            traffic.more(50)
        bypassed = _metric(running, "facevoice_cache_bypassed_total")
        redis_errors = _metric(running, 'facevoice_dependency_errors_total{dependency="redis"}')
    finally:
        running.stop(0)
    assert traffic.failures == []
    assert bypassed > 0 and redis_errors > 0


def test_hot_swap_on_announcement_while_queries_run(stack, redis_server, tmp_path):
    root = copy_indexes(stack, tmp_path / "indexes")
    running, stub = start_service(stack, index_root=root, redis_url=redis_server.url, poll_s=0.0)  # no polling
    request = pb.SearchFacesRequest(voice=pb.Audio(data=media(stack, "toy002", "voice")), top_k=5)
    before = current_version(root, "face")
    versions = []
    try:
        with Traffic(stub, request) as traffic:
            traffic.more(10)
            for _ in range(3):
                _rebuild(stack, root, redis=redis_server.url)
                versions.append(current_version(root, "face"))
                assert eventually(lambda v=versions[-1]: any(i.version == v for i in
                                                        stub.GetIndexInfo(pb.GetIndexInfoRequest()).indexes))
            traffic.more(10)
        swaps = _metric(running, 'facevoice_index_swaps_total{index="face",result="swapped"}')
    finally:
        running.stop(0)
    assert traffic.failures == []
    assert before not in versions and len(set(versions)) == 3
    seen = set(traffic.answered)
    assert before in seen and versions[-1] in seen  # queries ran before and after the swaps
    assert swaps >= 4  # the first load, then one per announcement


def test_polling_swaps_without_redis_and_refuses_a_bad_version(stack, tmp_path):
    root = copy_indexes(stack, tmp_path / "indexes")
    running, stub = start_service(stack, index_root=root, poll_s=0.1)
    try:
        _rebuild(stack, root)
        new = current_version(root, "face")

        def served():
            return {i.name: i.version for i in stub.GetIndexInfo(pb.GetIndexInfoRequest()).indexes}["face"]

        assert eventually(lambda: served() == new)
        # a corrupted version is published: the service keeps serving the good one
        _rebuild(stack, root)
        bad = current_version(root, "face")
        (root / "face" / bad / "index.faiss").write_bytes(b"corrupt")
        assert eventually(lambda: _metric(running, 'facevoice_index_swaps_total{index="face",result="refused"}') >= 1)
        assert served() == new
        assert stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=media(stack, "toy001", "voice")),
                                                      top_k=2)).index_version == new
    finally:
        running.stop(0)


def test_live_upserts_survive_a_swap(stack, tmp_path):
    root = copy_indexes(stack, tmp_path / "indexes")
    running, stub = start_service(stack, index_root=root, poll_s=0.1)
    try:
        face = pb.Media(image=pb.Image(data=media(stack, "toy007", "face")))
        stub.UpsertItems(pb.UpsertItemsRequest(items=[pb.GalleryItem(item_id="live", identity="x", media=face)]))
        _rebuild(stack, root)
        new = current_version(root, "face")
        assert eventually(lambda: any(i.version == new for i in stub.GetIndexInfo(pb.GetIndexInfoRequest()).indexes))
        voice = pb.Audio(data=media(stack, "toy007", "voice"))
        assert "live" in [h.item_id for h in stub.SearchFaces(pb.SearchFacesRequest(voice=voice, top_k=49)).hits]
    finally:
        running.stop(0)
