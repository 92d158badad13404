"""A tiny trained stack for the serving tests: toy corpus -> association + Speech2Face runs ->
exported model repository -> published indexes. Built once per session (about a minute)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.toy_corpus import TINY, build_toy_corpus

S2F_TINY = ("face.size=32", "face.widths=[4, 8, 8, 16, 16]", "face.batch_norm=true", "face.fc=16",
            "face.steps=30", "face.batch=16", "face.dropout=0.0", "face.attributes=['gender']",
            "decoder.first_layer=16", "decoder.size=32", "decoder.base=4", "decoder.widths=[16, 8, 8, 8]",
            "decoder.steps=10", "decoder.batch=16", "voice.seconds=1.0", "voice.widths=[4, 4, 8, 8, 8, 8, 16, 16, 16]",
            "train.batch=8", "train.iterations=10", "train.eval_every=10", "train.checkpoint_every=10",
            "train.attributes=['gender']")  # the toy corpus has one age group


@dataclass(frozen=True)
class Stack:
    corpus: Path
    association: Path
    s2f: Path
    repo: Path
    index_root: Path


def train_s2f_stack(corpus: Path, out: Path, cache: Path, sets: tuple[str, ...] = S2F_TINY) -> Path:
    """Speech2Face's three networks trained tiny on CORPUS under OUT; the voice encoder's run."""
    from facevoice.training.speech2face.decoder import TrainFaceDecoderOptions, train_face_decoder
    from facevoice.training.speech2face.features import TrainFaceFeaturesOptions, train_face_features
    from facevoice.training.speech2face.train import TrainS2FOptions, train_s2f

    common = dict(corpus=corpus, workers=1, no_progress=True, threads=2, cache_dir=cache, set=sets)
    face_net, decoder = out / "face" / "face_net.pt", out / "decoder" / "decoder.pt"
    train_face_features(TrainFaceFeaturesOptions(**common, out=face_net.parent))
    train_face_decoder(TrainFaceDecoderOptions(**common, out=decoder.parent, face_net=face_net))
    train_s2f(TrainS2FOptions(**common, out=out / "voice", face_net=face_net, decoder=decoder))
    return out / "voice"


def build_stack(out: Path) -> Stack:
    from facevoice.service.build import IndexBuildOptions, index_build
    from facevoice.training.association.train import TrainAssociationOptions, train_association
    from facevoice.training.export.command import ExportOptions, export_repository

    corpus = build_toy_corpus(out / "corpus", canonical=True)
    assoc = out / "assoc"
    train_association(TrainAssociationOptions(corpus=corpus, workers=1, no_progress=True, threads=2, config="small",
                                              direction="both", out=assoc,
                                              set=(*TINY, "train.iterations=20", "train.eval_every=20")))
    s2f = train_s2f_stack(corpus, out / "s2f", out / "s2f-cache")
    repo = out / "model_repo"
    export_repository(ExportOptions(association=assoc, s2f=s2f, out=repo, default_config="cpu"))
    index_root = out / "indexes"
    index_build(IndexBuildOptions(gallery=corpus / "manifest.csv", model_repo=repo, out=index_root, no_progress=True))
    return Stack(corpus, assoc, s2f, repo, index_root)


def copy_indexes(stack: Stack, out: Path) -> Path:
    """A private index root (tests that publish versions must not touch the shared one)."""
    import shutil

    shutil.copytree(stack.index_root, out, ignore=shutil.ignore_patterns(".build"))
    return out


def start_service(stack: Stack, index_root: Path | None = None, **settings):
    """The real gRPC server on free loopback ports; returns (Running, stub). Without `index_root`
    it serves a private copy of the stack's indexes, so its gallery writes (and their write log)
    reach no other test."""
    import uuid

    import grpc

    from facevoice.service.serve import Running, ServeConfig
    from facevoice.v1 import facevoice_pb2_grpc

    if index_root is None:
        index_root = copy_indexes(stack, stack.index_root.parent / f"indexes-{uuid.uuid4().hex[:8]}")
    cfg = ServeConfig(model_repo=stack.repo, index_root=index_root, host="127.0.0.1", port=0,
                      metrics_port=0, grace_s=1.0, **settings)
    running = Running(cfg)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}",
                                    options=[("grpc.max_send_message_length", 100 << 20)])
    return running, facevoice_pb2_grpc.FaceVoiceStub(channel)


def media(stack: Stack, identity: str, modality: str, k: int = 0) -> bytes:
    return (stack.corpus / identity / f"{k}.{'wav' if modality == 'voice' else 'png'}").read_bytes()
