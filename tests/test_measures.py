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


def test_each_clips_f0_and_each_speakers_median():
    """clip_f0: YIN's median per clip (NaN for silence); speaker_f0: the median of a speaker's clips."""
    from facevoice.training.association.measures import clip_f0, speaker_f0

    t = np.arange(22050) / 22050
    waves = np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in (100.0, 110.0, 150.0, 200.0)] + [0 * t])
    f0 = clip_f0(waves, 22050)
    np.testing.assert_allclose(f0[:4], [100, 110, 150, 200], rtol=0.01)
    assert np.isnan(f0[4])
    speaker = speaker_f0(f0, np.array([0, 0, 0, 1, 2]), 4)  # speaker 2 silent, 3 without clips
    np.testing.assert_allclose(speaker[:2], [110, 200], rtol=0.01)
    assert np.isnan(speaker[2:]).all()


def _pitch_corpus(out, voices=("en-us+m3", "en-us+f2", "en-gb+f2"), pitches=(20, 40, 60, 80)):
    """A corpus of one espeak-ng clip per (voice, -p) speaker and its identities.csv; the en-gb
    speakers are the ones a check can leave out by accent."""
    import csv
    import shutil
    import subprocess

    from facevoice.service.corpus import write_manifest

    items, rows = [], []
    for v in voices:
        for p in pitches[:1] if v.startswith("en-gb") else pitches:
            ident = f"{v}-{p}"
            wav = subprocess.run([shutil.which("espeak-ng"), "--stdout", "-p", str(p), "-v", v,
                                  "Four score and seven years ago."], check=True, capture_output=True).stdout
            (out / f"{ident}.wav").write_bytes(wav)
            gender = "male" if "+m" in v else "female"
            items.append(Item(ident, ident, "voice", f"{ident}.wav", "test", gender=gender))
            rows.append({"identity": ident, "gender": gender, "voice_accent": v.split("+")[0],
                         "voice_variant": v[-2:], "voice_pitch": p})
    write_manifest(out, items)
    with (out / "identities.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def test_f0_against_the_generators_pitch_setting(tmp_path):
    """On four speakers a gender at -p 20..80, log F0 rises with -p: r near 1 for each gender,
    men near 100 Hz and women near 200 Hz in the middle."""
    from facevoice.service.errors import CorpusError
    from facevoice.training.association.measures import f0_against_pitch

    corpus = _pitch_corpus(tmp_path)
    assert f0_against_pitch(corpus, progress=False)["female"]["speakers"] == 5  # one en-gb woman too
    found = f0_against_pitch(corpus, progress=False, skip_accents=("en-gb",))
    assert set(found) == {"female", "male"}
    for g in found.values():
        assert g["speakers"] == 4 and g["r"] > 0.98 and g["r_within_variant"] == pytest.approx(g["r"])
    assert 80 < found["male"]["median_hz"] < 125 and 160 < found["female"]["median_hz"] < 230
    (tmp_path / "identities.csv").unlink()
    with pytest.raises(CorpusError, match="voice_pitch"):
        f0_against_pitch(tmp_path, progress=False)
