"""The audio front ends of Kim et al. 4.3 and Oh et al. sec. 3, checked by hand-computable numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from devtools.media_samples import wav_bytes
from facevoice.service.media import (
    AssociationAudio,
    Speech2FaceAudio,
    association_waveform,
    decode_audio,
    speech2face_spectrogram,
)
from facevoice.service.media.audio import complex_spectrogram, power_law, resample, tile_to_length
from facevoice.service.media.errors import MediaError
from tests.conftest import tone


def test_paper_shapes():
    assert AssociationAudio().samples == 220_500  # 10 s at 22,050 Hz
    assert Speech2FaceAudio().shape == (2, 598, 257)  # Oh et al. Table 1 input


def test_tile_back_to_back_then_trim():
    assert tile_to_length(np.array([1, 2, 3]), 7).tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert tile_to_length(np.arange(10), 4).tolist() == [0, 1, 2, 3]


def test_association_input_tiles_a_short_clip():
    x = tile_to_length(tone(sr=22_050, seconds=3.0), 220_500)
    assert x.shape == (220_500,) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:66_150], x[66_150:132_300])  # the 3 s clip repeats


def test_a_tone_is_not_speech_to_any_front_end():
    """The voice guard: a steady tone has no pauses, so every front end refuses it."""
    for front_end in (association_waveform, speech2face_spectrogram):
        with pytest.raises(MediaError, match="no speech found"):
            front_end(wav_bytes(tone(sr=22_050, seconds=3.0), 22_050))


def test_stereo_is_averaged_to_mono():
    left, right = tone(300), tone(300, amp=0.1)
    x, _sr = decode_audio(wav_bytes(np.stack([left, right], 1), 16_000, subtype="FLOAT"))
    np.testing.assert_allclose(x, (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("sr_in,sr_out", [(44_100, 22_050), (48_000, 16_000), (8_000, 22_050),
                                          (22_050, 16_000), (11_025, 16_000), (7_919, 16_000)])
def test_resampling_keeps_a_tone_at_its_frequency(sr_in, sr_out):
    y = resample(tone(440.0, sr=sr_in, seconds=2.0), sr_in, sr_out)
    assert abs(len(y) - 2 * sr_out) <= 2
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * sr_out / len(y)
    assert abs(peak_hz - 440.0) < 1.0


def test_resampling_suppresses_aliases():
    """A 10 kHz tone cannot exist at 16 kHz (Nyquist 8 kHz): a proper filter removes it."""
    y = resample(tone(10_000.0, sr=44_100, seconds=1.0), 44_100, 16_000)
    assert np.sqrt(np.mean(y[2000:-2000] ** 2)) < 0.01 * 0.5 / np.sqrt(2)


def test_stft_matches_torch():
    """Same windowed frames as torch.stft; torch centres the 400-sample window inside the 512
    FFT, which starts its frames 56 samples earlier and gives 597 frames, not the paper's 598."""
    cfg = Speech2FaceAudio()
    x = np.random.default_rng(0).standard_normal(cfg.samples)
    ref = torch.stft(torch.from_numpy(x), n_fft=512, hop_length=160, win_length=400,
                     window=torch.hann_window(400, dtype=torch.float64), center=False,
                     return_complex=True).T.numpy()
    ours = complex_spectrogram(x[56:], cfg)
    np.testing.assert_allclose(np.abs(ours[:597]), np.abs(ref), atol=1e-9)


def test_power_law_compresses_real_and_imaginary_parts_separately():
    out = power_law(np.array([[8 - 27j, -1 + 0j]]), 1 / 3)
    np.testing.assert_allclose(out[0], [[2.0, -1.0]], atol=1e-6)  # sgn(8)8^(1/3), sgn(-1)
    np.testing.assert_allclose(out[1], [[-3.0, 0.0]], atol=1e-6)  # sgn(-27)27^(1/3)


def test_speech2face_spectrogram_puts_a_tone_in_its_bin():
    cfg = Speech2FaceAudio()
    spec = power_law(complex_spectrogram(tile_to_length(tone(1000.0, sr=16_000, seconds=2.0), cfg.samples), cfg),
                     cfg.power)
    assert spec.shape == (2, 598, 257) and spec.dtype == np.float32
    magnitude = np.hypot(*(np.sign(spec) * np.abs(spec) ** (1 / 0.3)))
    assert np.argmax(magnitude.mean(axis=0)) == 32  # 1000 Hz / (16000 / 512) Hz per bin


@pytest.mark.parametrize("n, up, down", [(16000, 441, 320), (48000, 147, 320), (44100, 1, 2), (8000, 2, 1),
                                         (16000, 11, 8), (1000, 3, 7), (5, 441, 320), (1, 3, 2), (100, 997, 1000)])
def test_our_polyphase_resampler_is_scipys(n, up, down):
    """The service image has no scipy: audio.resample_poly stands in for scipy.signal.resample_poly
    (the function the released models were trained through), to float64 rounding."""
    from scipy.signal import resample_poly as scipys

    from facevoice.service.media.audio import resample_poly

    x = np.random.default_rng(n + up).standard_normal(n)
    ours, theirs = resample_poly(x, up, down), scipys(x, up, down)
    assert ours.shape == theirs.shape and np.max(np.abs(ours - theirs)) < 1e-12
    # scipy runs float32 input in float32: ours in float64 differs by float32's rounding alone
    x32 = x.astype(np.float32)
    assert np.max(np.abs(resample_poly(x32, up, down) - scipys(x32, up, down))) < 5e-6


def test_the_media_pipeline_decodes_and_resamples_without_scipy():
    import subprocess
    import sys

    script = ("import sys; sys.modules['scipy'] = None\n"
              "import numpy as np\n"
              "from facevoice.service.media.audio import resample\n"
              "y = resample(np.ones(16000, np.float32), 16000, 22050)\n"
              "assert len(y) == 22050 and abs(float(y[5000]) - 1) < 1e-3, y[5000]\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
