"""Kim et al. supp. A.2.2 augmentation: shapes kept, seeded, within its ranges; the shift a config
key; wider windows read the photo around the face from a cached margin."""

from __future__ import annotations

import matplotlib.cbook as cbook
import numpy as np
import pytest
import torch
from PIL import Image

from facevoice.service.media import FaceImage
from facevoice.service.media.frontends import model_input
from facevoice.training.association.augment import (
    FaceMargin,
    augment_faces,
    augment_voices,
    face_windows,
    face_with_margin,
    margin_side,
)
from tests.conftest import image_bytes


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


def _blob_centres(out: torch.Tensor) -> np.ndarray:
    """[B, 2] each image's intensity centroid (x, y) in pixels, after undoing brightness/contrast."""
    lo, hi = out.amin(dim=(1, 2, 3), keepdim=True), out.amax(dim=(1, 2, 3), keepdim=True)
    w = ((out - lo) / (hi - lo))[:, 0].numpy()
    yy, xx = np.mgrid[:w.shape[1], :w.shape[2]]
    total = w.sum(axis=(1, 2))
    return np.stack([(w * xx).sum(axis=(1, 2)) / total, (w * yy).sum(axis=(1, 2)) / total], axis=1)


def test_the_shift_is_a_config_key_and_the_paper_has_none():
    """Supp. A.2.2 crops, rotates and flips about the face; the ±10% shift is ours (small only)."""
    from facevoice.service.errors import UsageError
    from facevoice.training.association.config import load_config

    assert load_config("paper").face.augment_shift == 0.0 and load_config("small").face.augment_shift == 0.1
    with pytest.raises(UsageError, match="augment_shift"):
        load_config("small", ["face.augment_shift=1.5"])
    yy, xx = np.mgrid[:64, :64]
    blob = torch.from_numpy(np.exp(-((yy - 31.5) ** 2 + (xx - 31.5) ** 2) / 18.0).astype(np.float32))
    x = blob.expand(200, 3, 64, 64).clone()
    # rotation and flip are about the window's centre: without a shift the blob stays there
    still = _blob_centres(augment_faces(x, np.random.default_rng(0), (1.0, 1.0), shift=0.0)) - 31.5
    moved = _blob_centres(augment_faces(x, np.random.default_rng(0), (1.0, 1.0), shift=0.1)) - 31.5
    assert np.linalg.norm(still, axis=1).max() < 0.05
    # the window moves up to ±0.1 of the half-side, ±3.2 px of 64 in x and in y: at most 3.2 x √2
    # from the centre (rotation turns the move, never lengthens it)
    distance = np.linalg.norm(moved, axis=1)
    assert 3.0 < distance.max() <= 3.2 * np.sqrt(2) + 0.05 and distance.mean() > 1.0


def test_the_margin_holds_the_widest_window():
    # the crop x (the widest window + the largest shift), the margin rounded up to whole, even pixels
    assert margin_side(64, 1.4, 0.0) == 90  # 64 x 1.4 = 89.6
    assert margin_side(64, 1.4, 0.1) == 96  # 64 x 1.5
    assert margin_side(224, 1.4, 0.0) == 314  # 224 x 1.4 = 313.6
    assert margin_side(64, 1.0, 0.0) == margin_side(64, 0.9, 0.0) == 64  # no window leaves the crop


def _hopper_on_a_canvas() -> tuple[bytes, tuple[float, float, float, float]]:
    """matplotlib's photograph of Grace Hopper pasted at (100, 100) on a grey canvas 200 px larger,
    and her face's box there (dlib's HOG detector finds (161, 137, 216, 216) in the photo)."""
    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    canvas = Image.new("RGB", (photo.width + 200, photo.height + 200), (128, 128, 128))
    canvas.paste(photo, (100, 100))
    return image_bytes(canvas), (261.0, 237.0, 216.0, 216.0)


def _window(picture: np.ndarray, scale: float, flip: float = 1.0) -> np.ndarray:
    return face_windows(torch.from_numpy(picture)[None], 64, [scale], [0.0], [flip], np.zeros((1, 2)))[0].numpy()


def test_a_wider_window_of_a_photo_shows_its_surroundings_not_its_border():
    """Supp. A.2.2: "negative cropping means including more background". A window 1.4 times the
    crop, read from the crop cached with a margin, is the photo cropped 1.4 times wider; read
    from the crop alone it repeats the crop's edge pixels."""
    data, box = _hopper_on_a_canvas()
    face = FaceImage(size=64)
    margin = FaceMargin(face, margin_side(64, 1.4, 0.0))
    crop = model_input(data, face, box)  # what the cache holds and the service serves
    wide = face_with_margin(data, margin, box)
    assert wide.shape == (3, 90, 90)
    # scale 1 (either way round) reads the crop itself, exactly
    assert np.array_equal(_window(wide, 1.0), crop) and np.array_equal(_window(wide, 1.0, -1.0), crop[..., ::-1])
    truth = model_input(data, FaceImage(size=64, box_scale=1.5 * 1.4), box)  # the photo cropped 1.4x wider
    background, border = _window(wide, 1.4), _window(crop, 1.4)
    ring = np.ones((64, 64), bool)
    ring[8:56, 8:56] = False  # the outer 8 px: outside the crop (the crop is the middle 64 / 1.4 = 46 px)
    assert np.abs(background - truth)[:, ring].mean() < 0.1  # resampling only (normalised units)
    assert np.abs(border - truth)[:, ring].mean() > 0.5
    # border padding: the 6 leftmost columns of each row are one value; the photo's are not
    assert border[:, :, :6].std(axis=2).max() < 1e-5
    assert background[:, :, :6].std(axis=2).mean() > 0.2


@pytest.mark.parametrize("background", [True, False])
def test_training_augments_from_the_cached_margin(corpus, tmp_path, background):
    """The tuple sampler's faces come from the margin cache (face.augment_background, default
    true), whose centre is exactly the cached training input; false keeps the crop alone."""
    from facevoice.training.association.config import load_config
    from facevoice.training.association.data import TupleSampler, first_identities, load_split

    out, _ = corpus
    cfg = load_config("small", [f"face.augment_background={str(background).lower()}"])
    split = load_split(out, "train", cfg, tmp_path, workers=1, progress=False, skip_refused=True)
    sampler = TupleSampler(split, cfg, "v2f", seed=0)
    assert sampler.draw(4).faces.shape == (8, 3, 64, 64)  # v2f: a positive and a negative face each
    if not background:
        assert split.face.wide is None and sampler.face_source is None
        return
    wide = np.asarray(split.face.wide(), np.float32)
    n = len(wide)
    assert wide.shape == (n, 3, 96, 96) and n == len(split.face.item_ids) >= 20  # 64 x (1.4 + 0.1)
    assert sampler.face_source.shape == wide.shape
    cached = torch.from_numpy(np.asarray(split.face.data, np.float32))
    centre = face_windows(torch.from_numpy(wide), 64, [1.0] * n, [0.0] * n, [1.0] * n, np.zeros((n, 2)))
    assert torch.equal(centre, cached)
    cut = first_identities(split, 3)  # a cut keeps the rows of both caches together
    assert np.array_equal(np.asarray(cut.face.wide())[:, :, 16:80, 16:80], np.asarray(cut.face.data))
    # backbone pretraining augments from the same margin, with the config's shift
    from facevoice.training.association.augment import augment_faces
    from facevoice.training.association.pretrain import _inputs

    rows = np.array([0, 2, 5])
    got = _inputs(split, "face", cfg, rows, np.random.default_rng(3), wide)
    want = augment_faces(torch.from_numpy(wide[rows]), np.random.default_rng(3), (0.8, 1.4), 0.1, 64)
    assert got.shape == (3, 3, 64, 64) and torch.equal(got, want)
    plain = _inputs(split, "face", cfg, rows, np.random.default_rng(3))
    assert not torch.equal(plain, got)  # the crop alone repeats its border where the margin shows the photo
