"""Cues measured from the media (training.association.measures): F0 and the face box's aspect."""

from __future__ import annotations

import numpy as np
import pytest

from facevoice.service.corpus import Item
from facevoice.training.association.measures import box_aspect, f0_track, log_f0, standardised
from tests.toy_corpus import _speech


def _voiced(f0: float, sr: int = 22050, seconds: float = 1.5) -> np.ndarray:
    """A vowel-like tone: ten harmonics of f0 with falling amplitude, a little noise."""
    t = np.arange(int(sr * seconds)) / sr
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 11))
    return (0.1 * x + 0.001 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize("f0", [85.0, 120.0, 210.0, 320.0])
def test_f0_of_a_harmonic_tone(f0):
    """High voices too: the shortest good period is taken, not a multiple of it."""
    assert np.exp(log_f0(_voiced(f0), 22050)) == pytest.approx(f0, rel=0.03)


def test_f0_follows_espeaks_pitch():
    low, high = (np.exp(log_f0(*_speech(p))) for p in (20, 80))
    assert 60 < low < high < 400 and high / low > 1.3


def test_silence_and_noise_have_no_f0():
    assert np.isnan(log_f0(np.zeros(22050, np.float32), 22050))
    noise = np.random.default_rng(1).standard_normal(22050).astype(np.float32) * 0.1
    assert len(f0_track(noise, 22050)) < 3  # white noise has no period


def _item(box: str = "", drawn: str = "") -> Item:
    return Item("i", "p", "face", "f.png", "train", box=box, drawn_box=drawn)


def test_box_aspect_prefers_a_detectors_box():
    assert box_aspect(_item(drawn="0 0 60 80")) == pytest.approx(np.log(0.75))
    assert box_aspect(_item(box="1 2 50 50", drawn="0 0 60 80")) == pytest.approx(0.0)
    assert np.isnan(box_aspect(_item())) and np.isnan(box_aspect(_item(drawn="0 0 0 80")))


def test_standardised_keeps_unmeasured_rows_out():
    z, ok = standardised(np.array([[1.0], [3.0], [np.nan]]))
    assert ok.tolist() == [True, True, False]
    np.testing.assert_allclose(z[:2, 0], [-1, 1], atol=1e-6)
    assert z[2, 0] == 0
