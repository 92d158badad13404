"""A tiny trained stack for the serving tests: toy corpus -> association + Speech2Face runs ->
exported model repository -> published indexes. Built once per session (about a minute)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facevoice.cli import main
from tests.toy_corpus import TINY, build_toy_corpus

S2F_TINY = ["face.size=32", "face.widths=[4, 8, 8, 16, 16]", "face.batch_norm=true", "face.fc=16",
            "face.steps=30", "face.batch=16", "face.dropout=0.0", "face.attributes=['gender']",
            "decoder.first_layer=16", "decoder.size=32", "decoder.base=4", "decoder.widths=[16, 8, 8, 8]",
            "decoder.steps=10", "decoder.batch=16", "voice.seconds=1.0", "voice.widths=[4, 4, 8, 8, 8, 8, 16, 16, 16]",
            "train.batch=8", "train.iterations=10", "train.eval_every=10", "train.checkpoint_every=10",
            "train.attributes=['gender']"]  # the toy corpus has one age group


@dataclass(frozen=True)
class Stack:
    corpus: Path
    association: Path
    s2f: Path
    repo: Path
    index_root: Path


def _sets(values: list[str]) -> list[str]:
    return [a for s in values for a in ("--set", s)]


def build_stack(out: Path) -> Stack:
    corpus = build_toy_corpus(out / "corpus", canonical=True)
    common = ["--corpus", str(corpus), "--workers", "1", "--no-progress", "--threads", "2"]
    assoc = out / "assoc"
    assert main(["train", "association", *common, "--config", "small", "--direction", "both", "--out", str(assoc),
                 *_sets([*TINY, "train.iterations=20", "train.eval_every=20"])]) == 0
    s2f = out / "s2f"
    cache = ["--cache-dir", str(out / "s2f-cache")]
    assert main(["train", "face-features", *common, *cache, "--out", str(s2f / "face"), *_sets(S2F_TINY)]) == 0
    assert main(["train", "face-decoder", *common, *cache, "--out", str(s2f / "decoder"),
                 "--face-net", str(s2f / "face" / "face_net.pt"), *_sets(S2F_TINY)]) == 0
    assert main(["train", "s2f", *common, *cache, "--out", str(s2f / "voice"), "--face-net",
                 str(s2f / "face" / "face_net.pt"), "--decoder", str(s2f / "decoder" / "decoder.pt"),
                 *_sets(S2F_TINY)]) == 0
    repo = out / "model_repo"
    assert main(["export", "--association", str(assoc), "--s2f", str(s2f / "voice"), "--out", str(repo),
                 "--default-config", "cpu"]) == 0
    index_root = out / "indexes"
    assert main(["index", "build", "--gallery", str(corpus / "manifest.csv"), "--model-repo", str(repo),
                 "--out", str(index_root), "--no-progress"]) == 0
    return Stack(corpus, assoc, s2f / "voice", repo, index_root)


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
