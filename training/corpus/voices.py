"""Voice clips: espeak-ng reads public-domain sentences with a person's `VoiceParams`.

The sentence pool is the inaugural-address passages that Kim et al. 2018 (appendix A.1) had
their participants read. Per clip: a sentence, speed +-10%, gain, noise at 10-30 dB SNR and,
sometimes, room reverb.
"""

from __future__ import annotations

import io
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve

from facevoice.training.corpus.people import VoiceParams

ESPEAK = "espeak-ng"
SAMPLE_RATE = 22050  # espeak-ng's native rate
PASSAGES = Path(__file__).with_name("passages.txt")


class SpeechSynthesisError(RuntimeError):
    """espeak-ng is missing or produced no audio."""


@cache
def sentences(min_words: int = 12) -> tuple[str, ...]:
    """The passages cut into utterances of at least `min_words` words (whole sentences)."""
    out = []
    for passage in PASSAGES.read_text(encoding="utf-8").splitlines():
        current: list[str] = []
        for sentence in re.split(r"(?<=[.;:])\s+", passage.strip()):
            current.append(sentence)
            if sum(len(s.split()) for s in current) >= min_words:
                out.append(" ".join(current))
                current = []
        if current:
            out.append(" ".join(current))
    return tuple(out)


@dataclass(frozen=True)
class ClipNuisance:
    """Per-clip conditions."""

    sentence: int
    speed_factor: float = 1.0
    gain_db: float = 0.0
    snr_db: float | None = None  # None: no added noise
    reverb_rt60: float | None = None  # seconds; None: dry
    noise_seed: int = 0

    @staticmethod
    def sample(rng: np.random.Generator) -> ClipNuisance:
        return ClipNuisance(
            sentence=int(rng.integers(len(sentences()))),
            speed_factor=float(rng.uniform(0.9, 1.1)),
            gain_db=float(rng.uniform(-12, 0)),
            snr_db=float(rng.uniform(10, 30)),
            reverb_rt60=float(rng.uniform(0.2, 0.6)) if rng.random() < 0.3 else None,
            noise_seed=int(rng.integers(2**31)),
        )


def espeak_command(v: VoiceParams, speed_factor: float = 1.0) -> list[str]:
    """The espeak-ng command line for a voice (SSML on stdin carries the pitch range)."""
    return [
        ESPEAK, "-m", "--stdin", "--stdout", "-z",
        "-v", f"{v.accent}+{v.variant}",
        "-p", str(int(np.clip(round(v.pitch), 0, 99))),
        "-s", str(int(np.clip(round(v.speed * speed_factor), 80, 400))),
    ]


def speak(v: VoiceParams, text: str, speed_factor: float = 1.0) -> np.ndarray:
    """Dry speech as float32 at SAMPLE_RATE."""
    ssml = f'<speak><prosody range="{v.pitch_range:.0f}">{escape(text)}</prosody></speak>'
    try:
        done = subprocess.run(espeak_command(v, speed_factor), input=ssml.encode(),
                              capture_output=True, timeout=60, check=True)
    except FileNotFoundError as e:
        raise SpeechSynthesisError(f"{ESPEAK} not found: install it (apt-get install espeak-ng)") from e
    except subprocess.CalledProcessError as e:
        raise SpeechSynthesisError(f"{ESPEAK} failed: {e.stderr.decode(errors='replace')}") from e
    audio, sr = sf.read(io.BytesIO(done.stdout), dtype="float32")
    if sr != SAMPLE_RATE or audio.size == 0:
        raise SpeechSynthesisError(f"{ESPEAK} gave {audio.size} samples at {sr} Hz for {v.accent}")
    return audio


def _reverb(x: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room: exponentially decaying noise impulse response, 60 dB down at rt60."""
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n) * 10 ** (-3 * t / rt60)
    ir[0] = 1.0
    wet = fftconvolve(x, ir)[: len(x)]
    return (wet * np.sqrt(np.sum(x**2) / max(np.sum(wet**2), 1e-12))).astype(np.float32)


def apply_nuisance(x: np.ndarray, n: ClipNuisance) -> np.ndarray:
    """Reverb, noise at the clip's SNR, gain; scaled down only if it would clip."""
    rng = np.random.default_rng(n.noise_seed)
    if n.reverb_rt60:
        x = _reverb(x, n.reverb_rt60, rng)
    if n.snr_db is not None:
        power = np.mean(x**2)
        x = x + rng.standard_normal(len(x)).astype(np.float32) * np.sqrt(power / 10 ** (n.snr_db / 10))
    x = x * 10 ** (n.gain_db / 20)
    peak = np.max(np.abs(x))
    return (x / peak * 0.99 if peak > 0.99 else x).astype(np.float32)


def synthesize_clip(v: VoiceParams, n: ClipNuisance) -> np.ndarray:
    """One finished clip as float32 at SAMPLE_RATE."""
    return apply_nuisance(speak(v, sentences()[n.sentence], n.speed_factor), n)
