"""Representations of decoded items, in batches, with the model in eval mode; and a split's
`Embeddings`, what every evaluation protocol takes."""

from __future__ import annotations

import numpy as np
import torch

from facevoice.training.association.config import AssociationConfig
from facevoice.training.association.data import SplitData
from facevoice.training.association.model import AssociationModel
from facevoice.training.association.protocol import Embeddings


@torch.no_grad()
def embed(model: AssociationModel, modality: str, data: np.ndarray, samples: int | None = None,
          batch: int = 64, device: torch.device | str = "cpu", pooled: bool = False) -> np.ndarray:
    """[N, dim] float32 (with `pooled`, the pooled last conv layer instead). Voices use their first
    `samples` samples (what the service feeds)."""
    encoder = model.face_encoder if modality == "face" else model.voice_encoder
    was_training = encoder.training
    encoder.eval()
    out = []
    for start in range(0, len(data), batch):
        chunk = np.array(data[start:start + batch], dtype=np.float32)  # a copy: a float32 memmap is read-only
        if samples is not None:
            chunk = chunk[:, :samples]
        x = torch.from_numpy(chunk).to(device)
        if modality == "face" and torch.device(device).type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", torch.bfloat16, enabled=torch.device(device).type == "cuda"):
            out.append((model.pooled(modality, x) if pooled else encoder(x)).float().cpu().numpy())
    encoder.train(was_training)
    width = encoder.head[0].in_features if pooled else encoder.head[-1].out_features
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)


@torch.no_grad()
def pair_distances(model: AssociationModel, faces: np.ndarray, voices: np.ndarray, device, batch: int = 64
                   ) -> np.ndarray:
    """[voices, faces]: 1 - the classification network's probability that the two are one person."""
    model.classifier.eval()
    f = torch.from_numpy(faces).to(device)
    rows = []
    for start in range(0, len(voices), batch):
        v = torch.from_numpy(voices[start:start + batch]).to(device)
        logits = model.classifier(f[None].expand(len(v), -1, -1).reshape(-1, f.shape[1]),
                                  v[:, None].expand(-1, len(f), -1).reshape(-1, v.shape[1]))
        rows.append((1 - torch.softmax(logits.float(), dim=-1)[:, 1]).reshape(len(v), len(f)).cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, len(faces)), np.float32)


def split_embeddings(model: AssociationModel, cfg: AssociationConfig, split: SplitData, device) -> Embeddings:
    """The split's representations; for Table 7's classification network, its pooled features and
    the distance of every (voice, face) pair by the classifier."""
    pooled = model.classifier is not None
    faces = embed(model, "face", split.face.data, device=device, pooled=pooled)
    voices = embed(model, "voice", split.voice.data, cfg.voice.frontend().samples, device=device, pooled=pooled)
    return Embeddings(faces, voices, pair_distances(model, faces, voices, device) if pooled else None)
