"""Image decoding and the face subnetwork input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facevoice.service.media import FaceImage, decode_image, face_input
from facevoice.service.media.image import crop_face
from tests.conftest import image_bytes


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (80, 40), "white")
    img.paste((255, 0, 0), (0, 0, 10, 40))  # a red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    out = decode_image(image_bytes(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (40, 80)
    assert out.getpixel((20, 2))[0] > 200 and out.getpixel((20, 2))[1] < 80  # red now on top


@pytest.mark.parametrize("mode,fmt,kw", [
    ("L", "PNG", {}), ("LA", "PNG", {}), ("RGBA", "PNG", {}), ("P", "PNG", {}),
    ("CMYK", "JPEG", {}), ("I;16", "PNG", {}), ("1", "PNG", {}), ("RGBA", "WEBP", {"lossless": True}),
])
def test_every_mode_becomes_rgb(mode, fmt, kw):
    img = Image.new("RGB", (32, 32), (10, 200, 30)).convert(mode)
    out = decode_image(image_bytes(img, fmt, **kw))
    assert out.mode == "RGB" and out.size == (32, 32)


def test_transparency_is_composited_over_white():
    img = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    assert decode_image(image_bytes(img)).getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    img = Image.fromarray(np.full((32, 32), 32_896, np.uint16))  # half of 65535
    assert abs(decode_image(image_bytes(img)).getpixel((0, 0))[0] - 128) <= 1


def test_first_frame_of_an_animation():
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    r, _g, b = decode_image(buf.getvalue()).getpixel((10, 10))
    assert r > 200 and b < 50


def test_face_box_is_enlarged_one_and_a_half_times_about_its_centre():
    img = Image.new("RGB", (200, 200))
    crop = crop_face(img, (80, 60, 40, 40), 1.5)  # centre (100, 80), side 60
    assert crop.size == (60, 60)


def test_face_input_normalises_with_the_configured_statistics():
    cfg = FaceImage(size=112)
    x = face_input(image_bytes(Image.new("RGB", (64, 48), (255, 0, 128))), cfg, box=(16, 8, 32, 32))
    assert x.shape == (3, 112, 112) and x.dtype == np.float32
    expected = (np.array([255, 0, 128]) / 255 - np.array(cfg.mean)) / np.array(cfg.std)
    np.testing.assert_allclose(x[:, 50, 50], expected, atol=1e-5)
