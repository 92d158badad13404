"""`facevoice export --association RUN [--s2f RUN] --out MODEL_REPO`.

Writes every network as ONNX into a Triton model repository, checks each against PyTorch, and
writes `facevoice.json` (facevoice.service.repository): the spaces the service serves, each with
its network, media front end and the model version its indexes must match.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facevoice.service import checksums
from facevoice.service.errors import UsageError
from facevoice.service.media.audio import complex_spectrogram, power_law
from facevoice.service.media.faces import GUARD, SYNTH_DETECTOR
from facevoice.service.media.frontends import Frontend
from facevoice.service.media.image import FaceImage
from facevoice.service.repository import (
    ASSOCIATION,
    DETECTOR_FILE,
    FACE,
    FACE_FEATURE,
    S2F_VOICE,
    SPEECH2FACE,
    VOICE,
    Manifest,
    ModelGroup,
    NetworkEntry,
    Space,
    write_repository_manifest,
)
from facevoice.training.association.checkpoints import load_run
from facevoice.training.export.repository import VARIANTS, Network, next_version, write_network
from facevoice.training.speech2face.checkpoints import load_s2f_run

DECODER = "face_decoder"


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


@dataclass(frozen=True)
class SpaceSpec:
    """A space an exported group serves: its name, modality, network and front end."""

    name: str
    modality: str
    network: str
    frontend: Frontend
    indexed: bool


@dataclass(frozen=True)
class GroupSpec:
    nets: list[Network]
    metric: str
    dim: int
    spaces: list[SpaceSpec]
    info: dict


def association_networks(run: Path, checkpoint: str) -> GroupSpec:
    model, cfg, state = load_run(run, checkpoint, torch.device("cpu"))
    if model.classifier is not None:
        raise UsageError(f"{run}: a classification-network run (Table 7's baseline) scores pairs and has no "
                         "embedding space to index; export a triplet or contrastive run")
    face, voice = cfg.face.frontend(), cfg.voice.frontend()
    nets = [Network("face_encoder", model.face_encoder, "image", "embedding", (3, face.size, face.size)),
            Network("voice_encoder", model.voice_encoder, "wave", "embedding", (voice.samples,))]
    spaces = [SpaceSpec(FACE, "face", "face_encoder", face, True),
              SpaceSpec(VOICE, "voice", "voice_encoder", voice, True)]
    return GroupSpec(nets, "l2", cfg.embedding.dim, spaces, {"direction": state.get("direction")})


def s2f_networks(run: Path, checkpoint: str) -> GroupSpec:
    encoder, net, decoder, cfg, _ = load_s2f_run(run, checkpoint, torch.device("cpu"))
    audio, face = cfg.voice.frontend(), cfg.face.frontend()
    nets = [Network("s2f_voice_encoder", encoder, "spectrogram", "face_feature", audio.shape,
                    probe=lambda rng, n: np.stack([spectrogram_probe(rng, audio) for _ in range(n)])),
            Network("face_features", FaceFeatures(net), "image", "face_feature", (3, face.size, face.size)),
            Network(DECODER, decoder, "face_feature", "image", (cfg.face.fc,))]
    spaces = [SpaceSpec(S2F_VOICE, "voice", "s2f_voice_encoder", audio, False),
              SpaceSpec(FACE_FEATURE, "face", "face_features", face, True)]
    return GroupSpec(nets, "cosine", cfg.face.fc, spaces, {"image_size": cfg.decoder.size})


def spectrogram_probe(rng: np.random.Generator, audio) -> np.ndarray:
    """A spectrogram from the real front end of audio-like input (tones plus noise, peak < 1)."""
    t = np.arange(audio.samples) / audio.sample_rate
    tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) for f in rng.uniform(80, 4000, size=4))
    x = 0.05 * tones + 0.02 * rng.standard_normal(audio.samples)
    return power_law(complex_spectrogram(x, audio), audio.power)


def ship_face_detector(out: Path, spaces: dict[str, Space]) -> dict[str, Space]:
    """Copy the corpus-face detector the face spaces use into the repository (beside
    facevoice.json, where Triton looks for no model) and name it there, so the repository
    carries, and checksums, everything its front ends run."""
    shipped = {}
    for name, space in spaces.items():
        source = synth_detector_of(space.frontend)
        if source is not None:
            shutil.copyfile(source, Path(out) / DETECTOR_FILE)
            space = replace(space, frontend=replace(space.frontend, synth_detector=DETECTOR_FILE))
        shipped[name] = space
    return shipped


def synth_detector_of(frontend: Frontend) -> Path | None:
    """The corpus-face detector file a front end runs (its own, or the package's), or None."""
    if isinstance(frontend, FaceImage) and "synth" in (frontend.detector or GUARD):
        return Path(frontend.synth_detector or SYNTH_DETECTOR)
    return None


def detector_digest(spec: GroupSpec) -> str:
    """The SHA-256 of the corpus-face detector a group's face front end runs ("" for none)."""
    paths = [p for p in map(synth_detector_of, (s.frontend for s in spec.spaces)) if p is not None]
    return hashlib.sha256(paths[0].read_bytes()).hexdigest() if paths else ""


def model_version(entries: list[NetworkEntry], detector: str = "") -> str:
    """Content hash of a model group's ONNX files and the face detector its front end runs: what
    an index built by it records."""
    return hashlib.sha256(("".join(e.sha256 for e in entries) + detector).encode()).hexdigest()[:16]


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    default = args.default_config or ("gpu" if torch.cuda.is_available() else "cpu")
    specs = {ASSOCIATION: association_networks(args.association, args.checkpoint)}
    if args.s2f:
        specs[SPEECH2FACE] = s2f_networks(args.s2f, args.checkpoint)
    version = args.version or next_version(args.out, [n.name for spec in specs.values() for n in spec.nets])
    runs = {ASSOCIATION: args.association, SPEECH2FACE: args.s2f}
    groups, spaces, lines = {}, {}, []
    for name, spec in specs.items():
        entries = {n.name: write_network(args.out, n, version, default) for n in spec.nets}
        group = ModelGroup(model_version(list(entries.values()), detector_digest(spec)), str(runs[name]),
                           spec.metric, spec.dim, entries, spec.info)
        groups[name] = group
        spaces.update({s.name: Space(s.name, s.modality, name, entries[s.network], s.frontend, group.version,
                                     spec.metric, spec.dim, s.indexed) for s in spec.spaces})
        lines += [f"  {e.model:<18} {e.input}{list(e.input_dims)} -> {e.output}{list(e.output_dims)}  "
                  f"max |onnx - torch| {e.parity_max_abs_diff:.1e}" for e in entries.values()]
    spaces = ship_face_detector(args.out, spaces)
    manifest = Manifest(version, default, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), groups, spaces,
                        DECODER if SPEECH2FACE in groups else None)
    write_repository_manifest(args.out, manifest)
    files = checksums.write(args.out)  # every file of the repository, checked before it is served
    print(f"exported Triton version {version} to {args.out} in {time.perf_counter() - start:.1f} s "
          f"(config.pbtxt = {default}; others in each model's configs/)")
    print("\n".join(lines))
    print(f"  {len(files)} files' SHA-256 in {args.out / checksums.NAME}")
    for name, group in groups.items():
        print(f"  {name} model version {group.version}")
    return 0
