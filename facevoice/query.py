"""`facevoice query faces|voices|match|reconstruct|info --server HOST:PORT ...`: the gRPC client.

One function per verb (`query_faces`, `query_voices`, `query_match`, `query_reconstruct`,
`query_info`), each taking `QueryOptions` and returning a result whose summary is the readable
answer: each hit with its identity, attributes, score and distance. A call the service refuses,
or a service that cannot be reached, raises `CallFailed` (exit 1); an input that cannot be read,
a `UsageError` (exit 2)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from facevoice.cli import options
from facevoice.service.errors import FacevoiceError, UsageError
from facevoice.v1 import facevoice_pb2 as pb
from facevoice.v1 import facevoice_pb2_grpc as pb_grpc


class CallFailed(FacevoiceError):
    """The service answered with an error status, or could not be reached: `code` is the gRPC
    status's name (UNAUTHENTICATED, INVALID_ARGUMENT, UNAVAILABLE, ...)."""

    def __init__(self, server: str, code: str, details: str):
        super().__init__(f"{server}: {code}: {details}")
        self.server, self.code, self.details = server, code, details


@dataclass(frozen=True)
class QueryOptions:
    """The arguments of every `query` verb; each verb reads the ones it has."""

    server: str = "127.0.0.1:50051"  # host:port of `facevoice serve`
    token: str | None = None  # bearer token, when the server asks for one
    tls_ca: Path | None = None  # CA certificate: connect with TLS
    timeout: float = 30.0  # deadline in seconds
    voice: Path | None = None  # faces, reconstruct: the voice; match: a voice probe against face candidates
    face: Path | None = None  # voices: the face; match: a face probe against voice candidates
    top_k: int = 5
    filter: Sequence[str] = ()  # NAME=V1,V2: keep items whose attribute NAME is one of the values
    candidates: Sequence[Path] = ()  # match: 2..100 files of the other modality
    out: Path = Path("face.png")  # reconstruct: where the face PNG goes


def add_arguments(p: argparse.ArgumentParser) -> None:
    verb = p.prog.split()[-1]
    p.add_argument("--server", default=QueryOptions.server, help="host:port of `facevoice serve`")
    p.add_argument("--token", help="bearer token, when the server asks for one")
    p.add_argument("--tls-ca", type=Path, help="CA certificate: connect with TLS")
    p.add_argument("--timeout", type=float, default=QueryOptions.timeout, help="deadline in seconds")
    if verb in ("faces", "reconstruct"):
        p.add_argument("--voice", type=Path, required=True,
                       help="a recording with speech: WAV, FLAC, Ogg/Opus, MP3, M4A/AAC, WebM, or an MP4/MKV video")
    if verb == "voices":
        p.add_argument("--face", type=Path, required=True, help="a photo with a face: JPEG, PNG, WebP or GIF")
    if verb in ("faces", "voices", "reconstruct"):
        p.add_argument("--top-k", type=int, default=QueryOptions.top_k)
    if verb in ("faces", "voices"):
        p.add_argument("--filter", action="append", default=list(QueryOptions.filter), metavar="NAME=V1,V2",
                       help="keep items whose attribute NAME is one of the values (repeatable)")
    if verb == "match":
        probe = p.add_mutually_exclusive_group(required=True)
        probe.add_argument("--voice", type=Path, help="a voice probe, against --faces")
        probe.add_argument("--face", type=Path, help="a face probe, against --voices")
        p.add_argument("--candidates", type=Path, nargs="+", required=True, help="2..100 files of the other modality")
    if verb == "reconstruct":
        p.add_argument("--out", type=Path, default=QueryOptions.out)


def connect(server: str, tls_ca: Path | None = None) -> pb_grpc.FaceVoiceStub:
    """A client of the service at SERVER (host:port), over TLS trusting the CA certificate TLS_CA when given."""
    channel_options = [("grpc.max_send_message_length", 100 << 20), ("grpc.max_receive_message_length", 100 << 20)]
    if tls_ca:
        creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
        return pb_grpc.FaceVoiceStub(grpc.secure_channel(server, creds, channel_options))
    return pb_grpc.FaceVoiceStub(grpc.insecure_channel(server, channel_options))


def filters(specs: Sequence[str]) -> list[pb.AttributeFilter]:
    out = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name or not values:
            raise UsageError(f"--filter {spec!r}: expected NAME=V1,V2")
        out.append(pb.AttributeFilter(name=name, values=values.split(",")))
    return out


@dataclass(frozen=True)
class Hit:
    item_id: str
    identity: str
    score: float
    distance: float
    attributes: dict[str, str]

    @classmethod
    def of(cls, h: pb.Hit) -> Hit:
        return cls(h.item_id, h.identity, h.score, h.distance, dict(h.attributes))


def format_hits(hits: Sequence[Hit]) -> str:
    lines = [f"  {'rank':>4}  {'item':<24} {'identity':<12} {'score':>7} {'distance':>9}  attributes"]
    for rank, h in enumerate(hits, 1):
        attrs = " ".join(f"{k}={v}" for k, v in sorted(h.attributes.items()))
        lines.append(f"  {rank:>4}  {h.item_id:<24} {h.identity:<12} {h.score:>7.4f} {h.distance:>9.4f}  {attrs}")
    return "\n".join(lines)


@dataclass(frozen=True)
class SearchResult:
    """What SearchFaces or SearchVoices answered."""

    what: str  # faces | voices
    hits: list[Hit]  # nearest first
    model_version: str
    index_version: str
    cached: bool

    def summary(self) -> str:
        cached = ", cached" if self.cached else ""
        return (f"{len(self.hits)} {self.what} (model {self.model_version}, index {self.index_version}{cached})\n"
                + format_hits(self.hits))


QueryFacesResult = QueryVoicesResult = SearchResult


@dataclass(frozen=True)
class QueryMatchResult:
    model_version: str
    ranking: list[tuple[Path, float, float]]  # (candidate, score, distance), best first

    def summary(self) -> str:
        return "\n".join([f"ranking of {len(self.ranking)} candidates (model {self.model_version}), best first:",
                          *(f"  {c}  score {s:.4f}  distance {d:.4f}" for c, s, d in self.ranking)])


@dataclass(frozen=True)
class QueryReconstructResult:
    out: Path  # the Speech2Face face, a PNG
    model_version: str
    nearest: list[Hit]  # the nearest gallery faces by face feature

    def summary(self) -> str:
        return (f"Speech2Face face -> {self.out} (model {self.model_version}); nearest gallery faces by face feature:\n"
                + format_hits(self.nearest))


@dataclass(frozen=True)
class QueryInfoResult:
    association_model_version: str
    speech2face_model_version: str  # "" when the release serves no Speech2Face
    indexes: list[pb.IndexInfo]  # one per served index
    log: pb.GalleryLogStatus  # the gallery write log as this replica sees it

    def summary(self) -> str:
        lines = [f"association model {self.association_model_version}, speech2face model "
                 f"{self.speech2face_model_version or '-'}"]
        for i in self.indexes:
            lines.append(f"  {i.name:<12} {i.version}  {i.size:>8} items  {i.factory or i.kind} {dict(i.params)}  "
                         f"recall@10 {i.recall_at_10:.3f} (target {i.min_recall:.2f})  {i.bytes_per_item:.0f} B/item  "
                         f"{i.device}{' mapped' if i.mapped else ''}  built {i.built_at}")
        g = self.log
        lines.append(f"  gallery log ({g.kind}): {g.state}, applied {g.applied or '-'} of {g.head or '-'}, lagging "
                     f"{g.lag_entries} entries / {g.lag_seconds:.1f} s; writes {'taken' if g.writes else 'refused'}"
                     + (f"\n    {g.error}" if g.error else ""))
        return "\n".join(lines)


def _read(path: Path | None, what: str) -> bytes:
    if path is None:
        raise UsageError(f"needs a {what}")
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read input: {e}") from e


def _call(opts: QueryOptions, method: str, request):
    """The service's METHOD on REQUEST, with the options' deadline and token."""
    stub = connect(opts.server, opts.tls_ca)
    metadata = [("authorization", f"Bearer {opts.token}")] if opts.token else None
    try:
        return getattr(stub, method)(request, timeout=opts.timeout, metadata=metadata)
    except grpc.RpcError as e:
        raise CallFailed(opts.server, e.code().name, e.details()) from e


def query_faces(opts: QueryOptions) -> SearchResult:
    """`query faces`: the gallery faces nearest the voice (SearchFaces)."""
    request = pb.SearchFacesRequest(voice=pb.Audio(data=_read(opts.voice, "voice")), top_k=opts.top_k,
                                    filters=filters(opts.filter))
    r = _call(opts, "SearchFaces", request)
    return SearchResult("faces", [Hit.of(h) for h in r.hits], r.model_version, r.index_version, r.cached)


def query_voices(opts: QueryOptions) -> SearchResult:
    """`query voices`: the gallery voices nearest the face (SearchVoices)."""
    request = pb.SearchVoicesRequest(face=pb.Image(data=_read(opts.face, "face")), top_k=opts.top_k,
                                     filters=filters(opts.filter))
    r = _call(opts, "SearchVoices", request)
    return SearchResult("voices", [Hit.of(h) for h in r.hits], r.model_version, r.index_version, r.cached)


def query_match(opts: QueryOptions) -> QueryMatchResult:
    """`query match`: the candidates ranked against one probe (Match), a voice against faces or a
    face against voices."""
    if (opts.voice is None) == (opts.face is None):
        raise UsageError("needs one probe: a voice (against face candidates) or a face (against voice candidates)")
    if opts.voice is not None:
        probe = pb.Media(audio=pb.Audio(data=_read(opts.voice, "voice")))
        cands = [pb.Media(image=pb.Image(data=_read(c, "face"))) for c in opts.candidates]
    else:
        probe = pb.Media(image=pb.Image(data=_read(opts.face, "face")))
        cands = [pb.Media(audio=pb.Audio(data=_read(c, "voice"))) for c in opts.candidates]
    r = _call(opts, "Match", pb.MatchRequest(probe=probe, candidates=cands))
    return QueryMatchResult(r.model_version, [(opts.candidates[c.index], c.score, c.distance) for c in r.ranking])


def query_reconstruct(opts: QueryOptions) -> QueryReconstructResult:
    """`query reconstruct`: the Speech2Face face of the voice, written to `out` as a PNG, and the
    gallery faces nearest it by face feature (ReconstructFace)."""
    request = pb.ReconstructFaceRequest(voice=pb.Audio(data=_read(opts.voice, "voice")), top_k=opts.top_k)
    r = _call(opts, "ReconstructFace", request)
    Path(opts.out).write_bytes(r.png)
    return QueryReconstructResult(Path(opts.out), r.model_version, [Hit.of(h) for h in r.nearest])


def query_info(opts: QueryOptions) -> QueryInfoResult:
    """`query info`: the served indexes, model versions and gallery log (GetIndexInfo)."""
    r = _call(opts, "GetIndexInfo", pb.GetIndexInfoRequest())
    return QueryInfoResult(r.association_model_version, r.speech2face_model_version, list(r.indexes), r.log)


QUERIES = {"faces": query_faces, "voices": query_voices, "match": query_match, "reconstruct": query_reconstruct,
           "info": query_info}


def run(args: argparse.Namespace) -> int:
    print(QUERIES[args.subverb](options(QueryOptions, args)).summary())
    return 0
