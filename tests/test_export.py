"""`facevoice export`: the model repository's layout, configs, manifest, and ONNX == PyTorch."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest
import torch

from facevoice.service.errors import FormatError
from facevoice.service.repository import Manifest, read_repository_manifest
from facevoice.training.association.checkpoints import load_run
from facevoice.training.export.command import ExportOptions, FaceFeatures, export_repository
from facevoice.training.speech2face.checkpoints import load_s2f_run

NETWORKS = ("face_encoder", "voice_encoder", "s2f_voice_encoder", "face_features", "face_decoder")


def _torch_networks(stack):
    model, _, _ = load_run(stack.association, "best.pt", torch.device("cpu"))
    encoder, net, decoder, _, _ = load_s2f_run(stack.s2f, "best.pt", torch.device("cpu"))
    return {"face_encoder": model.face_encoder, "voice_encoder": model.voice_encoder,
            "s2f_voice_encoder": encoder, "face_features": FaceFeatures(net).eval(), "face_decoder": decoder}


def test_repository_layout_and_configs(stack):
    v = read_repository_manifest(stack.repo).triton_version
    for name in NETWORKS:
        d = stack.repo / name
        assert (d / str(v) / "model.onnx").stat().st_size > 0
        assert (d / str(v) / "model.py").read_text().startswith('"""Triton python-backend model')
        configs = {p.stem: p.read_text() for p in (d / "configs").glob("*.pbtxt")}
        assert set(configs) == {"gpu", "cpu", "python"}
        assert (d / "config.pbtxt").read_text() == configs["cpu"]  # --default-config cpu
        for variant, backend, kind in (("gpu", "onnxruntime", "KIND_GPU"), ("cpu", "onnxruntime", "KIND_CPU"),
                                       ("python", "python", "KIND_CPU")):
            text = configs[variant]
            assert f'name: "{name}"' in text and f'backend: "{backend}"' in text and f"kind: {kind}" in text
            assert "dynamic_batching" in text and "max_batch_size: 64" in text
            assert re.search(r"preferred_batch_size: \[ 4, 8, 16, 32 \]", text)
    assert (stack.repo / f"facevoice.v{v}.json").read_text() == (stack.repo / "facevoice.json").read_text()
    assert not [p for p in stack.repo.iterdir() if p.is_dir() and p.name not in NETWORKS]  # Triton reads every dir


def test_every_network_matches_pytorch(stack):
    manifest = read_repository_manifest(stack.repo)
    entries = {**manifest.groups["association"].networks, **manifest.groups["speech2face"].networks}
    nets = _torch_networks(stack)
    rng = np.random.default_rng(1)
    for name, e in entries.items():
        x = rng.standard_normal((5, *e.input_dims), dtype=np.float32)
        with torch.no_grad():
            ref = nets[name].eval()(torch.from_numpy(x)).numpy()
        path = stack.repo / name / str(e.triton_version) / "model.onnx"
        out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run([e.output], {e.input: x})[0]
        assert out.shape == (5, *e.output_dims)
        assert np.abs(out - ref).max() <= 1e-4, name
        assert e.parity_max_abs_diff <= 1e-4


def test_a_second_export_is_the_next_version_and_keeps_the_first(stack, tmp_path):
    repo = tmp_path / "repo"
    export_repository(ExportOptions(association=stack.association, out=repo))
    result = export_repository(ExportOptions(association=stack.association, out=repo))
    assert sorted(p.name for p in (repo / "face_encoder").iterdir() if p.name.isdigit()) == ["1", "2"]
    first, second = (Manifest.from_json((repo / f"facevoice.v{v}.json").read_text()) for v in (1, 2))
    assert read_repository_manifest(repo).triton_version == 2 and result.manifest.triton_version == 2
    # same weights, same content hash: indexes built by version 1 stay valid
    assert first.groups["association"].version == second.groups["association"].version
    assert "speech2face" not in second.groups
    assert "exported Triton version 2" in result.summary()


def test_exporting_a_directory_that_is_not_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(FormatError, match="no checkpoint"):
        export_repository(ExportOptions(association=tmp_path, out=tmp_path / "repo"))


def test_parity_runs_on_the_networks_probe_inputs():
    """The parity check feeds a network inputs like the service's (its `probe`), and the S2F probe
    is a real front-end spectrogram of audio-like input."""
    from facevoice.service.media.audio import Speech2FaceAudio
    from facevoice.training.export.command import spectrogram_probe
    from facevoice.training.export.repository import Network, parity, to_onnx

    class Cube(torch.nn.Module):  # fp32 error grows with the input's scale
        def forward(self, x):
            return (x * 1000) ** 3

    net = Network("cube", Cube(), "x", "y", (8,))
    onnx_bytes, _ = to_onnx(net)
    seen = []

    def probe(rng, n):
        seen.append(n)
        return rng.uniform(0, 1e-3, size=(n, 8)).astype(np.float32)

    assert parity(Network("cube", Cube(), "x", "y", (8,), probe=probe), onnx_bytes) <= 1e-4 and seen == [3]
    # the tolerance scales with the output: parity_and_scale gives the largest output magnitude
    from facevoice.training.export.repository import parity_and_scale

    big = Network("big", Cube(), "x", "y", (8,), probe=lambda rng, n: np.full((n, 8), 0.01, np.float32))
    diff, scale = parity_and_scale(big, onnx_bytes)
    assert scale == pytest.approx(1000.0, rel=1e-5) and diff <= 1e-4 * scale
    audio = Speech2FaceAudio(seconds=1.0)
    spec = spectrogram_probe(np.random.default_rng(0), audio)
    assert spec.shape == audio.shape and spec.dtype == np.float32 and 0 < np.abs(spec).max() < 10
