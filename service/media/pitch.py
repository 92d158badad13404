"""F0 measured from a voice: YIN (de Cheveigné & Kawahara 2002, "YIN, a fundamental frequency
estimator for speech and music", JASA 111(4)).

Per 10 ms frame, on the signal resampled to 16 kHz with its mean removed, the paper's steps:

2. the difference function d(τ) = Σ_j (x_j − x_{j+τ})² over a 25 ms window, from one FFT
   cross-correlation and running sums of energy;
3. the cumulative mean normalised difference d'(τ) = d(τ) / ((1/τ) Σ_{k≤τ} d(k)), d'(0) = 1,
   which no longer dips at τ = 0 and needs no upper bound on the lag's own level;
4. the absolute threshold: the smallest τ in the F0 range whose d' falls below `threshold`
   (0.1, the paper's value), followed down to the bottom of its dip; when no dip goes that
   deep, the range's global minimum. Taking the first dip, not the deepest, is what keeps a
   period's multiples (the octave below) out;
5. parabolic interpolation of d' around the chosen lag, for a period in fractions of a sample.

A frame is voiced when its dip's d' (the aperiodicity) is below `voicing` and the frame is
within `active_db` of the clip's loudest; the others are NaN. White noise has d' near 1 at every
lag and silence no level, so neither has an F0. The clip's F0 is the median over its voiced
frames (`median_f0`; NaN when none is voiced).

The F0 range is 50-500 Hz: espeak-ng's en-us voices span about 60-350 Hz across `-p` 0..99 (male
variants near 100 Hz at the default pitch, female ones near 200 Hz; tests/test_pitch.py), and
adult speech about 60-400 Hz.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facevoice.service.errors import UsageError
from facevoice.service.media.audio import resample

RATE = 16_000  # Hz: what YIN runs at
HOP_MS = 10.0
WINDOW_MS = 25.0  # the integration window of d(τ)
F0_MIN, F0_MAX = 50.0, 500.0
THRESHOLD = 0.1  # step 4's absolute threshold (the paper's value)
VOICING = 0.25  # the largest aperiodicity of a voiced frame
ACTIVE_DB = -35.0  # frames further below the loudest are not voiced (breath, room tone)


@dataclass(frozen=True)
class PitchTrack:
    """Per frame (hop `hop_s` seconds): F0 in Hz (NaN unvoiced) and the aperiodicity d' at the
    chosen lag (1.0 where the frame is silent)."""

    f0: np.ndarray
    aperiodicity: np.ndarray
    hop_s: float = HOP_MS / 1000

    @property
    def voiced(self) -> np.ndarray:
        return np.isfinite(self.f0)

    def median(self) -> float:
        """The median F0 over the voiced frames (NaN when none is)."""
        v = self.f0[self.voiced]
        return float(np.median(v)) if len(v) else float("nan")


def _frames(y: np.ndarray, length: int, hop: int) -> np.ndarray:
    n = 1 + (len(y) - length) // hop if len(y) >= length else 0
    if n == 0:
        return np.zeros((0, length))
    return np.lib.stride_tricks.sliding_window_view(y, length)[::hop][:n]


def cmnd(frames: np.ndarray, window: int, max_lag: int) -> np.ndarray:
    """Steps 2-3 for each frame (rows at least window + max_lag long): d'(τ) for τ = 0..max_lag."""
    frames = np.asarray(frames, np.float64)
    n = frames.shape[1]
    size = 1 << int(np.ceil(np.log2(n + window)))
    head = np.fft.rfft(frames[:, :window], size, axis=1)
    whole = np.fft.rfft(frames, size, axis=1)
    r = np.fft.irfft(np.conj(head) * whole, size, axis=1)[:, :max_lag + 1]  # Σ_j x_j x_{j+τ}
    power = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames ** 2, axis=1)], axis=1)
    energy = power[:, window:window + max_lag + 1] - power[:, :max_lag + 1]  # Σ_j x_{j+τ}²
    d = np.maximum(energy[:, :1] + energy - 2 * r, 0.0)
    d[:, 0] = 0.0
    mean = np.cumsum(d[:, 1:], axis=1) / np.arange(1, max_lag + 1)
    out = np.ones_like(d)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, 1:] = np.where(mean > 0, d[:, 1:] / mean, 1.0)
    return out


def _choose(dn: np.ndarray, lo: int, threshold: float) -> np.ndarray:
    """Step 4: per row, the lag of the first dip of dn[:, lo:] below `threshold`, at its bottom;
    without one, the global minimum."""
    band = dn[:, lo:-1]  # the last lag is kept for the parabola
    below = band < threshold
    first = below.argmax(axis=1)
    cols = np.arange(band.shape[1])
    rising = np.concatenate([band[:, 1:] >= band[:, :-1], np.ones((len(band), 1), bool)], axis=1)
    bottom = (rising & (cols[None, :] >= first[:, None])).argmax(axis=1)
    lag = np.where(below.any(axis=1), bottom, band.argmin(axis=1))
    return lo + lag


def _parabola(dn: np.ndarray, lag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 5: the vertex of the parabola through d' at lag-1, lag, lag+1 (lag and value)."""
    rows = np.arange(len(lag))
    a, b, c = dn[rows, lag - 1], dn[rows, lag], dn[rows, lag + 1]
    curve = a - 2 * b + c
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where(curve > 0, 0.5 * (a - c) / curve, 0.0)
    shift = np.clip(shift, -0.5, 0.5)
    return lag + shift, np.minimum(b, b - 0.25 * (a - c) * shift)


def yin(x: np.ndarray, sr: int, fmin: float = F0_MIN, fmax: float = F0_MAX, threshold: float = THRESHOLD,
        voicing: float = VOICING, active_db: float = ACTIVE_DB, hop_ms: float = HOP_MS) -> PitchTrack:
    """The F0 track of a mono signal x at sr (the module docstring's steps); UsageError for a
    range or threshold that cannot work."""
    if not 0 < fmin < fmax <= RATE / 4:
        raise UsageError(f"F0 range {fmin}-{fmax} Hz: need 0 < fmin < fmax <= {RATE // 4} Hz")
    if not 0 < threshold <= voicing <= 1:
        raise UsageError(f"thresholds {threshold} (dip) and {voicing} (voicing): need 0 < dip <= voicing <= 1")
    y = np.asarray(x, np.float64).ravel()
    y = resample(y - (y.mean() if len(y) else 0.0), sr, RATE).astype(np.float64)
    window, hop = round(RATE * WINDOW_MS / 1000), round(RATE * hop_ms / 1000)
    lo, max_lag = int(np.floor(RATE / fmax)), int(np.ceil(RATE / fmin))
    frames = _frames(y, window + max_lag + 1, hop)
    if len(frames) == 0:
        return PitchTrack(np.zeros(0), np.zeros(0), hop / RATE)
    dn = cmnd(frames, window, max_lag + 1)
    period, aperiodicity = _parabola(dn, _choose(dn, lo, threshold))
    level = (frames[:, :window] ** 2).mean(axis=1)
    active = (level > 0) & (level >= level.max() * 10 ** (active_db / 10))
    voiced = active & (aperiodicity < voicing) & (period >= RATE / fmax) & (period <= RATE / fmin)
    aperiodicity = np.where(level > 0, aperiodicity, 1.0)
    return PitchTrack(np.where(voiced, RATE / period, np.nan), aperiodicity, hop / RATE)


def median_f0(x: np.ndarray, sr: int, **settings) -> float:
    """The clip's F0 in Hz: the median over its voiced frames (NaN when none is voiced)."""
    return yin(x, sr, **settings).median()
