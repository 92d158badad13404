"""The Speech2Face networks loaded back from their runs, frozen and in eval mode: what training
the next network, evaluation and export all start from."""

from __future__ import annotations

from pathlib import Path

import torch

from facevoice.service.errors import FormatError
from facevoice.training.runs import load_checkpoint
from facevoice.training.speech2face.config import S2FConfig, from_dict
from facevoice.training.speech2face.model import FaceDecoder, FaceNet, VoiceEncoder


def load_face_net(path: Path, device: torch.device) -> tuple[FaceNet, S2FConfig]:
    """A frozen face network in eval mode and the config it was trained with."""
    state = load_checkpoint(path, "face network checkpoint (face_net.pt from `train face-features`)",
                            ("model", "config", "identities"))
    cfg = from_dict(state["config"])
    net = FaceNet(cfg.face, len(state["identities"]))
    net.load_state_dict(state["model"])
    net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, cfg


def load_decoder(path: Path, face_cfg: S2FConfig, device: torch.device) -> tuple[FaceDecoder, S2FConfig]:
    """A frozen face decoder in eval mode and its config; it must have been trained on a face
    network of `face_cfg`."""
    state = load_checkpoint(path, "face decoder checkpoint (decoder.pt from `train face-decoder`)",
                            ("model", "config"))
    cfg = from_dict(state["config"])
    if cfg.face != face_cfg.face:
        raise FormatError(f"{path}: was trained on another face network config than --face-net")
    decoder = FaceDecoder(cfg.decoder, cfg.face.fc)
    decoder.load_state_dict(state["model"])
    decoder.to(device).eval()
    for p in decoder.parameters():
        p.requires_grad_(False)
    return decoder, cfg


def load_s2f_run(run: Path, checkpoint: str, device) -> tuple[VoiceEncoder, FaceNet, FaceDecoder, S2FConfig, dict]:
    path = run / checkpoint
    if not path.exists():
        raise FormatError(f"{path}: no checkpoint (train first, or pass --checkpoint)")
    state = load_checkpoint(path, "Speech2Face voice encoder checkpoint (from `train s2f`)",
                            ("model", "config", "face_net", "decoder"))
    net, _ = load_face_net(Path(state["face_net"]), device)
    cfg = from_dict(state["config"])
    decoder, _ = load_decoder(Path(state["decoder"]), cfg, device)
    encoder = VoiceEncoder(cfg.voice, cfg.face.fc)
    encoder.load_state_dict(state["model"])
    return encoder.to(device).eval(), net, decoder, cfg, state


VGGFACE_IDENTITIES = 2622  # VGG-Face's fc8 (Parkhi et al. 2015)


def vggface_state(path: Path, cfg: S2FConfig) -> dict[str, torch.Tensor]:
    """A published VGG-Face conversion (the public PyTorch layout: conv1_1.weight .. conv5_3,
    fc6 / fc7 / fc8, the fc layers either Linear [out, in] or Conv2d [out, in, k, k]) as a
    FaceNet state dict of this config; FormatError naming what does not fit."""
    state = load_checkpoint(path, "VGG-Face weight file (conv1_1 .. conv5_3, fc6, fc7, fc8)", ("conv1_1.weight",))
    net = FaceNet(cfg.face, VGGFACE_IDENTITIES)
    wanted = net.state_dict()
    convs = [i for i, m in enumerate(net.features_conv) if isinstance(m, torch.nn.Conv2d)]
    names = [f"conv{b + 1}_{k + 1}" for b, n in enumerate(cfg.face.convs) for k in range(n)]
    mapping = {f"{name}.{p}": f"features_conv.{i}.{p}" for name, i in zip(names, convs, strict=True)
               for p in ("weight", "bias")}
    mapping |= {f"fc{n}.{p}": f"fc{n}.{p}" for n in (6, 7, 8) for p in ("weight", "bias")}
    out = {}
    for theirs, ours in mapping.items():
        if theirs not in state:
            raise FormatError(f"{path}: no {theirs!r} (expected VGG-Face's conv1_1 .. conv5_3, fc6, fc7, fc8)")
        value = state[theirs]
        if ours.startswith("fc") and value.dim() == 4:  # fc layers stored as convolutions
            value = value.flatten(1)
        if value.shape != wanted[ours].shape:
            raise FormatError(f"{path}: {theirs} is {tuple(value.shape)}, this face network needs "
                              f"{tuple(wanted[ours].shape)} (face.widths / face.fc / face.size)")
        out[ours] = value
    return out
