"""`facevoice export --association RUN [--s2f RUN] --out MODEL_REPO`.

Writes every network as ONNX into a Triton model repository, checks each against PyTorch, and
writes `facevoice.json`: the manifest the service reads (tensor names, media front ends, and the
model version its indexes must match).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facevoice.service.media.audio import complex_spectrogram, power_law
from facevoice.training.export.repository import VARIANTS, Network, next_version, write_network

MANIFEST = "facevoice.json"


class FaceFeatures(nn.Module):
    """FaceNet up to fc7: the face feature v_f (what the S2F face index holds)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.net.features(faces)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--association", type=Path, required=True, help="a `train association` run")
    p.add_argument("--s2f", type=Path, help="a `train s2f` run (adds the ReconstructFace networks)")
    p.add_argument("--out", type=Path, required=True, help="model repository (created or extended)")
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--version", type=int, help="Triton version number (default: one more than the highest)")
    p.add_argument("--default-config", choices=sorted(VARIANTS),
                   help="which variant becomes config.pbtxt (default: gpu when CUDA is here, else cpu)")


def association_networks(run: Path, checkpoint: str) -> tuple[list[Network], dict]:
    from facevoice.training.association.evaluate import load_run

    model, cfg, state = load_run(run, checkpoint, torch.device("cpu"))
    face, voice = cfg.face.frontend(), cfg.voice.frontend()
    nets = [Network("face_encoder", model.face_encoder, "image", "embedding", (3, face.size, face.size)),
            Network("voice_encoder", model.voice_encoder, "wave", "embedding", (voice.samples,))]
    meta = {"run": str(run), "direction": state.get("direction"),
            "dim": cfg.embedding.dim, "metric": "l2",
            "frontends": {"face_encoder": asdict(face), "voice_encoder": asdict(voice)}}
    return nets, meta


def s2f_networks(run: Path, checkpoint: str) -> tuple[list[Network], dict]:
    from facevoice.training.speech2face.evaluate import load_s2f_run

    encoder, net, decoder, cfg, _ = load_s2f_run(run, checkpoint, torch.device("cpu"))
    audio, face = cfg.voice.frontend(), cfg.face.frontend()
    nets = [Network("s2f_voice_encoder", encoder, "spectrogram", "face_feature", audio.shape,
                    probe=lambda rng, n: np.stack([spectrogram_probe(rng, audio) for _ in range(n)])),
            Network("face_features", FaceFeatures(net), "image", "face_feature", (3, face.size, face.size)),
            Network("face_decoder", decoder, "face_feature", "image", (cfg.face.fc,))]
    meta = {"run": str(run), "dim": cfg.face.fc, "metric": "cosine", "image_size": cfg.decoder.size,
            "frontends": {"s2f_voice_encoder": asdict(audio), "face_features": asdict(face)}}
    return nets, meta


def spectrogram_probe(rng: np.random.Generator, audio) -> np.ndarray:
    """A spectrogram from the real front end of audio-like input (tones plus noise, peak < 1)."""
    t = np.arange(audio.samples) / audio.sample_rate
    tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) for f in rng.uniform(80, 4000, size=4))
    x = 0.05 * tones + 0.02 * rng.standard_normal(audio.samples)
    return power_law(complex_spectrogram(x, audio), audio.power)


def model_version(entries: list[dict]) -> str:
    """Content hash of a model group's ONNX files: what an index built by it records."""
    return hashlib.sha256("".join(e["sha256"] for e in entries).encode()).hexdigest()[:16]


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    default = args.default_config or ("gpu" if torch.cuda.is_available() else "cpu")
    groups = {"association": association_networks(args.association, args.checkpoint)}
    if args.s2f:
        groups["speech2face"] = s2f_networks(args.s2f, args.checkpoint)
    names = [n.name for nets, _ in groups.values() for n in nets]
    version = args.version or next_version(args.out, names)
    manifest = {"format": 1, "triton_version": version, "default_config": default,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    lines = []
    for group, (nets, meta) in groups.items():
        entries = [write_network(args.out, n, version, default) for n in nets]
        manifest[group] = {**meta, "version": model_version(entries), "networks": {e["model"]: e for e in entries}}
        lines += [f"  {e['model']:<18} {e['input']}{e['input_dims']} -> {e['output']}{e['output_dims']}  "
                  f"max |onnx - torch| {e['parity_max_abs_diff']:.1e}" for e in entries]
    text = json.dumps(manifest, indent=2)
    # every export's manifest stays (rollback); a directory here would be read by Triton as a model
    (args.out / f"facevoice.v{version}.json").write_text(text)
    tmp = args.out / f".{MANIFEST}.tmp"
    tmp.write_text(text)
    tmp.replace(args.out / MANIFEST)  # readers never see half a manifest
    print(f"exported Triton version {version} to {args.out} in {time.perf_counter() - start:.1f} s "
          f"(config.pbtxt = {default}; others in each model's configs/)")
    print("\n".join(lines))
    for group in groups:
        print(f"  {group} model version {manifest[group]['version']}")
    return 0
