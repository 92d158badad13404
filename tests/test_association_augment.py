"""Kim et al. supp. A.2.2 augmentation: shapes kept, seeded, within its ranges."""

from __future__ import annotations

import numpy as np
import torch

from facevoice.training.association.augment import augment_faces, augment_voices


def test_face_augmentation_keeps_shape_and_is_seeded():
    x = torch.randn(6, 3, 32, 32)
    a = augment_faces(x, np.random.default_rng(1))
    b = augment_faces(x, np.random.default_rng(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, augment_faces(x, np.random.default_rng(2)))
    assert augment_faces(x[:0], np.random.default_rng(0)).shape == (0, 3, 32, 32)


def test_a_flat_image_changes_only_by_brightness():
    # a constant image has no geometry: only the ±20% brightness shift can move it
    out = augment_faces(torch.zeros(50, 3, 16, 16), np.random.default_rng(0))
    per_image = out.mean(dim=(1, 2, 3))
    assert torch.allclose(out, per_image[:, None, None, None].expand_as(out), atol=1e-5)
    assert per_image.abs().max() <= 0.2 / 0.226 + 1e-6


def test_voice_gain_within_twenty_percent():
    x = torch.ones(200, 10)
    gain = augment_voices(x, np.random.default_rng(0))[:, 0]
    assert gain.min() >= 0.8 and gain.max() <= 1.2 and gain.std() > 0.05


def test_the_scale_range_switch_keeps_a_face_at_its_size():
    """face.augment_scale = [1, 1] leaves a face's size alone (only rotation, flip, shift and
    light change), so a face's width stays readable; supp. A.2.2's range rescales it."""
    yy, xx = np.mgrid[:64, :64]
    disk = torch.from_numpy(((yy - 31.5) ** 2 + (xx - 31.5) ** 2 < 14 ** 2).astype(np.float32))
    x = disk.expand(40, 3, 64, 64).clone()

    def areas(out: torch.Tensor) -> np.ndarray:
        lo, hi = out.amin(dim=(1, 2, 3), keepdim=True), out.amax(dim=(1, 2, 3), keepdim=True)
        return ((out - lo) / (hi - lo) > 0.5)[:, 0].float().sum(dim=(1, 2)).numpy()

    kept = areas(augment_faces(x, np.random.default_rng(0), (1.0, 1.0))) / disk.sum().item()
    paper = areas(augment_faces(x, np.random.default_rng(0))) / disk.sum().item()
    assert np.abs(kept - 1).max() < 0.06
    assert paper.min() < 0.7 and paper.max() > 1.3  # windows 0.8-1.4: areas 1/1.96 to 1/0.64
