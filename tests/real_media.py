"""The real-media test set, made at test time from what packages ship: real photos (scikit-image,
matplotlib), real speech (CMU ARCTIC, from pysptk's source package), music and sound effects
(pygame's wheel; both extracted by deploy/setup-debian.sh), espeak-ng's voices, and the variants a
user sends: other levels, leading silence or room tone, a DC offset, stereo, one channel inverted."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

MEDIA = Path(sys.prefix) / "share" / "facevoice-test-media"


def recording(name: str) -> tuple[np.ndarray, int]:
    """One of the extracted recordings as (mono float32, rate)."""
    x, sr = sf.read(MEDIA / name, dtype="float32", always_2d=True)
    return x.mean(axis=1), sr


def wav(x: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1, 1), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def room_tone(n: int, rng: np.random.Generator, level: float = 0.003) -> np.ndarray:
    """Pink noise: what an empty room records."""
    spectrum = np.fft.rfft(rng.standard_normal(n)) / np.sqrt(np.arange(n // 2 + 1) + 1)
    y = np.fft.irfft(spectrum, n)
    return (y / np.abs(y).max() * level).astype(np.float32)


def voice_variants(x: np.ndarray, sr: int) -> dict[str, bytes]:
    """The same speech as users send it; each should embed as the original does."""
    rng = np.random.default_rng(0)
    out = {f"{g:+d} dB": wav(x * 10 ** (g / 20), sr) for g in (-30, -20, -12, -6, 6)}
    for s in (1, 5, 10):
        out[f"{s} s of silence first"] = wav(np.concatenate([np.zeros(s * sr, np.float32), x]), sr)
        tone = room_tone(s * sr + len(x), rng)
        out[f"{s} s of room tone first"] = wav(tone + np.concatenate([np.zeros(s * sr, np.float32), x]), sr)
    out["DC offset 0.2"] = wav(x * 0.7 + 0.2, sr)
    out["stereo"] = wav(np.stack([x, x], 1), sr)
    out["stereo, one channel inverted"] = wav(np.stack([x, -x], 1), sr)
    return out


def not_speech(sr: int = 22_050) -> dict[str, bytes]:
    """What a voice front end must refuse, with the words its refusal carries."""
    rng = np.random.default_rng(1)
    house, hsr = recording("house_lo.wav")
    cosmic, csr = recording("secosmic_lo.wav")
    return {"silence": wav(np.zeros(4 * sr, np.float32), sr),
            "faint noise": wav(rng.standard_normal(4 * sr).astype(np.float32) * 0.003, sr),
            "white noise": wav(rng.standard_normal(4 * sr).astype(np.float32) * 0.1, sr),
            "room tone": wav(room_tone(4 * sr, rng, 0.05), sr),
            "house music (pygame)": wav(house, hsr),
            "synth music (pygame)": wav(cosmic, csr)}


def photo(name: str) -> Image.Image:
    import skimage
    from matplotlib import cbook

    if name == "grace_hopper.jpg":
        return Image.open(cbook.get_sample_data(name, asfileobj=False)).convert("RGB")
    return Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
