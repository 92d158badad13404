"""Procedural face images: identity geometry from `FaceParams`, nuisance per image.

Drawn with Pillow at 4x the output size and downsampled (anti-aliasing). Coordinates are
fractions of the canvas; geometry scores are standard normal, so a score of +1 is one
population standard deviation (a wider face, a broader nose...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from facevoice.training.corpus.people import FaceParams

SUPERSAMPLE = 4
CANONICAL_BACKGROUND = (232, 232, 232)
# The painter's version. 2 (issue 30) draws the nose over the beard, wider and outlined, so that
# its width shows in a 64-px face; 1 drew it under the beard, 4 px wide at 64 px and nearly
# unreadable (a supervised CNN read nose width at r 0.06, docs/results.md). A corpus records the
# version it was drawn with (corpus.json), and a release the corpus it was trained on.
FACE_RENDER = 2
FACE_RENDERS = (1, 2)


@dataclass(frozen=True)
class FaceNuisance:
    """Per-image conditions; `canonical()` is the face decoder's target (Oh et al. sec. 3.2)."""

    rotation_deg: float = 0.0  # in-plane, within +-15
    yaw: float = 0.0  # -1..1, a squash toward one side
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)  # fraction of the canvas
    light_angle: float = 0.0
    light_strength: float = 0.0  # 0 = even light
    background: tuple[tuple[int, int, int], tuple[int, int, int]] = (
        CANONICAL_BACKGROUND, CANONICAL_BACKGROUND)
    smile: float = 0.0  # -0.3..1
    mouth_open: float = 0.0  # 0..1
    brow_raise: float = 0.0  # -1..1
    eye_open: float = 1.0  # 0.35..1.1
    clothes_rgb: tuple[int, int, int] = (90, 100, 120)
    noise_sd: float = 0.0

    @staticmethod
    def canonical() -> FaceNuisance:
        """Frontal, neutral, plain background, even light."""
        return FaceNuisance()

    @staticmethod
    def sample(rng: np.random.Generator) -> FaceNuisance:
        bg = tuple(tuple(int(c) for c in rng.integers(30, 230, 3)) for _ in range(2))
        return FaceNuisance(
            rotation_deg=float(rng.uniform(-15, 15)), yaw=float(rng.uniform(-0.6, 0.6)),
            scale=float(rng.uniform(0.88, 1.1)), shift=tuple(rng.uniform(-0.05, 0.05, 2)),
            light_angle=float(rng.uniform(0, 2 * np.pi)), light_strength=float(rng.uniform(0, 0.45)),
            background=bg, smile=float(rng.uniform(-0.3, 1.0)),
            mouth_open=float(rng.uniform(0, 1) ** 3), brow_raise=float(rng.uniform(-1, 1)),
            eye_open=float(rng.uniform(0.35, 1.1)) if rng.random() < 0.3 else 1.0,
            clothes_rgb=tuple(int(c) for c in rng.integers(20, 220, 3)),
            noise_sd=float(rng.uniform(0, 6)),
        )


def _mix(a, b, t: float) -> tuple[int, int, int]:
    return tuple(round(x * (1 - t) + y * t) for x, y in zip(a, b, strict=True))


def _shade(rgb, k: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * k, 0, 255)) for c in rgb)


def greying(face_age: float) -> float:
    """Fraction of grey in hair and brows at an apparent age."""
    return float(1 / (1 + np.exp(-(face_age - 52) / 6)))


class _Painter:
    """Draws one face on an RGBA layer; lengths are fractions of the canvas side."""

    def __init__(self, p: FaceParams, n: FaceNuisance, side: int, version: int = FACE_RENDER):
        if version not in FACE_RENDERS:
            raise ValueError(f"face renderer version {version}: one of {FACE_RENDERS}")
        self.p, self.n, self.s, self.version = p, n, side, version
        self.img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        self.d = ImageDraw.Draw(self.img)
        self.cx, self.cy = 0.5, 0.46
        self.hw = 0.25 + 0.022 * p.face_width
        self.hh = 0.32 + 0.018 * p.face_height
        self.jaw = 0.72 + 0.06 * p.jaw
        self.dx = 0.05 * n.yaw  # features slide toward the side the head turns to
        self.eye_dx = 0.105 + 0.01 * p.eye_spacing  # centre of each eye from the midline
        grey = greying(p.face_age)
        self.hair = _mix(p.hair_rgb, (205, 205, 205), grey)
        self.skin = p.skin_rgb

    def xy(self, x: float, y: float) -> tuple[float, float]:
        return (x * self.s, y * self.s)

    def box(self, x0, y0, x1, y1) -> list[float]:
        return [x0 * self.s, y0 * self.s, x1 * self.s, y1 * self.s]

    def head_outline(self, grow: float = 0.0, n: int = 120) -> list[tuple[float, float]]:
        pts = []
        for t in np.linspace(0, 2 * np.pi, n, endpoint=False):
            sx = np.cos(t) * (self.hw + grow)
            if np.sin(t) > 0:  # lower half narrows to the jaw
                sx *= 1 - (1 - self.jaw) * np.sin(t) ** 1.6
            pts.append(self.xy(self.cx + sx, self.cy + np.sin(t) * (self.hh + grow)))
        return pts

    def paint(self) -> Image.Image:
        middle = (self.nose, self.beard) if self.version == 1 else (self.beard, self.nose)
        for step in (self.torso, self.back_hair, self.ears, self.head, self.wrinkles, self.eyes,
                     self.brows, *middle, self.mouth, self.front_hair, self.glasses):
            step()
        return self.img

    def torso(self):
        c = self.n.clothes_rgb
        neck_w = self.hw * 0.55
        self.d.rectangle(self.box(self.cx - neck_w, self.cy + self.hh * 0.6, self.cx + neck_w,
                                  self.cy + self.hh + 0.1), fill=_shade(self.skin, 0.85))
        self.d.ellipse(self.box(self.cx - 0.42, self.cy + self.hh + 0.06, self.cx + 0.42, 1.45),
                       fill=c)

    def back_hair(self):
        if self.p.gender == "female" and self.p.hair_style != 0:
            length = 0.42 if self.p.hair_style == 1 else 0.28
            self.d.rounded_rectangle(
                self.box(self.cx - self.hw - 0.05, self.cy - self.hh * 0.5,
                         self.cx + self.hw + 0.05, self.cy + length),
                radius=0.08 * self.s, fill=self.hair)

    def ears(self):
        for side in (-1, 1):
            x = self.cx + side * self.hw * 0.97
            self.d.ellipse(self.box(x - 0.035, self.cy - 0.05, x + 0.035, self.cy + 0.06),
                           fill=_shade(self.skin, 0.92))

    def head(self):
        self.d.polygon(self.head_outline(), fill=self.skin)

    def wrinkles(self):
        age = self.p.face_age
        if age < 40:
            return
        k = min(1.0, (age - 40) / 30)
        line = _shade(self.skin, 1 - 0.25 * k)
        w = max(1, int(0.004 * self.s))
        for i in range(1 + int(3 * k)):
            y = self.cy - self.hh * (0.55 - 0.07 * i)
            self.d.arc(self.box(self.cx - 0.1 + self.dx, y - 0.02, self.cx + 0.1 + self.dx, y + 0.02),
                       200, 340, fill=line, width=w)
        for side in (-1, 1):  # nasolabial folds
            x = self.cx + self.dx + side * 0.075
            self.d.line([self.xy(x, self.cy + 0.05), self.xy(x + side * 0.02, self.cy + 0.15)],
                        fill=line, width=w)

    def eyes(self):
        p, n = self.p, self.n
        spacing = self.eye_dx
        ew = max(0.01, 0.052 + 0.006 * p.eye_size)  # sizes stay positive however far out a score is
        eh = ew * 0.55 * p.eye_openness * n.eye_open
        y = self.cy - 0.02
        for side in (-1, 1):
            x = self.cx + self.dx + side * spacing
            self.d.ellipse(self.box(x - ew, y - eh, x + ew, y + eh), fill=(245, 245, 240))
            r = min(ew * 0.5, eh * 1.1)
            self.d.ellipse(self.box(x - r, y - r, x + r, y + r), fill=p.iris_rgb)
            self.d.ellipse(self.box(x - r * 0.45, y - r * 0.45, x + r * 0.45, y + r * 0.45),
                           fill=(15, 12, 12))
            # eyelids: skin above and below the aperture
            if n.eye_open < 0.6:  # a heavy upper lid over a half-closed eye
                self.d.chord(self.box(x - ew * 1.1, y - eh * 2.2, x + ew * 1.1, y + eh * 0.1),
                             180, 360, fill=_shade(self.skin, 0.9))
            self.d.arc(self.box(x - ew, y - eh, x + ew, y + eh), 180, 360, fill=(40, 30, 30),
                       width=max(1, int(0.006 * self.s)))

    def brows(self):
        p, n = self.p, self.n
        spacing = self.eye_dx
        y = self.cy - 0.075 - 0.01 * p.brow_height - 0.012 * n.brow_raise
        thick = (0.012 + 0.004 * p.brow_thickness + (0.004 if p.gender == "male" else 0)) * self.s
        colour = _mix(self.hair, (0, 0, 0), 0.15)
        for side in (-1, 1):
            x = self.cx + self.dx + side * spacing
            pts = [self.xy(x - side * 0.05, y + 0.006), self.xy(x, y - 0.01),
                   self.xy(x + side * 0.055, y + 0.004)]
            self.d.line(pts, fill=colour, width=max(1, int(thick)), joint="curve")

    def nose(self):
        if self.version == 1:
            return self.nose_v1()
        p = self.p
        nw = max(0.012, 0.042 + 0.011 * p.nose_width)  # half the width across the wings
        nl = 0.11 + 0.012 * p.nose_length
        x, top, tip = self.cx + self.dx * 1.3, self.cy - 0.01, self.cy - 0.01 + nl
        w = max(1, int(0.006 * self.s))
        shadow, line = _shade(self.skin, 0.8), _shade(self.skin, 0.55)
        self.d.line([self.xy(x - nw * 0.3, top), self.xy(x - nw * 0.45, tip - 0.03)], fill=shadow, width=w)
        # the base of the nose, skin over skin or beard, outlined below from wing to wing
        base = self.box(x - nw, tip - 0.032, x + nw, tip + 0.012)
        self.d.ellipse(base, fill=_shade(self.skin, 0.97))
        self.d.arc(base, 0, 180, fill=line, width=w)
        for side in (-1, 1):  # the wings' creases and the nostrils
            cxn = x + side * nw * 0.78
            self.d.arc(self.box(cxn - nw * 0.3, tip - 0.03, cxn + nw * 0.3, tip + 0.006),
                       90 - side * 90 - 60, 90 - side * 90 + 60, fill=line, width=w)
            cxn = x + side * nw * 0.42
            self.d.ellipse(self.box(cxn - nw * 0.22, tip - 0.002, cxn + nw * 0.22, tip + 0.009),
                           fill=_shade(self.skin, 0.4))

    def nose_v1(self):
        p = self.p
        nw = max(0.004, 0.032 + 0.007 * p.nose_width)
        nl = 0.11 + 0.012 * p.nose_length
        x, top, tip = self.cx + self.dx * 1.3, self.cy - 0.01, self.cy - 0.01 + nl
        shadow = _shade(self.skin, 0.82)
        w = max(1, int(0.005 * self.s))
        self.d.line([self.xy(x - nw * 0.35, top), self.xy(x - nw * 0.5, tip - 0.02)], fill=shadow,
                    width=w)
        self.d.ellipse(self.box(x - nw * 0.55, tip - 0.025, x + nw * 0.55, tip + 0.008),
                       fill=_shade(self.skin, 0.95))
        for side in (-1, 1):
            cxn = x + side * nw * 0.6
            self.d.ellipse(self.box(cxn - nw * 0.38, tip - 0.012, cxn + nw * 0.38, tip + 0.012),
                           fill=shadow)
            self.d.ellipse(self.box(cxn - nw * 0.2, tip - 0.004, cxn + nw * 0.2, tip + 0.008),
                           fill=_shade(self.skin, 0.45))

    def mouth(self):
        p, n = self.p, self.n
        mw = 0.065 + 0.008 * p.mouth_width
        lip = max(0.002, 0.012 + 0.003 * p.lip_thickness)
        x, y = self.cx + self.dx * 1.1, self.cy + 0.17 + 0.01 * self.hh / 0.32
        lip_rgb = _mix(self.skin, (160, 60, 70), 0.45 if p.gender == "female" else 0.25)
        bend = 0.02 * n.smile
        gap = 0.025 * n.mouth_open
        upper = [self.xy(x - mw, y - bend), self.xy(x - mw * 0.4, y - lip), self.xy(x, y - lip * 0.7),
                 self.xy(x + mw * 0.4, y - lip), self.xy(x + mw, y - bend), self.xy(x, y + 0.003)]
        lower = [self.xy(x - mw, y - bend), self.xy(x, y + gap + lip * 1.3), self.xy(x + mw, y - bend),
                 self.xy(x, y + gap)]
        if gap > 0.002:
            self.d.polygon([self.xy(x - mw, y - bend), self.xy(x, y + gap + 0.004),
                            self.xy(x + mw, y - bend), self.xy(x, y)], fill=(70, 20, 25))
        self.d.polygon(upper, fill=lip_rgb)
        self.d.polygon(lower, fill=_shade(lip_rgb, 1.05))

    def beard(self):
        if not self.p.beard:
            return
        layer = Image.new("L", self.img.size, 0)
        d = ImageDraw.Draw(layer)
        outline = self.head_outline(grow=0.008)
        lower = [pt for pt in outline if pt[1] > (self.cy + 0.05) * self.s]
        d.polygon(lower, fill=255)
        x, y = self.cx + self.dx * 1.1, self.cy + 0.19
        d.ellipse(self.box(x - 0.07, y - 0.035, x + 0.07, y + 0.03), fill=0)
        layer = layer.filter(ImageFilter.GaussianBlur(0.006 * self.s))
        self.img.paste(Image.new("RGBA", self.img.size, (*self.hair, 255)), mask=layer)

    def front_hair(self):
        p = self.p
        top = self.cy - self.hh
        recede = 0.0
        if p.gender == "male":
            recede = max(0.0, (p.face_age - 35) / 40) * (0.5 if p.hair_style == 0 else 1.0)
            if p.hair_style == 2 and p.face_age > 50:
                recede = 1.2  # bald on top
        cap = Image.new("L", self.img.size, 0)
        d = ImageDraw.Draw(cap)
        d.polygon(self.head_outline(grow=0.02), fill=255)
        hairline = self.cy - self.hh * (0.45 + 0.35 * recede)
        d.rectangle(self.box(0, hairline, 1, 1), fill=0)
        if p.gender == "male" and recede < 1.2:  # sideburns down to the ears
            for side in (-1, 1):
                x = self.cx + side * self.hw
                d.rectangle(self.box(min(x, x - side * 0.035), hairline, max(x, x - side * 0.035),
                                     self.cy - 0.02), fill=255)
        if p.gender == "female" or p.hair_style == 1:  # a side parting sweeps over the forehead
            d.pieslice(self.box(self.cx - self.hw * 1.1, top - 0.02, self.cx + self.hw * 0.4,
                                self.cy - self.hh * 0.25), 180, 360, fill=255)
        self.img.paste(Image.new("RGBA", self.img.size, (*self.hair, 255)), mask=cap)

    def glasses(self):
        if not self.p.glasses:
            return
        spacing = self.eye_dx
        y = self.cy - 0.02
        w = max(2, int(0.008 * self.s))
        for side in (-1, 1):
            x = self.cx + self.dx + side * spacing
            self.d.rounded_rectangle(self.box(x - 0.07, y - 0.045, x + 0.07, y + 0.05),
                                     radius=0.02 * self.s, outline=(25, 25, 30), width=w)
        self.d.line([self.xy(self.cx + self.dx - spacing + 0.07, y),
                     self.xy(self.cx + self.dx + spacing - 0.07, y)], fill=(25, 25, 30), width=w)


def _background(n: FaceNuisance, side: int) -> Image.Image:
    t = np.linspace(0, 1, side)[:, None, None]
    a, b = (np.array(c, float) for c in n.background)
    grad = np.broadcast_to(a * (1 - t) + b * t, (side, side, 3))
    return Image.fromarray(grad.astype(np.uint8), "RGB")


def _place(face: Image.Image, n: FaceNuisance) -> Image.Image:
    """Yaw-like squash, then rotation, scale and shift about the centre."""
    side = face.size[0]
    if n.yaw:
        squash = 1 - 0.18 * abs(n.yaw)
        w = int(side * squash)
        face = face.resize((w, side), Image.BILINEAR)
        pad = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        pad.paste(face, ((side - w) // 2 + int(n.yaw * 0.04 * side), 0))
        face = pad
    face = face.rotate(n.rotation_deg, resample=Image.BICUBIC, center=(side / 2, side / 2))
    if n.scale != 1.0 or any(n.shift):
        w = int(side * n.scale)
        scaled = face.resize((w, w), Image.BICUBIC)
        out = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        out.paste(scaled, (int((side - w) / 2 + n.shift[0] * side),
                           int((side - w) / 2 + n.shift[1] * side)))
        face = out
    return face


def _light(img: Image.Image, n: FaceNuisance, rng: np.random.Generator) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32)
    side = arr.shape[0]
    if n.light_strength:
        yy, xx = np.mgrid[0:side, 0:side] / side - 0.5
        ramp = xx * np.cos(n.light_angle) + yy * np.sin(n.light_angle)
        arr = arr * (1 + 2 * n.light_strength * ramp)[..., None]
    if n.noise_sd:
        arr = arr + rng.normal(0, n.noise_sd, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def render_face(p: FaceParams, n: FaceNuisance, size: int = 128,
                rng: np.random.Generator | None = None, version: int = FACE_RENDER) -> Image.Image:
    """One RGB face image of `size` x `size` pixels, drawn by painter `version` (FACE_RENDER)."""
    side = size * SUPERSAMPLE
    face = _place(_Painter(p, n, side, version).paint(), n)
    img = _background(n, side)
    img.paste(face, mask=face.getchannel("A"))
    img = img.resize((size, size), Image.LANCZOS)
    return _light(img, n, rng or np.random.default_rng(0))


def drawn_box(p: FaceParams, n: FaceNuisance, size: int = 128) -> tuple[float, float, float, float]:
    """The face's box (x, y, width, height, in pixels of the `size` image) as render_face draws
    it: the head outline, hair and ears left out, moved by the same squash, rotation, scale and
    shift as _place. The generator knows it, so the manifest records it (the `drawn_box` column)
    instead of asking a detector, which finds about half of these cartoon faces."""
    pts = np.array(_Painter(p, n, 1).head_outline()) - 0.5
    x, y = pts[:, 0], pts[:, 1]
    if n.yaw:
        x = x * (1 - 0.18 * abs(n.yaw)) + n.yaw * 0.04
    t = np.radians(n.rotation_deg)  # PIL turns counter-clockwise as seen, y pointing down
    x, y = x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)
    x, y = x * n.scale + n.shift[0] + 0.5, y * n.scale + n.shift[1] + 0.5
    x0, y0 = x.min() * size, y.min() * size
    return (float(x0), float(y0), float(x.max() * size - x0), float(y.max() * size - y0))
