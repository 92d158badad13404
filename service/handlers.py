"""The gRPC FaceVoice service (protos/facevoice/v1/facevoice.proto).

Each handler decodes with the media pipeline, embeds with the exported networks, searches the
served index; errors are typed where they happen and become a gRPC status here, once. The process
never dies on a request: anything unexpected is logged and answered INTERNAL."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable

import grpc
import numpy as np

from facevoice.service.batching import call_scope
from facevoice.service.cache import Cache
from facevoice.service.embedder import Embedder, to_png
from facevoice.service.errors import (
    BadRequest,
    Cancelled,
    DeadlineExceeded,
    DependencyUnavailable,
    Exhausted,
    NotLoaded,
    ServiceError,
    Stopped,
    Unsupported,
)
from facevoice.service.gallery import Item
from facevoice.service.indexes import IndexSet
from facevoice.service.media import MediaError, frontends
from facevoice.service.media.image import Box, FaceUsed
from facevoice.service.metrics import Metrics
from facevoice.service.repository import ASSOCIATION, FACE, FACE_FEATURE, S2F_VOICE, SPEECH2FACE, VOICE
from facevoice.v1 import facevoice_pb2 as pb
from facevoice.v1 import facevoice_pb2_grpc as pb_grpc

log = logging.getLogger("facevoice.server")
MAX_TOP_K = 1000
MAX_CANDIDATES = 100
MAX_UPSERT = 256
MAX_DELETE = 10_000
# Embed's (space == FACE_FEATURE, medium) -> the space that embeds it; unspecified is ASSOCIATION
EMBED_SPACES = {(False, "audio"): VOICE, (False, "image"): FACE, (True, "audio"): S2F_VOICE,
                (True, "image"): FACE_FEATURE}
STATUS = [(MediaError, grpc.StatusCode.INVALID_ARGUMENT), (BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
          (NotLoaded, grpc.StatusCode.NOT_FOUND), (Unsupported, grpc.StatusCode.FAILED_PRECONDITION),
          (Stopped, grpc.StatusCode.FAILED_PRECONDITION),
          (DependencyUnavailable, grpc.StatusCode.UNAVAILABLE), (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
          (Cancelled, grpc.StatusCode.CANCELLED),
          (Exhausted, grpc.StatusCode.RESOURCE_EXHAUSTED)]
audit = logging.getLogger("facevoice.audit")


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
            with call_scope() as scope:  # a cancelled call's inputs leave the batchers' queues
                if not context.add_callback(scope.cancel):  # the call has already ended
                    scope.cancel()
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


def _payload(message: pb.Audio | pb.Image) -> tuple[bytes, Box | None, int]:
    """A query's bytes, its face box when it is an image that has one, and the face it names."""
    if isinstance(message, pb.Image):
        if message.face_index < 0:
            raise BadRequest(f"face_index must be 0 or more, got {message.face_index}")
        if message.HasField("box"):
            b = message.box
            return message.data, (b.x, b.y, b.width, b.height), message.face_index
        return message.data, None, message.face_index
    return message.data, None, 0


def face_used_pb(used) -> pb.FaceUsed | None:
    if used is None:
        return None
    out = pb.FaceUsed(score=used.score or 0.0, source=used.source,
                      faces=[pb.FaceBox(x=b[0], y=b[1], width=b[2], height=b[3]) for b in used.faces])
    if used.box is not None:
        out.box.CopyFrom(pb.FaceBox(x=used.box[0], y=used.box[1], width=used.box[2], height=used.box[3]))
    return out


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

    # stages -------------------------------------------------------------------------------
    def _decode_all(self, method: str, space: str, media: list[pb.Media], labels: list[str],
                    used: list | None = None, deadline: float | None = None) -> np.ndarray:
        """Every item decoded, or BadRequest naming the first bad one; [N, ...] inputs (and, into
        `used`, the face each photo was cut from)."""
        with self.metrics.timed(method, "decode"):
            inputs = []
            for label, m in zip(labels, media, strict=True):
                data, box, face_index = _payload(m.audio if m.WhichOneof("kind") == "audio" else m.image)
                try:
                    x, face = self.embedder.decode_used(space, data, box, face_index, deadline)
                except MediaError as err:
                    raise BadRequest(f"{label}: {err}") from err
                inputs.append(x)
                if used is not None and face is not None:
                    used.append(face)
        return np.stack(inputs)

    def _embed_all(self, method: str, space: str, x: np.ndarray, deadline) -> np.ndarray:
        with self.metrics.timed(method, "embed"):
            self.metrics.batch.labels(space).observe(len(x))
            return self.embedder.embed(space, x, deadline)

    def _embed_one(self, method: str, space: str, message: pb.Audio | pb.Image, deadline
                   ) -> tuple[np.ndarray, FaceUsed | None]:
        """Decode + embed one query, through the embedding cache; (vector, the face used)."""
        data, box, face_index = _payload(message)
        key = None
        if self.cache.enabled:  # hashing the media costs ~0.1 ms per 100 kB: only with a cache
            extra = repr((box, face_index)).encode() if isinstance(message, pb.Image) else b""
            digest = hashlib.sha256(data + extra)
            key = f"{space}:{self.embedder.version(space)}:{digest.hexdigest()}"
            with self.metrics.timed(method, "cache"):
                hit = self.cache.get("embedding", key)
            if hit is not None:
                return _from_cache(hit, self.manifest.space(space).dim)
        with self.metrics.timed(method, "decode"):
            x, used = self.embedder.decode_used(space, data, box, face_index, deadline)
        with self.metrics.timed(method, "embed"):
            self.metrics.batch.labels(space).observe(1)
            v = self.embedder.embed(space, x[None], deadline)[0].astype(np.float32)
        if key is not None:
            with self.metrics.timed(method, "cache"):
                self.cache.put("embedding", key, _to_cache(v, used))
        return v, used

    def _search(self, method, name: str, query: np.ndarray, request, deadline) -> pb.SearchResponse:
        gallery = self.indexes.get(name)
        filters = _filters(request, gallery)
        _check_top_k(request.top_k)
        # the key names the gallery's generation (version and log offset): a write, a delete above
        # all, makes every earlier cached result unreachable
        cacheable = self.cache.enabled and gallery.generation is not None  # None: a backend whose writes we do not see
        if cacheable:
            key = hashlib.sha256(query.tobytes() + json.dumps(
                [gallery.generation, request.top_k, sorted((k, sorted(v)) for k, v in filters.items())]
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
                                     model_version=gallery.meta.model_version,
                                     index_version=gallery.meta.version)
        if cacheable:
            with self.metrics.timed(method, "cache"):
                self.cache.put("result", key, response.SerializeToString())
        return response

    def _gallery_spaces(self, modality: str) -> list[str]:
        """The indexes an item of this modality is written to: the association space's (which must
        be loaded), then every other indexed space of the modality that is loaded."""
        spaces = [n for n, s in self.manifest.indexed().items() if s.modality == modality]
        return [n for n in spaces if self.manifest.spaces[n].group == ASSOCIATION or n in self.indexes.galleries]

    # RPCs ---------------------------------------------------------------------------------
    @rpc
    def SearchFaces(self, request, context, deadline):
        _require(request.HasField("voice"), "voice is required")
        return self._search("SearchFaces", FACE, self._embed_one("SearchFaces", VOICE, request.voice, deadline)[0],
                            request, deadline)

    @rpc
    def SearchVoices(self, request, context, deadline):
        _require(request.HasField("face"), "face is required")
        query, used = self._embed_one("SearchVoices", FACE, request.face, deadline)
        response = self._search("SearchVoices", VOICE, query, request, deadline)
        response.query_face.CopyFrom(face_used_pb(used))
        return response

    @rpc
    def Match(self, request, context, deadline):
        _require(request.HasField("probe"), "probe is required")
        n = len(request.candidates)
        _require(2 <= n <= MAX_CANDIDATES, f"2..{MAX_CANDIDATES} candidates are needed, got {n}")
        medium = request.probe.WhichOneof("kind")
        _require(medium is not None, "probe has no audio or image")
        want = "image" if medium == "audio" else "audio"
        for i, c in enumerate(request.candidates):
            _require(c.WhichOneof("kind") == want, f"candidate {i} must be {want} (the other modality of the probe)")
        probe_space, space = (VOICE, FACE) if medium == "audio" else (FACE, VOICE)
        probe, probe_face = self._embed_one("Match", probe_space, getattr(request.probe, medium), deadline)
        faces = [probe_face] if probe_face is not None else []
        x = self._decode_all("Match", space, list(request.candidates), [f"candidate {i}" for i in range(n)], faces,
                             deadline)
        cands = self._embed_all("Match", space, x, deadline)
        dist = np.linalg.norm(cands.astype(np.float64) - probe.astype(np.float64), axis=1)
        order = np.argsort(dist, kind="stable")
        return pb.MatchResponse(ranking=[pb.RankedCandidate(index=int(i), distance=float(dist[i]),
                                                            score=_score(float(dist[i]), "l2")) for i in order],
                                model_version=self.embedder.version(space), faces=[face_used_pb(f) for f in faces])

    @rpc
    def ReconstructFace(self, request, context, deadline):
        _require(request.HasField("voice"), "voice is required")
        _check_top_k(request.top_k, allow_zero=True)
        feature, _ = self._embed_one("ReconstructFace", S2F_VOICE, request.voice, deadline)
        with self.metrics.timed("ReconstructFace", "embed"):
            picture = self.embedder.draw_faces(feature[None], deadline)[0]
        response = pb.ReconstructFaceResponse(png=to_png(picture), model_version=self.embedder.version(S2F_VOICE))
        if request.top_k:
            gallery = self.indexes.get(FACE_FEATURE)
            with self.metrics.timed("ReconstructFace", "search"):
                found = gallery.search(feature, request.top_k)
            response.nearest.extend(_hits(found, gallery.metric))
            response.index_version = gallery.meta.version
        return response

    @rpc
    def Embed(self, request, context, deadline):
        _require(request.HasField("media"), "media is required")
        medium = request.media.WhichOneof("kind")
        _require(medium is not None, "media has no audio or image")
        space = EMBED_SPACES[(request.space == pb.FACE_FEATURE, medium)]
        v, used = self._embed_one("Embed", space, getattr(request.media, medium), deadline)
        return pb.EmbedResponse(embedding=v.tolist(), model_version=self.embedder.version(space),
                                face=face_used_pb(used))

    @rpc
    def UpsertItems(self, request, context, deadline):
        n = len(request.items)
        _require(1 <= n <= MAX_UPSERT, f"1..{MAX_UPSERT} items per call, got {n}")
        ids = [it.item_id for it in request.items]
        _require(all(ids), "every item needs an item_id")
        _require(len(set(ids)) == n, "item_ids repeat within the call")
        by_space: dict[str, list] = {}
        for it in request.items:
            medium = it.media.WhichOneof("kind")
            _require(medium is not None, f"item {it.item_id!r} has no audio or image")
            for space in self._gallery_spaces("voice" if medium == "audio" else "face"):
                by_space.setdefault(space, []).append(it)
        # decode and embed everything before touching an index: a bad item or a failed call changes nothing
        upserts = {}
        for space, items in by_space.items():
            x = self._decode_all("UpsertItems", space, [it.media for it in items],
                                 [f"item {it.item_id!r}" for it in items], deadline=deadline)
            upserts[space] = ([Item(it.item_id, it.identity, dict(it.attributes)) for it in items],
                              self._embed_all("UpsertItems", space, x, deadline))
        actor = _actor(context)
        try:
            offset = self.indexes.upsert(upserts, actor=actor)
        except ServiceError as e:
            _audit(actor, "UpsertItems", sorted(upserts), ids, f"refused: {type(e).__name__}")
            raise
        _audit(actor, "UpsertItems", sorted(upserts), ids, "ok", offset)
        return pb.UpsertItemsResponse(upserted=n, index_size={s: self.indexes.get(s).size for s in upserts})

    @rpc
    def DeleteItems(self, request, context, deadline):
        _require(request.modality in (pb.FACE, pb.VOICE), "modality must be FACE or VOICE")
        n = len(request.item_ids)
        _require(1 <= n <= MAX_DELETE, f"1..{MAX_DELETE} item_ids per call, got {n}")
        names = self._gallery_spaces("voice" if request.modality == pb.VOICE else "face")
        ids, actor = list(request.item_ids), _actor(context)
        try:
            missing, offset = self.indexes.delete(names, ids, actor=actor)
        except ServiceError as e:
            _audit(actor, "DeleteItems", names, ids, f"refused: {type(e).__name__}")
            raise
        _audit(actor, "DeleteItems", names, ids, "ok", offset)
        return pb.DeleteItemsResponse(deleted=n - len(missing), not_found=missing)

    @rpc
    def GetIndexInfo(self, request, context, deadline):
        infos = []
        for name, g in sorted(self.indexes.galleries.items()):
            m = g.meta
            infos.append(pb.IndexInfo(name=name, version=m.version, model_version=m.model_version, size=g.size,
                                      kind=g.plan.kind, params={k: str(v) for k, v in g.plan.params.items()},
                                      recall_at_10=g.plan.recall_at_10, built_at=m.built_at, device=g.device,
                                      plan=g.plan.name or g.plan.kind, factory=g.plan.factory,
                                      bytes_per_item=g.plan.bytes_per_item, min_recall=g.plan.min_recall,
                                      memory_budget=g.plan.memory_budget, mapped=g.mapped_from is not None,
                                      placement=g.placement.how))
        groups = self.manifest.groups
        s2f = groups[SPEECH2FACE].version if SPEECH2FACE in groups else ""
        st = self.indexes.log_status()
        return pb.GetIndexInfoResponse(indexes=infos, association_model_version=groups[ASSOCIATION].version,
                                       speech2face_model_version=s2f, log=pb.GalleryLogStatus(**dataclasses.asdict(st)),
                                       frontends={n: json.dumps(frontends.to_dict(sp.frontend))
                                                  for n, sp in self.manifest.spaces.items()})


def _to_cache(v: np.ndarray, used: FaceUsed | None) -> bytes:
    """The vector, then the face it came from as JSON (nothing of the media)."""
    return v.astype(np.float32).tobytes() + (json.dumps(dataclasses.asdict(used)).encode() if used else b"")


def _from_cache(value: bytes, dim: int) -> tuple[np.ndarray, FaceUsed | None]:
    v = np.frombuffer(value[:4 * dim], np.float32)
    rest = value[4 * dim:]
    if not rest:
        return v, None
    d = json.loads(rest)
    return v, FaceUsed(tuple(d["box"]) if d["box"] is not None else None, d["score"], d["source"],
                       tuple(tuple(b) for b in d.get("faces", ())))


def _actor(context: grpc.ServicerContext) -> str:
    """Who wrote: the peer, and a fingerprint of the token it presented (never the token)."""
    token = dict(context.invocation_metadata()).get("authorization", "")
    who = f"token:{hashlib.sha256(token.encode()).hexdigest()[:12]}" if token else "anonymous"
    return f"{who}@{context.peer()}"


def _audit(actor: str, method: str, indexes: list[str], item_ids: list[str], result: str, offset: str = "") -> None:
    """One line per gallery write: who, what, when (the log record's time), never the media."""
    audit.info(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "actor": actor,
                           "method": method, "indexes": indexes, "items": len(item_ids),
                           "item_ids": item_ids[:100], "result": result, "log_offset": offset}))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise BadRequest(message)
