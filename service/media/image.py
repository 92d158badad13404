"""Image bytes -> model inputs: decode, orient, RGB, optional face box, resize, normalise."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps

from facevoice.service.media.errors import (
    InvalidSignalError,
    MediaDecodeError,
    MediaError,
    MediaTooLargeError,
)
from facevoice.service.media.limits import DEFAULT_LIMITS, MediaLimits, check_size

FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
Box = tuple[float, float, float, float]  # a face box in pixels: x, y, width, height
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image


@dataclass(frozen=True)
class FaceImage:
    """Face subnetwork input. Kim et al. 2018 sec. 4.3: 224x224; sec. 4.2: face boxes enlarged
    1.5x. By default normalised as torchvision's VGG16 expects (RGB, ImageNet statistics);
    `channels`, `mean` and `std` (in the output channel order, on [0, 1] pixels) express any other
    network's convention (INPUT_CONVENTIONS)."""

    size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    box_scale: float = 1.5
    channels: str = "RGB"  # or "BGR"
    # face detection when no box is given: "hog", "cnn", "synth" or several joined by "+"
    # (faces.py), with the score a face must reach, and whether to level the eyes first; or ""
    # (the older front end: the centre square, as the synthetic corpus's models were trained),
    # where faces.GUARD still has to find a face. synth_detector: the corpus-face detector's
    # file (a model repository's own, resolved against it; "" the one this package ships).
    detector: str = ""
    min_score: float = 0.0
    align: bool = True
    synth_detector: str = ""


@dataclass(frozen=True)
class FaceUsed:
    """Which face a model input was cut from: the box (before the 1.5x margin), the detector's
    score (None without detection), where the box came from, and every face the detectors found
    (largest first: what `face_index` counts)."""

    box: Box | None
    score: float | None
    source: str  # "client" (or manifest) | "detected" | "centre"
    faces: tuple[Box, ...] = ()


# How published face networks want their input. VGG-Face (Parkhi et al. 2015, the Caffe release
# Oh et al. use): BGR, 0-255, minus the per-channel mean (93.5940, 104.7624, 129.1863), no scaling.
INPUT_CONVENTIONS = {
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "channels": "RGB"},
    "vggface": {"mean": (93.5940 / 255, 104.7624 / 255, 129.1863 / 255), "std": (1 / 255,) * 3, "channels": "BGR"},
}


def decode_image(data: bytes, limits: MediaLimits = DEFAULT_LIMITS) -> Image.Image:
    """JPEG/PNG/WebP/GIF bytes -> an upright RGB image (first frame of an animation)."""
    check_size(data, limits, "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)), formats=FORMATS)
            w, h = img.size
            if w * h > limits.max_image_pixels:  # from the header, before any pixel is decoded
                raise MediaTooLargeError(
                    f"image: {w}x{h} is over the {limits.max_image_pixels:,}-pixel limit")
            if min(w, h) < limits.min_image_side:
                raise InvalidSignalError(
                    f"image: {w}x{h} is too small (sides of at least {limits.min_image_side} px)")
            img.seek(0)
            img.load()
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaTooLargeError(f"image: decompression bomb ({_words(e)})") from e
    except Exception as e:  # Pillow's many complaints about bad files, as one type
        other = unsupported_format(data)
        if other:
            raise MediaDecodeError(f"image: {other} is not supported (send {'/'.join(FORMATS)})") from e
        raise MediaDecodeError(f"image: not a readable {'/'.join(FORMATS)} file ({_words(e)})") from e
    return to_rgb(_upright(img))


# formats people send that we do not decode, by their first bytes
_OTHER_FORMATS = ((b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"%PDF", "PDF"),
                  (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"8BPS", "PSD"), (b"<svg", "SVG"), (b"<?xml", "SVG"))


def unsupported_format(data: bytes) -> str | None:
    """The name of a known image format we do not decode (AVIF, HEIC, BMP, TIFF...), or None."""
    head = bytes(data[:32])
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF"}.get(brand)
    return next((name for magic, name in _OTHER_FORMATS if head.startswith(magic)), None)


def _words(e: Exception) -> str:
    """An exception's message without the repr of the in-memory file it was handed."""
    return re.sub(r"<_?io\.\w+ object at 0x[0-9a-fA-F]+>", "the upload", str(e))[:200]


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency composited over white, 16-bit scaled to 8."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        scale = 257.0 if arr.max() > 255 else 1.0
        img = Image.fromarray(np.clip(arr / scale, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.nan_to_num(np.asarray(img)), 0, 255).astype(np.uint8), "L")
    if (img.mode == "P" and "transparency" in img.info) or img.mode in ("LA", "PA"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")


def crop_face(img: Image.Image, box: Box | None, scale: float = 1.5) -> Image.Image:
    """Square crop: the face box (x, y, w, h) enlarged `scale` times about its centre, or the
    centre square when there is no box. Outside the image is black."""
    if box is None:
        side = min(img.size)
        x0, y0 = (img.width - side) / 2, (img.height - side) / 2
    else:
        check_box(box, img.size)
        x, y, w, h = box
        side = max(w, h) * scale
        x0, y0 = x + w / 2 - side / 2, y + h / 2 - side / 2
        if x0 + side <= 0 or y0 + side <= 0 or x0 >= img.width or y0 >= img.height:
            raise InvalidSignalError(f"image: face box {box} lies outside the {img.size} image")
    return img.crop((round(x0), round(y0), round(x0 + side), round(y0 + side)))


MIN_BOX_SIDE = 8  # pixels: less than this holds no face


def check_box(box: Box, size: tuple[int, int]) -> None:
    """A face box must be finite, at least MIN_BOX_SIDE px a side, and no larger than the image
    (InvalidSignalError otherwise: a 1e9 px box would make a crop of exabytes)."""
    x, y, w, h = box
    if not np.isfinite([x, y, w, h]).all():
        raise InvalidSignalError(f"image: face box {tuple(box)} is not finite")
    if w < MIN_BOX_SIDE or h < MIN_BOX_SIDE:
        raise InvalidSignalError(f"image: face box {w:g}x{h:g} is under {MIN_BOX_SIDE} px a side")
    if w > size[0] or h > size[1]:
        raise InvalidSignalError(f"image: face box {w:g}x{h:g} is larger than the {size[0]}x{size[1]} image")


def normalise(img: Image.Image, cfg: FaceImage) -> np.ndarray:
    """Resize to cfg.size and normalise -> float32 [3, size, size]."""
    img = img.resize((cfg.size, cfg.size), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if cfg.channels == "BGR":
        arr = arr[..., ::-1]
    arr = (arr - np.array(cfg.mean, np.float32)) / np.array(cfg.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def face_crop(img: Image.Image, cfg: FaceImage, box: Box | None = None, face_index: int = 0
              ) -> tuple[Image.Image, FaceUsed]:
    """The square the face network sees, and which face it is: the given box (always wins), else
    the detected face `face_index` (largest first), aligned when the front end says so. No face
    found is InvalidSignalError, whatever the front end: the older one (no detector) has its
    face found by faces.GUARD, then crops the centre square it was trained on."""
    if box is not None:
        return crop_face(img, box, cfg.box_scale), FaceUsed(tuple(float(v) for v in box), None, "client")
    from facevoice.service.media.faces import GUARD, align, detect_faces, pick

    faces = detect_faces(img, cfg.detector or GUARD, cfg.min_score, synth_path=cfg.synth_detector)
    face = pick(faces, face_index)
    found = tuple(f.box for f in faces)
    if not cfg.detector:
        return crop_face(img, None, cfg.box_scale), FaceUsed(None, None, "centre", found)
    used = FaceUsed(face.box, face.score, "detected", found)
    if cfg.align:
        region, box = align(img, face, cfg.box_scale)
        return crop_face(region, box, cfg.box_scale), used
    return crop_face(img, face.box, cfg.box_scale), used


def face_input(data: bytes, cfg: FaceImage = FaceImage(), box: Box | None = None,
               limits: MediaLimits = DEFAULT_LIMITS, face_index: int = 0) -> np.ndarray:
    """Bytes -> the face subnetwork's input: float32 [3, cfg.size, cfg.size]."""
    return face_input_used(data, cfg, box, limits, face_index)[0]


def face_input_used(data: bytes, cfg: FaceImage = FaceImage(), box: Box | None = None,
                    limits: MediaLimits = DEFAULT_LIMITS, face_index: int = 0) -> tuple[np.ndarray, FaceUsed]:
    """face_input, and the face it used."""
    img = decode_image(data, limits)
    crop, used = face_crop(img, cfg, box, face_index)
    return normalise(crop, cfg), used
