"""The gRPC FaceVoice service (protos/facevoice/v1/facevoice.proto).

Each handler decodes with the media pipeline, embeds with the exported networks, searches the
served index; errors are typed where they happen and become a gRPC status here, once. The process
never dies on a request: anything unexpected is logged and answered INTERNAL."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable

import grpc
import numpy as np

from facevoice.service.cache import Cache
from facevoice.service.embedder import Embedder, to_png
from facevoice.service.errors import (
    BadRequest,
    DeadlineExceeded,
    DependencyUnavailable,
    NotLoaded,
    ServiceError,
    Unsupported,
)
from facevoice.service.gallery import Item
from facevoice.service.media import MediaError
from facevoice.service.metrics import Metrics
from facevoice.service.served import IndexSet
from facevoice.v1 import facevoice_pb2 as pb
from facevoice.v1 import facevoice_pb2_grpc as pb_grpc

log = logging.getLogger("facevoice.server")
MAX_TOP_K = 1000
MAX_CANDIDATES = 100
MAX_UPSERT = 256
MAX_DELETE = 10_000
STATUS = [(MediaError, grpc.StatusCode.INVALID_ARGUMENT), (BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
          (NotLoaded, grpc.StatusCode.NOT_FOUND), (Unsupported, grpc.StatusCode.FAILED_PRECONDITION),
          (DependencyUnavailable, grpc.StatusCode.UNAVAILABLE), (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED)]


def status_of(e: Exception) -> grpc.StatusCode:
    return next((code for kind, code in STATUS if isinstance(e, kind)), grpc.StatusCode.INTERNAL)


def rpc(method: Callable) -> Callable:
    """Times the call, counts its status, and turns typed errors into gRPC status codes."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: FaceVoiceService, request, context: grpc.ServicerContext):
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            return method(self, request, context, deadline)
        except (MediaError, ServiceError) as e:
            code = status_of(e)
            if isinstance(e, DependencyUnavailable):
                self.metrics.dependency_errors.labels("triton").inc()
            context.abort(code, str(e))
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", name)
            context.abort(code, f"{name}: internal error (logged on the server)")
        finally:
            self.metrics.requests.labels(name, code.name).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - start)

    return wrapper


def _box(image: pb.Image) -> tuple[float, float, float, float] | None:
    if not image.HasField("box"):
        return None
    b = image.box
    return (b.x, b.y, b.width, b.height)


def _filters(request, gallery) -> dict[str, set[str]]:
    out = {}
    known = gallery.attribute_names()
    for f in request.filters:
        if f.name not in known:
            raise BadRequest(f"filter on unknown attribute {f.name!r} (the gallery has {sorted(known)})")
        if not f.values:
            raise BadRequest(f"filter on {f.name!r} lists no values")
        out[f.name] = set(f.values)
    return out


def _check_top_k(top_k: int, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not low <= top_k <= MAX_TOP_K:
        raise BadRequest(f"top_k must be in {low}..{MAX_TOP_K}, got {top_k}")


def _score(distance: float, metric: str) -> float:
    """The proto's Hit.score: the cosine in a cosine space, 1 / (1 + Euclidean distance) otherwise."""
    return (1.0 - distance) if metric == "cosine" else 1.0 / (1.0 + distance)


def _hits(found: list, metric: str) -> list[pb.Hit]:
    return [pb.Hit(item_id=it.item_id, identity=it.identity, distance=d, attributes=it.attributes,
                   score=_score(d, metric)) for it, d in found]


class FaceVoiceService(pb_grpc.FaceVoiceServicer):
    def __init__(self, embedder: Embedder, indexes: IndexSet, cache: Cache, metrics: Metrics):
        self.embedder, self.indexes, self.cache, self.metrics = embedder, indexes, cache, metrics
        self.manifest = embedder.manifest
        e = embedder
        # space -> (Media -> model input, model inputs -> vectors)
        self.spaces = {"voice": (lambda m: e.voice_input(m.audio.data), e.voices),
                       "face": (lambda m: e.face_input(m.image.data, _box(m.image)), e.faces),
                       "face_feature": (lambda m: e.face_feature_input(m.image.data, _box(m.image)),
                                        e.face_features)}

    def _decode_all(self, method: str, space: str, media: list, labels: list[str]) -> np.ndarray:
        """Every item decoded, or BadRequest naming the first bad one; [N, ...] inputs."""
        decode = self.spaces[space][0]
        with self.metrics.timed(method, "decode"):
            inputs = []
            for label, m in zip(labels, media, strict=True):
                try:
                    inputs.append(decode(m))
                except MediaError as err:
                    raise BadRequest(f"{label}: {err}") from err
        return np.stack(inputs)

    def _embed_all(self, method: str, space: str, x: np.ndarray, deadline) -> np.ndarray:
        with self.metrics.timed(method, "embed"):
            self.metrics.batch.labels(space).observe(len(x))
            return self.spaces[space][1](x, deadline)

    # stages -------------------------------------------------------------------------------
    def _embed_one(self, method: str, kind: str, data: bytes, decode, embed, deadline, extra: bytes = b""
                   ) -> np.ndarray:
        """Decode + embed one item, through the embedding cache."""
        key = None
        if self.cache.enabled:  # hashing the media costs ~0.1 ms per 100 kB: only with a cache
            version = (self.manifest.s2f().version if kind in ("s2f", "face_feature")
                       else self.manifest.association.version)
            key = f"{kind}:{version}:{hashlib.sha256(data + extra).hexdigest()}"
            with self.metrics.timed(method, "cache"):
                hit = self.cache.get("embedding", key)
            if hit is not None:
                return np.frombuffer(hit, np.float32)
        with self.metrics.timed(method, "decode"):
            x = decode(data)
        with self.metrics.timed(method, "embed"):
            self.metrics.batch.labels(kind).observe(1)
            v = embed(x[None], deadline)[0].astype(np.float32)
        if key is not None:
            with self.metrics.timed(method, "cache"):
                self.cache.put("embedding", key, v.tobytes())
        return v

    def _voice(self, method, audio: pb.Audio, deadline) -> np.ndarray:
        e = self.embedder
        return self._embed_one(method, "voice", audio.data, e.voice_input, e.voices, deadline)

    def _face(self, method, image: pb.Image, deadline) -> np.ndarray:
        e, box = self.embedder, _box(image)
        return self._embed_one(method, "face", image.data, lambda b: e.face_input(b, box), e.faces, deadline,
                               repr(box).encode())

    def _search(self, method, name: str, query: np.ndarray, request, deadline) -> pb.SearchResponse:
        gallery = self.indexes.get(name)
        filters = _filters(request, gallery)
        _check_top_k(request.top_k)
        # a live-edited index's results are not cached
        cacheable = self.cache.enabled and not self.indexes.journal[name]
        if cacheable:
            key = hashlib.sha256(query.tobytes() + json.dumps(
                [gallery.meta["version"], request.top_k, sorted((k, sorted(v)) for k, v in filters.items())]
            ).encode()).hexdigest()
            with self.metrics.timed(method, "cache"):
                hit = self.cache.get("result", key)
            if hit is not None:
                response = pb.SearchResponse.FromString(hit)
                response.cached = True
                return response
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceeded("deadline passed before the search")
        with self.metrics.timed(method, "search"):
            found = gallery.search(query, request.top_k, filters)
        response = pb.SearchResponse(hits=_hits(found, gallery.metric),
                                     model_version=gallery.meta["model_version"],
                                     index_version=gallery.meta["version"])
        if cacheable:
            with self.metrics.timed(method, "cache"):
                self.cache.put("result", key, response.SerializeToString())
        return response

    # RPCs ---------------------------------------------------------------------------------
    @rpc
    def SearchFaces(self, request, context, deadline):
        _require(request.HasField("voice"), "voice is required")
        return self._search("SearchFaces", "face", self._voice("SearchFaces", request.voice, deadline), request,
                            deadline)

    @rpc
    def SearchVoices(self, request, context, deadline):
        _require(request.HasField("face"), "face is required")
        return self._search("SearchVoices", "voice", self._face("SearchVoices", request.face, deadline), request,
                            deadline)

    @rpc
    def Match(self, request, context, deadline):
        _require(request.HasField("probe"), "probe is required")
        n = len(request.candidates)
        _require(2 <= n <= MAX_CANDIDATES, f"2..{MAX_CANDIDATES} candidates are needed, got {n}")
        probe_kind = request.probe.WhichOneof("kind")
        _require(probe_kind is not None, "probe has no audio or image")
        want = "image" if probe_kind == "audio" else "audio"
        for i, c in enumerate(request.candidates):
            _require(c.WhichOneof("kind") == want, f"candidate {i} must be {want} (the other modality of the probe)")
        if probe_kind == "audio":
            probe, space = self._voice("Match", request.probe.audio, deadline), "face"
        else:
            probe, space = self._face("Match", request.probe.image, deadline), "voice"
        x = self._decode_all("Match", space, list(request.candidates), [f"candidate {i}" for i in range(n)])
        cands = self._embed_all("Match", space, x, deadline)
        dist = np.linalg.norm(cands.astype(np.float64) - probe.astype(np.float64), axis=1)
        order = np.argsort(dist, kind="stable")
        return pb.MatchResponse(ranking=[pb.RankedCandidate(index=int(i), distance=float(dist[i]),
                                                            score=_score(float(dist[i]), "l2")) for i in order],
                                model_version=self.manifest.association.version)

    @rpc
    def ReconstructFace(self, request, context, deadline):
        _require(request.HasField("voice"), "voice is required")
        _check_top_k(request.top_k, allow_zero=True)
        e = self.embedder
        group = self.manifest.s2f()
        feature = self._embed_one("ReconstructFace", "s2f", request.voice.data, e.s2f_input, e.s2f_features, deadline)
        with self.metrics.timed("ReconstructFace", "embed"):
            picture = e.decode_faces(feature[None], deadline)[0]
        response = pb.ReconstructFaceResponse(png=to_png(picture), model_version=group.version)
        if request.top_k:
            gallery = self.indexes.get("face_feature")
            with self.metrics.timed("ReconstructFace", "search"):
                found = gallery.search(feature, request.top_k)
            response.nearest.extend(_hits(found, gallery.metric))
            response.index_version = gallery.meta["version"]
        return response

    @rpc
    def Embed(self, request, context, deadline):
        _require(request.HasField("media"), "media is required")
        kind = request.media.WhichOneof("kind")
        _require(kind is not None, "media has no audio or image")
        e = self.embedder
        if request.space == pb.FACE_FEATURE:
            if kind == "audio":
                v = self._embed_one("Embed", "s2f", request.media.audio.data, e.s2f_input, e.s2f_features, deadline)
            else:
                box = _box(request.media.image)
                v = self._embed_one("Embed", "face_feature", request.media.image.data,
                                    lambda b: e.face_feature_input(b, box), e.face_features, deadline,
                                    repr(box).encode())
            return pb.EmbedResponse(embedding=v.tolist(), model_version=self.manifest.s2f().version)
        v = self._voice("Embed", request.media.audio, deadline) if kind == "audio" else \
            self._face("Embed", request.media.image, deadline)
        return pb.EmbedResponse(embedding=v.tolist(), model_version=self.manifest.association.version)

    @rpc
    def UpsertItems(self, request, context, deadline):
        n = len(request.items)
        _require(1 <= n <= MAX_UPSERT, f"1..{MAX_UPSERT} items per call, got {n}")
        ids = [it.item_id for it in request.items]
        _require(all(ids), "every item needs an item_id")
        _require(len(set(ids)) == n, "item_ids repeat within the call")
        with_features = self.manifest.speech2face is not None and "face_feature" in self.indexes.galleries
        by_space: dict[str, list] = {}
        for it in request.items:
            kind = it.media.WhichOneof("kind")
            _require(kind is not None, f"item {it.item_id!r} has no audio or image")
            for space in (["voice"] if kind == "audio" else ["face", "face_feature"] if with_features else ["face"]):
                by_space.setdefault(space, []).append(it)
        # decode and embed everything before touching an index: a bad item or a failed call changes nothing
        vectors = {}
        for space, items in by_space.items():
            x = self._decode_all("UpsertItems", space, [it.media for it in items],
                                 [f"item {it.item_id!r}" for it in items])
            vectors[space] = self._embed_all("UpsertItems", space, x, deadline)
        sizes = {space: self.indexes.upsert(space, [Item(it.item_id, it.identity, dict(it.attributes))
                                                    for it in items], vectors[space])
                 for space, items in by_space.items()}
        return pb.UpsertItemsResponse(upserted=n, index_size=sizes)

    @rpc
    def DeleteItems(self, request, context, deadline):
        _require(request.modality in (pb.FACE, pb.VOICE), "modality must be FACE or VOICE")
        n = len(request.item_ids)
        _require(1 <= n <= MAX_DELETE, f"1..{MAX_DELETE} item_ids per call, got {n}")
        names = ["voice"] if request.modality == pb.VOICE else \
            [x for x in ("face", "face_feature") if x in self.indexes.galleries]
        missing = self.indexes.delete(names[0], list(request.item_ids))
        for other in names[1:]:
            self.indexes.delete(other, list(request.item_ids))
        return pb.DeleteItemsResponse(deleted=n - len(missing), not_found=missing)

    @rpc
    def GetIndexInfo(self, request, context, deadline):
        infos = []
        for name, g in sorted(self.indexes.galleries.items()):
            m = g.meta
            infos.append(pb.IndexInfo(name=name, version=m["version"], model_version=m["model_version"],
                                      size=g.size, kind=m["kind"], params={k: str(v) for k, v in m["params"].items()},
                                      recall_at_10=m["recall_at_10"], built_at=m["built_at"], device=g.device))
        s2f = self.manifest.speech2face
        return pb.GetIndexInfoResponse(indexes=infos, association_model_version=self.manifest.association.version,
                                       speech2face_model_version=s2f.version if s2f else "")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise BadRequest(message)
