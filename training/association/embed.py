"""Representations of decoded items, in batches, with the model in eval mode."""

from __future__ import annotations

import numpy as np
import torch

from facevoice.training.association.model import AssociationModel


@torch.no_grad()
def embed(model: AssociationModel, modality: str, data: np.ndarray, samples: int | None = None,
          batch: int = 64, device: torch.device | str = "cpu") -> np.ndarray:
    """[N, dim] float32. Voices use their first `samples` samples (what the service feeds)."""
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
            out.append(encoder(x).float().cpu().numpy())
    encoder.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, encoder.head[-1].out_features), np.float32)
