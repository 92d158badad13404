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
