"""The optional augmentation of Kim et al. 2018 supp. A.2.2: faces cropped -40% to +20% around the
face ("negative cropping means including more background"), rotated up to ±15°, flipped,
brightness and contrast jittered ±20%; audio volume ±20%.

A face's window is sampled from a picture at the network's pixel density: either the training
input itself (a wider window then repeats its border pixels), or the same crop cached with a
margin of the photo around it (data.py, face.augment_background), so a wider window shows the
photo's real surroundings. The window's centre may also move (face.augment_shift): not in A.2.2,
so 0 in the paper config."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from facevoice.service.media import FaceImage
from facevoice.service.media.frontends import model_input, model_input_used
from facevoice.service.media.image import Box, decode_image

if TYPE_CHECKING:
    from facevoice.training.association.config import AssociationConfig

PAPER_SCALE = (0.8, 1.4)  # the sampling window's size: a -40%..+20% crop around the face (supp. A.2.2)
OUR_SHIFT = 0.1  # what callers that do not say get: ±0.1 of the crop's half-side (±5% of its side)


def face_windows(x: torch.Tensor, size: int, scale, angle, flip, shift) -> torch.Tensor:
    """[B, C, L, L] pictures (the face crop of side `size` at their centre, L >= size) -> [B, C,
    size, size]: for each, the window of side scale * size pixels about the centre moved by
    shift * size / 2 pixels ([B, 2], x then y), rotated by `angle` radians and mirrored where
    `flip` is -1, read bilinearly; outside the picture repeats its border. scale 1, angle 0,
    flip 1 and shift 0 read the centre `size` x `size` pixels exactly (no interpolation)."""
    n, c, side = len(x), x.shape[1], x.shape[-1]
    f64 = dict(dtype=torch.float64)
    s, a = torch.as_tensor(scale, **f64).view(n, 1, 1), torch.as_tensor(angle, **f64).view(n, 1, 1)
    fl, t = torch.as_tensor(flip, **f64).view(n, 1, 1), torch.as_tensor(shift, **f64).view(n, 2)
    u = torch.arange(size, **f64) - (size - 1) / 2  # output pixel centres about the window's centre
    v, u = torch.meshgrid(u, u, indexing="ij")
    centre = (side - 1) / 2
    px = centre + s * (torch.cos(a) * fl * u - torch.sin(a) * v) + (t[:, 0] * size / 2).view(n, 1, 1)
    py = centre + s * (torch.sin(a) * fl * u + torch.cos(a) * v) + (t[:, 1] * size / 2).view(n, 1, 1)
    px, py = px.clamp(0, side - 1), py.clamp(0, side - 1)  # the border repeated, as grid_sample's "border"
    x0, y0 = px.floor().clamp(max=max(side - 2, 0)), py.floor().clamp(max=max(side - 2, 0))
    fx, fy = (px - x0).to(x.dtype).unsqueeze(1), (py - y0).to(x.dtype).unsqueeze(1)
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=side - 1), (y0 + 1).clamp(max=side - 1)
    flat = x.reshape(n, c, side * side)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat.gather(2, (yy * side + xx).view(n, 1, -1).expand(n, c, -1)).view(n, c, size, size)

    return (at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x1) * fx * (1 - fy)
            + at(y1, x0) * (1 - fx) * fy + at(y1, x1) * fx * fy)


def augment_faces(x: torch.Tensor, rng: np.random.Generator,
                  scale_range: tuple[float, float] = PAPER_SCALE, shift: float = OUR_SHIFT,
                  size: int | None = None) -> torch.Tensor:
    """[B, 3, L, L] normalised images -> [B, 3, size, size] (size: L unless given), each with its
    own random transform. `scale_range` (face.augment_scale) bounds the window's size; (1, 1)
    keeps each face's size. `shift` (face.augment_shift) bounds the window's move, as a fraction
    of the crop's half-side; supp. A.2.2 has none (0). With L > size the images are the face crop
    with a margin (FaceMargin, cached by data.py): a window wider than the crop shows the margin."""
    n, size = len(x), size or x.shape[-1]
    if n == 0:
        return x.new_zeros((0, x.shape[1], size, size))
    scale = rng.uniform(*scale_range, n)  # > 1 samples a wider window: negative cropping, more background
    angle = np.radians(rng.uniform(-15, 15, n))
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    moved = rng.uniform(-1, 1, (n, 2)) * shift  # drawn whatever `shift` is, so the other draws stay put
    out = face_windows(x, size, scale, angle, flip, moved)
    contrast = torch.from_numpy(rng.uniform(0.8, 1.2, (n, 1, 1, 1)).astype(np.float32))
    brightness = torch.from_numpy(rng.uniform(-0.2, 0.2, (n, 1, 1, 1)).astype(np.float32))
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return (out - mean) * contrast + mean + brightness / 0.226  # ±20% of the range, in normalised units


@dataclass(frozen=True)
class FaceMargin:
    """A face crop with a margin: `face` (the training input, FaceImage) at the centre of a
    side x side picture at the same pixel density, the rest the photo around it. The
    augmentation's windows wider than the crop read the margin (Kim et al. supp. A.2.2:
    "negative cropping means including more background")."""

    face: FaceImage
    side: int

    @property
    def pad(self) -> int:
        return (self.side - self.face.size) // 2

    def wide(self) -> FaceImage:
        """The front end of the whole picture: the box enlarged side / size times more."""
        return replace(self.face, size=self.side, box_scale=self.face.box_scale * self.side / self.face.size)


def margin_side(size: int, scale_high: float, shift: float) -> int:
    """The side of a FaceMargin holding every window of up to `scale_high` times the crop moved
    up to `shift` of its half-side (unrotated; a rotated window's corners may still reach past
    it), with an even margin; `size` when no window leaves the crop."""
    reach = max(1.0, scale_high + shift)
    return size + 2 * math.ceil(size * (reach - 1) / 2 - 1e-9)


def face_margin(cfg: AssociationConfig) -> FaceMargin | None:
    """The FaceMargin an AssociationConfig's training augments from, or None (no augmentation,
    face.augment_background false, or no window wider than the crop)."""
    f = cfg.face
    side = margin_side(f.size, f.augment_scale[1], f.augment_shift)
    return FaceMargin(f.frontend(), side) if f.augment and f.augment_background and side > f.size else None


def face_with_margin(data: bytes, margin: FaceMargin, box: Box | None = None) -> np.ndarray:
    """float32 [3, side, side]: the crop of `data` that margin.face gives (model_input, exactly,
    at the centre) and the photo around it, cut by the media pipeline itself (margin.wide())
    about the same face: the given box, the face found (found again and aligned when the front
    end aligns) or, without a detector, the centre square. Beyond the photo it is black, as the
    pipeline's crop pads a face near the edge (and as the centre then shows)."""
    face, used = model_input_used(data, margin.face, box)
    if used.source == "centre":  # the centre square of side m is a box of m / box_scale enlarged
        w, h = decode_image(data).size
        m = min(w, h) / margin.face.box_scale
        box = (w / 2 - m / 2, h / 2 - m / 2, m, m)
    elif used.source == "detected" and margin.face.align:
        box = None  # the aligned region depends on the margin: the front end rotates it again
    else:
        box = used.box
    out = model_input(data, margin.wide(), box)
    p, size = margin.pad, margin.face.size
    out[:, p:p + size, p:p + size] = face
    return out


def augment_voices(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """[B, samples] waveforms, volume jittered ±20%."""
    gain = torch.from_numpy(rng.uniform(0.8, 1.2, (len(x), 1)).astype(np.float32))
    return x * gain
