"""Cues measured from the media themselves, for the backbones' auxiliary heads (issue 30).

Unlike the generator's parameters, these can be measured on any corpus, so a recipe that uses
them carries over to VoxCeleb:

- voice: the median F0 of the voiced frames, by the same normalised autocorrelation the voice
  guard uses (service.media.speech), as log Hz;
- face: the face box's width over its height, as log. A detector's box on real photos (the
  manifest's `box`); on the synthetic corpus the box the generator drew (`drawn_box`), which is
  what the shipped corpus detector is trained to find.

Each is z-scored over the training items before a head regresses it.
"""

from __future__ import annotations

import numpy as np

from facevoice.service.corpus import Item
from facevoice.service.media.audio import resample
from facevoice.service.media.speech import MIN_PERIODICITY, VAD_RATE, _frames, autocorrelation

MEASURES = {"face": ("box_aspect",), "voice": ("log_f0",)}


def f0_track(x: np.ndarray, sr: int) -> np.ndarray:
    """F0 (Hz) of each voiced 30 ms frame of x (frames whose normalised autocorrelation at one
    period reaches MIN_PERIODICITY and that are within 35 dB of the loudest)."""
    y = resample(np.asarray(x, np.float64) - np.mean(x), sr, VAD_RATE)
    frames = _frames(y)
    if len(frames) == 0:
        return np.zeros(0)
    rms = np.sqrt((frames ** 2).mean(1))
    ac, lo = autocorrelation(frames)
    band = ac[:, lo:]
    best = band.max(1, keepdims=True)
    # the shortest lag within 10% of the best: a period's multiples correlate nearly as well
    # (the octave error of plain argmax, worst for high voices)
    lag = lo + (band >= 0.9 * best).argmax(1)
    voiced = (best[:, 0] >= MIN_PERIODICITY) & (rms >= rms.max() * 10 ** (-35 / 20))
    return VAD_RATE / lag[voiced]


def log_f0(x: np.ndarray, sr: int) -> float:
    """log of the median F0 over the voiced frames (NaN when none is voiced)."""
    track = f0_track(x, sr)
    return float(np.log(np.median(track))) if len(track) else float("nan")


def box_aspect(item: Item) -> float:
    """log(width / height) of the item's face box (NaN without one)."""
    text = item.box or item.drawn_box
    if not text:
        return float("nan")
    _, _, w, h = (float(v) for v in text.split())
    return float(np.log(w / h)) if w > 0 and h > 0 else float("nan")


def measure(modality: str, data, items: list[Item], sr: int) -> np.ndarray:
    """[N, len(MEASURES[modality])] for the decoded items (in the order of `items`)."""
    if modality == "face":
        return np.array([[box_aspect(i)] for i in items])
    return np.array([[log_f0(data[k], sr)] for k in range(len(items))])


def standardised(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-scores (NaN kept: a head skips them) and whether each row is usable."""
    ok = np.isfinite(values).all(1)
    mean, sd = values[ok].mean(0), values[ok].std(0) + 1e-9
    return np.where(ok[:, None], (values - mean) / sd, 0.0), ok
