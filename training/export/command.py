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

from facevoice.cli import options
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


@dataclass(frozen=True)
class ExportOptions:
    association: Path  # a `train association` run
    out: Path  # the model repository (created or extended)
    s2f: Path | None = None  # a `train s2f` run (adds the ReconstructFace networks)
    checkpoint: str = "best.pt"  # of each run
    version: int | None = None  # Triton version number (default: one more than the highest)
    default_config: str | None = None  # the variant config.pbtxt becomes (default: gpu with CUDA here, else cpu)


@dataclass(frozen=True)
class ExportResult:
    out: Path
    manifest: Manifest  # what facevoice.json now says
    files: int  # files whose SHA-256 checksums.sha256 lists
    seconds: float

    def summary(self) -> str:
        m = self.manifest
        entries = [e for g in m.groups.values() for e in g.networks.values()]
        return "\n".join([
            f"exported Triton version {m.triton_version} to {self.out} in {self.seconds:.1f} s "
            f"(config.pbtxt = {m.default_config}; others in each model's configs/)",
            *[f"  {e.model:<18} {e.input}{list(e.input_dims)} -> {e.output}{list(e.output_dims)}  "
              f"max |onnx - torch| {e.parity_max_abs_diff:.1e}" for e in entries],
            f"  {self.files} files' SHA-256 in {self.out / checksums.NAME}",
            *[f"  {name} model version {group.version}" for name, group in m.groups.items()],
        ])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--association", type=Path, required=True, help="a `train association` run")
    p.add_argument("--s2f", type=Path, help="a `train s2f` run (adds the ReconstructFace networks)")
    p.add_argument("--out", type=Path, required=True, help="model repository (created or extended)")
    p.add_argument("--checkpoint", default=ExportOptions.checkpoint)
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


def export_repository(opts: ExportOptions) -> ExportResult:
    """`export`: the runs' networks as ONNX into the Triton model repository OUT, each checked
    against PyTorch, with facevoice.json (the spaces served) and checksums.sha256."""
    start = time.perf_counter()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    default = opts.default_config or ("gpu" if torch.cuda.is_available() else "cpu")
    specs = {ASSOCIATION: association_networks(opts.association, opts.checkpoint)}
    if opts.s2f:
        specs[SPEECH2FACE] = s2f_networks(opts.s2f, opts.checkpoint)
    version = opts.version or next_version(opts.out, [n.name for spec in specs.values() for n in spec.nets])
    runs = {ASSOCIATION: opts.association, SPEECH2FACE: opts.s2f}
    groups, spaces = {}, {}
    for name, spec in specs.items():
        entries = {n.name: write_network(opts.out, n, version, default) for n in spec.nets}
        group = ModelGroup(model_version(list(entries.values()), detector_digest(spec)), str(runs[name]),
                           spec.metric, spec.dim, entries, spec.info)
        groups[name] = group
        spaces.update({s.name: Space(s.name, s.modality, name, entries[s.network], s.frontend, group.version,
                                     spec.metric, spec.dim, s.indexed) for s in spec.spaces})
    spaces = ship_face_detector(opts.out, spaces)
    manifest = Manifest(version, default, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), groups, spaces,
                        DECODER if SPEECH2FACE in groups else None)
    write_repository_manifest(opts.out, manifest)
    files = checksums.write(opts.out)  # every file of the repository, checked before it is served
    return ExportResult(opts.out, manifest, len(files), time.perf_counter() - start)


def run(args: argparse.Namespace) -> int:
    print(export_repository(options(ExportOptions, args)).summary())
    return 0
