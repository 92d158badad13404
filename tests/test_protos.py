"""The committed gRPC stubs are what protoc makes of the proto today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generate():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate


def test_stubs_are_fresh(tmp_path):
    written = _generate()(tmp_path)
    assert {p.name for p in written} == {"facevoice_pb2.py", "facevoice_pb2.pyi", "facevoice_pb2_grpc.py"}
    for p in written:
        committed = ROOT / p.relative_to(tmp_path)
        assert committed.read_bytes() == p.read_bytes(), f"{committed} is stale: run python protos/generate.py"


def test_every_rpc_is_documented_and_present():
    """Each rpc has a comment above it in the proto; the service has exactly the issue's methods."""
    from facevoice.v1 import facevoice_pb2 as pb

    text = (ROOT / "protos" / "facevoice" / "v1" / "facevoice.proto").read_text().splitlines()
    service = pb.DESCRIPTOR.services_by_name["FaceVoice"]
    for method in service.methods:
        line = next(i for i, t in enumerate(text) if f"rpc {method.name}(" in t)
        assert text[line - 1].strip().startswith("//"), method.name
    assert set(service.methods_by_name) == {"SearchFaces", "SearchVoices", "Match", "ReconstructFace", "Embed",
                                             "UpsertItems", "DeleteItems", "GetIndexInfo"}
