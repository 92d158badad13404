"""The optional augmentation of Kim et al. 2018 supp. A.2.2: faces cropped -40% to +20% around the
face, rotated up to ±15°, flipped, brightness and contrast jittered ±20%; audio volume ±20%."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PAPER_SCALE = (0.8, 1.4)  # the sampling window's size: a -40%..+20% crop around the face (supp. A.2.2)


def augment_faces(x: torch.Tensor, rng: np.random.Generator,
                  scale_range: tuple[float, float] = PAPER_SCALE) -> torch.Tensor:
    """[B, 3, S, S] normalised images -> the same, each with its own random transform.
    `scale_range` (face.augment_scale) bounds the window's size; (1, 1) keeps each face's size."""
    n = len(x)
    if n == 0:
        return x
    scale = rng.uniform(*scale_range, n)  # > 1 samples a wider window: negative cropping, more background
    angle = np.radians(rng.uniform(-15, 15, n))
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    shift = rng.uniform(-0.1, 0.1, (n, 2))
    theta = np.zeros((n, 2, 3), np.float32)
    theta[:, 0, 0] = scale * np.cos(angle) * flip
    theta[:, 0, 1] = -scale * np.sin(angle)
    theta[:, 1, 0] = scale * np.sin(angle) * flip
    theta[:, 1, 1] = scale * np.cos(angle)
    theta[:, :, 2] = shift
    grid = F.affine_grid(torch.from_numpy(theta), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    contrast = torch.from_numpy(rng.uniform(0.8, 1.2, (n, 1, 1, 1)).astype(np.float32))
    brightness = torch.from_numpy(rng.uniform(-0.2, 0.2, (n, 1, 1, 1)).astype(np.float32))
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return (out - mean) * contrast + mean + brightness / 0.226  # ±20% of the range, in normalised units


def augment_voices(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """[B, samples] waveforms, volume jittered ±20%."""
    gain = torch.from_numpy(rng.uniform(0.8, 1.2, (len(x), 1)).astype(np.float32))
    return x * gain

