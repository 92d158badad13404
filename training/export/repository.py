"""Write one network into a Triton model repository: ONNX, the python-backend `model.py`, and
`config.pbtxt` variants for each place it runs."""

from __future__ import annotations

import hashlib
import io
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facevoice.service.errors import FacevoiceError
from facevoice.service.repository import NetworkEntry

TEMPLATE = Path(__file__).with_name("triton_model.py")
MAX_BATCH = 64
# fp32 max difference, ONNX vs PyTorch (issue #5), in units of the output's largest magnitude
# where that is above 1: the Speech2Face voice encoder trained on 700 speakers (issue 30) gives
# 256-D face features with entries up to about 650, which differ by 2e-4 in float32 rounding alone
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Network:
    """One exported network: a module with one float32 input and one float32 output."""

    name: str
    module: nn.Module
    input: str
    output: str
    input_dims: tuple[int, ...]  # per item, without the batch dimension
    # the parity check's input sampler: (rng, batch) -> float32 [batch, *input_dims] shaped like
    # what the network sees in service. A trained network can map off-distribution noise to
    # outputs 10x its usual scale, where fp32 rounding alone passes 1e-4. Default: N(0, 1).
    probe: Callable[[np.random.Generator, int], np.ndarray] | None = None


def to_onnx(net: Network) -> tuple[bytes, tuple[int, ...]]:
    """ONNX bytes with a dynamic batch dimension, and the per-item output dims."""
    net.module.eval()
    example = torch.randn(2, *net.input_dims)
    with torch.no_grad():
        out_dims = tuple(net.module(example).shape[1:])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net.module, (example,), buf, input_names=[net.input], output_names=[net.output],
                          dynamic_axes={net.input: {0: "batch"}, net.output: {0: "batch"}},
                          opset_version=17, dynamo=False)
    return buf.getvalue(), out_dims


def parity(net: Network, onnx_bytes: bytes, batch: int = 3, seed: int = 0) -> float:
    """Max abs difference between onnxruntime and PyTorch on a random batch of `net.probe` inputs."""
    return parity_and_scale(net, onnx_bytes, batch, seed)[0]


def parity_and_scale(net: Network, onnx_bytes: bytes, batch: int = 3, seed: int = 0) -> tuple[float, float]:
    """`parity`, and the largest output magnitude it is measured against (float32 keeps
    relative precision, so the tolerance scales with it where it is above 1)."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    x = torch.from_numpy(np.ascontiguousarray(
        net.probe(rng, batch) if net.probe else rng.standard_normal((batch, *net.input_dims)), dtype=np.float32))
    with torch.no_grad():
        ref = net.module(x).numpy()
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    out = session.run([net.output], {net.input: x.numpy()})[0]
    return float(np.abs(out - ref).max()), float(np.abs(ref).max())


def config_pbtxt(name: str, backend: str, kind: str, net: Network, out_dims: tuple[int, ...],
                 instances: int = 1) -> str:
    """Triton model configuration (protobuf text format)."""
    def dims(d: tuple[int, ...]) -> str:
        return ", ".join(str(x) for x in d)

    preferred = [b for b in (4, 8, 16, 32) if b <= MAX_BATCH]
    return f"""name: "{name}"
backend: "{backend}"
max_batch_size: {MAX_BATCH}
input [
  {{ name: "{net.input}" data_type: TYPE_FP32 dims: [ {dims(net.input_dims)} ] }}
]
output [
  {{ name: "{net.output}" data_type: TYPE_FP32 dims: [ {dims(out_dims)} ] }}
]
dynamic_batching {{
  preferred_batch_size: [ {dims(tuple(preferred))} ]
  max_queue_delay_microseconds: 500
}}
instance_group [ {{ count: {instances} kind: {kind} }} ]
version_policy: {{ latest: {{ num_versions: 2 }} }}
"""


# config.pbtxt is the NGC image's (onnxruntime backend); configs/ holds the others, chosen with
# `tritonserver --model-config-name=NAME`.
VARIANTS = {"gpu": ("onnxruntime", "KIND_GPU"), "cpu": ("onnxruntime", "KIND_CPU"),
            "python": ("python", "KIND_CPU")}


def write_network(repo: Path, net: Network, version: int, default: str) -> NetworkEntry:
    """Export `net` as `repo/NAME/VERSION/`; returns its manifest entry."""
    onnx_bytes, out_dims = to_onnx(net)
    diff, scale = parity_and_scale(net, onnx_bytes)
    if not diff <= PARITY_TOLERANCE * max(1.0, scale):
        raise FacevoiceError(f"{net.name}: onnxruntime differs from PyTorch by {diff:.2e} at outputs up to "
                             f"{scale:.3g} (> {PARITY_TOLERANCE} x max(1, that))")
    model_dir = repo / net.name
    version_dir = model_dir / str(version)
    if version_dir.exists():
        shutil.rmtree(version_dir)
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(onnx_bytes)
    shutil.copyfile(TEMPLATE, version_dir / "model.py")
    (model_dir / "configs").mkdir(exist_ok=True)
    for variant, (backend, kind) in VARIANTS.items():
        text = config_pbtxt(net.name, backend, kind, net, out_dims)
        (model_dir / "configs" / f"{variant}.pbtxt").write_text(text)
        if variant == default:
            (model_dir / "config.pbtxt").write_text(text)
    return NetworkEntry(net.name, version, net.input, net.output, tuple(net.input_dims), tuple(out_dims),
                        hashlib.sha256(onnx_bytes).hexdigest(), diff)


def next_version(repo: Path, names: list[str]) -> int:
    """One more than the highest numbered version any of these models has."""
    found = [int(p.name) for n in names if (repo / n).is_dir() for p in (repo / n).iterdir() if p.name.isdigit()]
    return max(found, default=0) + 1
