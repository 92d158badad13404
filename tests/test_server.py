"""The real gRPC server on the embedded default: every RPC, its answers checked against direct
computation, every bad input a clear INVALID_ARGUMENT, auth, health, reflection, metrics."""

from __future__ import annotations

import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from facevoice.v1 import facevoice_pb2 as pb
from tests.serving import media, start_service
from tests.test_media_bad_input import AUDIO_CASES, IMAGE_CASES

BYTES_AUDIO = [c for c in AUDIO_CASES if isinstance(c[1], bytes)]
BYTES_IMAGE = [c for c in IMAGE_CASES if isinstance(c[1], bytes)]


@pytest.fixture(scope="module")
def service(stack):
    running, stub = start_service(stack)
    yield running, stub
    running.stop(0)


def _code(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=30)
    return e.value.code(), e.value.details()


def _embed(stub, **media_kw) -> np.ndarray:
    return np.asarray(stub.Embed(pb.EmbedRequest(media=pb.Media(**media_kw))).embedding, np.float32)


def test_search_faces_is_the_exact_nearest_gallery_faces(stack, service):
    _, stub = service
    voice = media(stack, "toy003", "voice")
    r = stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=voice), top_k=5))
    assert len(r.hits) == 5 and r.model_version and r.index_version
    q = _embed(stub, audio=pb.Audio(data=voice))
    for hit in r.hits:  # each distance equals the distance to the face's own embedding
        k = int(hit.item_id.rsplit("-", 1)[1])  # toy ids: toyNNN-face-K
        face = _embed(stub, image=pb.Image(data=media(stack, hit.identity, "face", k)))
        assert hit.distance == pytest.approx(float(np.linalg.norm(face - q)), rel=1e-4, abs=1e-4)
        assert hit.score == pytest.approx(1 / (1 + hit.distance), rel=1e-5)
    assert [h.distance for h in r.hits] == sorted(h.distance for h in r.hits)


def test_search_voices_with_filters(stack, service):
    _, stub = service
    face = pb.Image(data=media(stack, "toy004", "face"))
    r = stub.SearchVoices(pb.SearchVoicesRequest(face=face, top_k=1000,
                                                 filters=[pb.AttributeFilter(name="gender", values=["female"])]))
    assert r.hits and all(h.attributes["gender"] == "female" for h in r.hits)
    everyone = stub.SearchVoices(pb.SearchVoicesRequest(face=face, top_k=1000))
    assert len(everyone.hits) == 48 > len(r.hits)  # the toy corpus: 24 people x 2 clips


def test_match_ranks_all_candidates_by_distance(stack, service):
    _, stub = service
    probe = media(stack, "toy001", "voice")
    people = ["toy001", "toy009", "toy017"]
    r = stub.Match(pb.MatchRequest(probe=pb.Media(audio=pb.Audio(data=probe)),
                                   candidates=[pb.Media(image=pb.Image(data=media(stack, p, "face"))) for p in people]))
    assert sorted(c.index for c in r.ranking) == [0, 1, 2]
    q = _embed(stub, audio=pb.Audio(data=probe))
    d = [np.linalg.norm(_embed(stub, image=pb.Image(data=media(stack, p, "face"))) - q) for p in people]
    assert [c.index for c in r.ranking] == list(np.argsort(d))


def test_reconstruct_face_returns_a_png_and_nearest_faces(stack, service):
    import io

    _, stub = service
    r = stub.ReconstructFace(pb.ReconstructFaceRequest(voice=pb.Audio(data=media(stack, "toy002", "voice")), top_k=3))
    img = Image.open(io.BytesIO(r.png))
    assert img.format == "PNG" and img.size == (32, 32)
    assert len(r.nearest) == 3 and r.index_version and r.model_version
    assert all(-1e-5 <= h.distance <= 2 + 1e-5 for h in r.nearest)


def test_embed_spaces_have_the_exported_sizes(stack, service):
    _, stub = service
    voice = pb.Media(audio=pb.Audio(data=media(stack, "toy002", "voice")))
    face = pb.Media(image=pb.Image(data=media(stack, "toy002", "face")))
    assert len(stub.Embed(pb.EmbedRequest(media=voice)).embedding) == 8
    assert len(stub.Embed(pb.EmbedRequest(media=voice, space=pb.FACE_FEATURE)).embedding) == 16
    assert len(stub.Embed(pb.EmbedRequest(media=face, space=pb.FACE_FEATURE)).embedding) == 16


def test_upsert_then_delete(stack, service):
    _, stub = service
    face = media(stack, "toy005", "face", 1)
    voice = pb.Audio(data=media(stack, "toy005", "voice"))
    r = stub.UpsertItems(pb.UpsertItemsRequest(items=[pb.GalleryItem(item_id="new-face", identity="newcomer",
                                                                     media=pb.Media(image=pb.Image(data=face)),
                                                                     attributes={"gender": "male"})]))
    assert r.upserted == 1 and r.index_size["face"] == 49 and r.index_size["face_feature"] == 49
    # the new item is the same photo as toy005's face 1: both at the same distance from any voice
    hits = stub.SearchFaces(pb.SearchFacesRequest(voice=voice, top_k=49)).hits
    d = {h.item_id: h.distance for h in hits}
    assert d["new-face"] == pytest.approx(d["toy005-face-1"], abs=1e-5)
    d = stub.DeleteItems(pb.DeleteItemsRequest(modality=pb.FACE, item_ids=["new-face", "ghost"]))
    assert d.deleted == 1 and list(d.not_found) == ["ghost"]
    assert "new-face" not in [h.item_id for h in stub.SearchFaces(pb.SearchFacesRequest(voice=voice, top_k=48)).hits]


def test_a_bad_item_rejects_the_whole_upsert(stack, service):
    _, stub = service
    sizes = {i.name: i.size for i in stub.GetIndexInfo(pb.GetIndexInfoRequest()).indexes}
    good = pb.GalleryItem(item_id="fine-voice", media=pb.Media(audio=pb.Audio(data=media(stack, "toy005", "voice"))))
    bad = pb.GalleryItem(item_id="broken", media=pb.Media(image=pb.Image(data=b"not an image")))
    code, details = _code(stub.UpsertItems, pb.UpsertItemsRequest(items=[good, bad]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("item 'broken': image:")
    assert {i.name: i.size for i in stub.GetIndexInfo(pb.GetIndexInfoRequest()).indexes} == sizes


def test_index_info(service):
    _, stub = service
    info = stub.GetIndexInfo(pb.GetIndexInfoRequest())
    assert {i.name for i in info.indexes} == {"face", "voice", "face_feature"}
    assert all(i.kind == "flat" and i.recall_at_10 == 1.0 and i.device == "cpu" for i in info.indexes)
    # the plan as the build chose it: exact, 4 bytes per dimension, under the default 4 GB budget
    dims = {"face": 8, "voice": 8, "face_feature": 16}
    assert all((i.plan, i.factory, i.bytes_per_item) == ("flat", "Flat", 4 * dims[i.name]) for i in info.indexes)
    assert all(i.memory_budget == 4 * 10**9 and abs(i.min_recall - 0.95) < 1e-6 and i.placement == "no GPU"
               for i in info.indexes)
    assert info.association_model_version and info.speech2face_model_version


@pytest.mark.parametrize("name,data,error,message", BYTES_AUDIO, ids=[c[0] for c in BYTES_AUDIO])
def test_bad_audio_in_every_audio_rpc(service, name, data, error, message):
    _, stub = service
    calls = [(stub.SearchFaces, pb.SearchFacesRequest(voice=pb.Audio(data=data), top_k=3)),
             (stub.ReconstructFace, pb.ReconstructFaceRequest(voice=pb.Audio(data=data))),
             (stub.Embed, pb.EmbedRequest(media=pb.Media(audio=pb.Audio(data=data)))),
             (stub.Embed, pb.EmbedRequest(media=pb.Media(audio=pb.Audio(data=data)), space=pb.FACE_FEATURE)),
             (stub.Match, pb.MatchRequest(probe=pb.Media(audio=pb.Audio(data=data)),
                                          candidates=[pb.Media(image=pb.Image(data=b"x"))] * 2))]
    for call, request in calls:
        code, details = _code(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, details)
        assert details.startswith("audio:")


@pytest.mark.parametrize("name,data,error,message", BYTES_IMAGE, ids=[c[0] for c in BYTES_IMAGE])
def test_bad_images_in_every_image_rpc(stack, service, name, data, error, message):
    _, stub = service
    voice = pb.Media(audio=pb.Audio(data=media(stack, "toy001", "voice")))
    calls = [(stub.SearchVoices, pb.SearchVoicesRequest(face=pb.Image(data=data), top_k=3)),
             (stub.Embed, pb.EmbedRequest(media=pb.Media(image=pb.Image(data=data)))),
             (stub.Match, pb.MatchRequest(probe=voice, candidates=[pb.Media(image=pb.Image(data=data))] * 2)),
             (stub.UpsertItems, pb.UpsertItemsRequest(items=[pb.GalleryItem(
                 item_id="x", media=pb.Media(image=pb.Image(data=data)))]))]
    for call, request in calls:
        code, details = _code(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, details)
        assert "image:" in details


def test_bad_fields(stack, service):
    _, stub = service
    voice = pb.Audio(data=media(stack, "toy001", "voice"))
    face = pb.Image(data=media(stack, "toy001", "face"))
    cases = [
        (stub.SearchFaces, pb.SearchFacesRequest(top_k=3), "voice is required"),
        (stub.SearchFaces, pb.SearchFacesRequest(voice=voice, top_k=0), "top_k"),
        (stub.SearchFaces, pb.SearchFacesRequest(voice=voice, top_k=1001), "top_k"),
        (stub.SearchFaces, pb.SearchFacesRequest(voice=voice, top_k=1, filters=[pb.AttributeFilter(
            name="shoe_size", values=["9"])]), "unknown attribute"),
        (stub.SearchFaces, pb.SearchFacesRequest(voice=voice, top_k=1, filters=[pb.AttributeFilter(
            name="gender")]), "no values"),
        (stub.SearchVoices, pb.SearchVoicesRequest(face=pb.Image(data=face.data, box=pb.FaceBox(width=-1, height=5)),
                                                   top_k=1), "under 8 px a side"),
        (stub.SearchVoices, pb.SearchVoicesRequest(face=pb.Image(data=face.data, box=pb.FaceBox(width=1e9, height=1e9)),
                                                   top_k=1), "larger than the"),
        (stub.Match, pb.MatchRequest(probe=pb.Media(audio=voice), candidates=[pb.Media(image=face)]), "2..100"),
        (stub.Match, pb.MatchRequest(probe=pb.Media(audio=voice), candidates=[pb.Media(image=face)] * 101), "2..100"),
        (stub.Match, pb.MatchRequest(probe=pb.Media(audio=voice), candidates=[pb.Media(image=face),
                                                                              pb.Media(audio=voice)]), "candidate 1"),
        (stub.Match, pb.MatchRequest(candidates=[pb.Media(image=face)] * 2), "probe is required"),
        (stub.ReconstructFace, pb.ReconstructFaceRequest(voice=voice, top_k=-1), "top_k"),
        (stub.Embed, pb.EmbedRequest(), "media is required"),
        (stub.UpsertItems, pb.UpsertItemsRequest(), "1..256"),
        (stub.UpsertItems, pb.UpsertItemsRequest(items=[pb.GalleryItem(media=pb.Media(image=face))]), "item_id"),
        (stub.UpsertItems, pb.UpsertItemsRequest(items=[pb.GalleryItem(item_id="a", media=pb.Media(image=face))] * 2),
         "repeat"),
        (stub.UpsertItems, pb.UpsertItemsRequest(items=[pb.GalleryItem(item_id="a")]), "no audio or image"),
        (stub.DeleteItems, pb.DeleteItemsRequest(item_ids=["a"]), "FACE or VOICE"),
        (stub.DeleteItems, pb.DeleteItemsRequest(modality=pb.VOICE), "1..10000"),
    ]
    for call, request, message in cases:
        code, details = _code(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, (message, details)


def test_over_the_message_limit_is_refused_by_grpc(stack):
    running, stub = start_service(stack, max_message_bytes=1 << 20)
    try:
        code, _ = _code(stub.SearchFaces, pb.SearchFacesRequest(voice=pb.Audio(data=b"\0" * (2 << 20)), top_k=1))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        running.stop(0)


def test_still_serving_after_all_that(stack, service):
    running, stub = service
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
    assert health.Check(health_pb2.HealthCheckRequest(service="facevoice.v1.FaceVoice")).status == \
        health_pb2.HealthCheckResponse.SERVING
    assert stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=media(stack, "toy001", "voice")), top_k=1)).hits


def test_reflection_lists_the_services(service):
    running, _ = service
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
    reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"facevoice.v1.FaceVoice", "grpc.health.v1.Health"} <= names


def test_metrics_endpoint(service):
    running, _ = service
    text = urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5).read().decode()
    assert 'facevoice_requests_total{code="OK",method="SearchFaces"}' in text
    assert 'facevoice_requests_total{code="INVALID_ARGUMENT",method="SearchFaces"}' in text
    assert 'facevoice_stage_duration_seconds_bucket{le="0.0005",method="SearchFaces",stage="embed"}' in text
    assert 'facevoice_index_items{index="face"}' in text
    assert "facevoice_index_info{" in text


def test_bearer_token_auth(stack):
    running, stub = start_service(stack, token="s3cret")
    try:
        request = pb.GetIndexInfoRequest()
        assert _code(stub.GetIndexInfo, request)[0] == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            stub.GetIndexInfo(request, metadata=[("authorization", "Bearer wrong")])
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.GetIndexInfo(request, metadata=[("authorization", "Bearer s3cret")]).indexes
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.stop(0)
