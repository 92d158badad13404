"""`facevoice query faces|voices|match|reconstruct|info --server HOST:PORT ...`: the gRPC client.

Prints readable results: each hit with its identity, attributes, score and distance."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

from facevoice.service.errors import UsageError
from facevoice.v1 import facevoice_pb2 as pb
from facevoice.v1 import facevoice_pb2_grpc as pb_grpc


def add_arguments(p: argparse.ArgumentParser) -> None:
    verb = p.prog.split()[-1]
    p.add_argument("--server", default="127.0.0.1:50051", help="host:port of `facevoice serve`")
    p.add_argument("--token", help="bearer token, when the server asks for one")
    p.add_argument("--tls-ca", type=Path, help="CA certificate: connect with TLS")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    if verb in ("faces", "reconstruct"):
        p.add_argument("--voice", type=Path, required=True,
                       help="a recording with speech: WAV, FLAC, Ogg/Opus, MP3, M4A/AAC, WebM, or an MP4/MKV video")
    if verb == "voices":
        p.add_argument("--face", type=Path, required=True, help="a photo with a face: JPEG, PNG, WebP or GIF")
    if verb in ("faces", "voices", "reconstruct"):
        p.add_argument("--top-k", type=int, default=5)
    if verb in ("faces", "voices"):
        p.add_argument("--filter", action="append", default=[], metavar="NAME=V1,V2",
                       help="keep items whose attribute NAME is one of the values (repeatable)")
    if verb == "match":
        probe = p.add_mutually_exclusive_group(required=True)
        probe.add_argument("--voice", type=Path, help="a voice probe, against --faces")
        probe.add_argument("--face", type=Path, help="a face probe, against --voices")
        p.add_argument("--candidates", type=Path, nargs="+", required=True, help="2..100 files of the other modality")
    if verb == "reconstruct":
        p.add_argument("--out", type=Path, default=Path("face.png"))


def connect(args: argparse.Namespace) -> pb_grpc.FaceVoiceStub:
    options = [("grpc.max_send_message_length", 100 << 20), ("grpc.max_receive_message_length", 100 << 20)]
    if args.tls_ca:
        creds = grpc.ssl_channel_credentials(args.tls_ca.read_bytes())
        return pb_grpc.FaceVoiceStub(grpc.secure_channel(args.server, creds, options))
    return pb_grpc.FaceVoiceStub(grpc.insecure_channel(args.server, options))


def filters(specs: list[str]) -> list[pb.AttributeFilter]:
    out = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name or not values:
            raise UsageError(f"--filter {spec!r}: expected NAME=V1,V2")
        out.append(pb.AttributeFilter(name=name, values=values.split(",")))
    return out


def format_hits(hits) -> str:
    lines = [f"  {'rank':>4}  {'item':<24} {'identity':<12} {'score':>7} {'distance':>9}  attributes"]
    for rank, h in enumerate(hits, 1):
        attrs = " ".join(f"{k}={v}" for k, v in sorted(h.attributes.items()))
        lines.append(f"  {rank:>4}  {h.item_id:<24} {h.identity:<12} {h.score:>7.4f} {h.distance:>9.4f}  {attrs}")
    return "\n".join(lines)


def call(args: argparse.Namespace):
    stub, verb = connect(args), args.subverb
    kw = {"timeout": args.timeout, "metadata": [("authorization", f"Bearer {args.token}")] if args.token else None}
    if verb == "faces":
        return stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=args.voice.read_bytes()), top_k=args.top_k,
                                                      filters=filters(args.filter)), **kw)
    if verb == "voices":
        return stub.SearchVoices(pb.SearchVoicesRequest(face=pb.Image(data=args.face.read_bytes()), top_k=args.top_k,
                                                        filters=filters(args.filter)), **kw)
    if verb == "match":
        if args.voice:
            probe = pb.Media(audio=pb.Audio(data=args.voice.read_bytes()))
            cands = [pb.Media(image=pb.Image(data=c.read_bytes())) for c in args.candidates]
        else:
            probe = pb.Media(image=pb.Image(data=args.face.read_bytes()))
            cands = [pb.Media(audio=pb.Audio(data=c.read_bytes())) for c in args.candidates]
        return stub.Match(pb.MatchRequest(probe=probe, candidates=cands), **kw)
    if verb == "reconstruct":
        return stub.ReconstructFace(pb.ReconstructFaceRequest(voice=pb.Audio(data=args.voice.read_bytes()),
                                                              top_k=args.top_k), **kw)
    return stub.GetIndexInfo(pb.GetIndexInfoRequest(), **kw)


def run(args: argparse.Namespace) -> int:
    try:
        r = call(args)
    except grpc.RpcError as e:
        print(f"{args.server}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"cannot read input: {e}", file=sys.stderr)
        return 2
    verb = args.subverb
    if verb in ("faces", "voices"):
        cached = ", cached" if r.cached else ""
        print(f"{len(r.hits)} {verb} (model {r.model_version}, index {r.index_version}{cached})")
        print(format_hits(r.hits))
    elif verb == "match":
        print(f"ranking of {len(r.ranking)} candidates (model {r.model_version}), best first:")
        for c in r.ranking:
            print(f"  {args.candidates[c.index]}  score {c.score:.4f}  distance {c.distance:.4f}")
    elif verb == "reconstruct":
        args.out.write_bytes(r.png)
        print(f"Speech2Face face -> {args.out} (model {r.model_version}); nearest gallery faces by face feature:")
        print(format_hits(r.nearest))
    else:
        print(f"association model {r.association_model_version}, speech2face model "
              f"{r.speech2face_model_version or '-'}")
        for i in r.indexes:
            print(f"  {i.name:<12} {i.version}  {i.size:>8} items  {i.factory or i.kind} {dict(i.params)}  "
                  f"recall@10 {i.recall_at_10:.3f} (target {i.min_recall:.2f})  {i.bytes_per_item:.0f} B/item  "
                  f"{i.device}{' mapped' if i.mapped else ''}  built {i.built_at}")
        g = r.log
        print(f"  gallery log ({g.kind}): {g.state}, applied {g.applied or '-'} of {g.head or '-'}, lagging "
              f"{g.lag_entries} entries / {g.lag_seconds:.1f} s; writes {'taken' if g.writes else 'refused'}"
              + (f"\n    {g.error}" if g.error else ""))
    return 0
