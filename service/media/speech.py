"""Speech detection, the voice guard and level: which 30 ms frames of a clip are speech, how much
speech it holds, the clip cut to its speech, and its level set over that speech.

A frame is speech when three things hold (`find_speech`):
- WebRTC's VAD (aggressiveness 3) hears speech in it. It runs on a copy whose loud frames (the
  95th percentile of frame RMS) are brought to -20 dBFS, so a clip at -50 dBFS is heard as one
  at 0 dB, and the DC offset is removed first;
- it is no more than 35 dB below those loud frames (room tone and breath are not speech);
- it lies within 150 ms of a voiced frame: one whose pre-emphasised signal repeats with a
  period of a voice's F0, 60-400 Hz (normalised autocorrelation at least 0.5). White, pink and
  room noise have no such period; the VAD alone takes loud broadband noise for speech.

Speech also pauses between syllables and words: in each second of it, about a third of the
frames are below half that second's mean level (Scheirer & Slaney's low-energy ratio, measured
0.29-0.36 on our speech, 10 dB SNR included). Music and noise fill those pauses (0.00-0.18
measured on pygame's music, synthesised melodies and chords, noise), so a clip whose speech
seconds have a ratio under `MIN_PAUSE_RATIO` is refused as "no speech found" too: noise and
music are refused, not scored (docs/media.md has the table).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facevoice.service.media.errors import InvalidSignalError

VAD_RATE = 16_000
FRAME_MS = 30
KEEP_MS = 150
WINDOW = 10  # frames: 300 ms, the run that trim_to_speech looks for
LOUD_PERCENTILE, LOUD_DBFS = 95, -20.0
ACTIVE_DB = -35.0  # below the loud frames: not speech
F0_RANGE = (60.0, 400.0)
MIN_PERIODICITY = 0.5
MIN_PAUSE_RATIO = 0.24
SECOND = 33  # frames in the low-energy ratio's window


@dataclass(frozen=True)
class SpeechFound:
    """What find_speech heard: one bool per 30 ms frame, and the clip's pause ratio."""

    speech: np.ndarray
    pause_ratio: float

    @property
    def seconds(self) -> float:
        return float(self.speech.sum()) * FRAME_MS / 1000


def _frames(y: np.ndarray) -> np.ndarray:
    step = VAD_RATE * FRAME_MS // 1000
    n = len(y) // step
    return y[: n * step].reshape(n, step)


def voiced_frames(x: np.ndarray, sr: int, aggressiveness: int = 3) -> np.ndarray:
    """One bool per 30 ms frame of x: does WebRTC's VAD hear speech in it (x as it is)."""
    from facevoice.service.media.audio import resample

    return _vad(resample(x, sr, VAD_RATE), aggressiveness)


def _vad(y: np.ndarray, aggressiveness: int = 3) -> np.ndarray:
    import webrtcvad

    if not 0 <= aggressiveness <= 3:
        raise ValueError("VAD aggressiveness is 0 (least) to 3 (most)")
    pcm = (np.clip(y, -1.0, 1.0) * 32767).astype("<i2")
    frames = _frames(pcm)
    vad = webrtcvad.Vad(aggressiveness)
    return np.fromiter((vad.is_speech(f.tobytes(), VAD_RATE) for f in frames), bool, len(frames))


def autocorrelation(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """Per frame: the normalised autocorrelation of its pre-emphasised signal at lags 0 up to the
    longest F0 period (F0_RANGE), corrected for the window's own taper; and the shortest period's
    lag, where the F0 range starts."""
    n = frames.shape[1]
    emphasised = np.concatenate([frames[:, :1], frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
    window = np.hanning(n)
    lo, hi = int(VAD_RATE / F0_RANGE[1]), int(VAD_RATE / F0_RANGE[0])
    size = _fft_size(n + hi)  # lags below hi do not wrap around: 768 points for 480, not 2 x 480
    spectrum = np.fft.rfft(emphasised * window, size, axis=1)
    ac = np.fft.irfft(np.abs(spectrum) ** 2, size, axis=1)[:, :hi]
    taper = np.correlate(window, window, "full")[n - 1:n - 1 + hi]
    return ac / np.maximum(ac[:, :1], 1e-20) / (taper / taper[0]), lo


def _fft_size(n: int) -> int:
    """The smallest 2^a x 3^b at least n (sizes pocketfft is fastest at)."""
    return min(p * 3 ** b for b in range(4) for p in [1 << max(0, (-(-n // 3 ** b) - 1).bit_length())])


def periodicity(frames: np.ndarray) -> np.ndarray:
    """Per frame: the highest normalised autocorrelation at a lag of one F0 period (F0_RANGE)."""
    ac, lo = autocorrelation(frames)
    return ac[:, lo:].max(axis=1)


def _near(mask: np.ndarray, frames: int) -> np.ndarray:
    """mask widened by `frames` on each side."""
    wide = np.convolve(mask.astype(np.int32), np.ones(2 * frames + 1, np.int32), mode="full") > 0
    return wide[frames:frames + len(mask)]


def pause_ratio(rms: np.ndarray, speech: np.ndarray) -> float:
    """The low-energy ratio over the seconds that are mostly speech: the share of frames below
    half their second's mean RMS (0 when no second is mostly speech)."""
    ratios = [np.mean(rms[i:i + SECOND] < 0.5 * rms[i:i + SECOND].mean())
              for i in range(0, max(1, len(rms) - SECOND + 1), SECOND // 2)
              if speech[i:i + SECOND].mean() > 0.5 and rms[i:i + SECOND].mean() > 0]
    return float(np.mean(ratios)) if ratios else 0.0


def find_speech(x: np.ndarray, sr: int) -> SpeechFound:
    """Which 30 ms frames of x are speech (the module docstring's three rules)."""
    from facevoice.service.media.audio import resample

    y = resample(x - x.mean(dtype=np.float64), sr, VAD_RATE)
    frames = _frames(y)
    if len(frames) == 0:
        return SpeechFound(np.zeros(0, bool), 0.0)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    loud = np.percentile(rms, LOUD_PERCENTILE)
    if loud <= 0:
        return SpeechFound(np.zeros(len(frames), bool), 0.0)
    gain = 10 ** (LOUD_DBFS / 20) / loud
    active = rms >= loud * 10 ** (ACTIVE_DB / 20)
    voiced = np.zeros(len(frames), bool)  # periodicity on the active frames only: the rest cannot be voiced
    voiced[active] = periodicity(frames[active]) >= MIN_PERIODICITY
    speech = _vad(y * gain) & active & _near(voiced, KEEP_MS // FRAME_MS)
    return SpeechFound(speech, pause_ratio(rms, speech))


def require_speech(found: SpeechFound, min_seconds: float) -> None:
    """InvalidSignalError "no speech found" unless the clip holds `min_seconds` of speech that
    pauses as speech does."""
    if found.seconds < min_seconds:
        raise InvalidSignalError(f"audio: no speech found ({found.seconds:.2f} s of speech, "
                                 f"{min_seconds:g} s needed)")
    if found.pause_ratio < MIN_PAUSE_RATIO:
        raise InvalidSignalError(
            f"audio: no speech found (it sounds like music or noise: {found.pause_ratio:.2f} of its frames "
            f"pause, speech pauses in at least {MIN_PAUSE_RATIO:g})")


def _samples(frame: int, sr: int) -> int:
    return round(frame * FRAME_MS * sr / 1000)


def speech_only(x: np.ndarray, sr: int, found: SpeechFound) -> np.ndarray:
    """x cut to its speech: every run of speech frames with KEEP_MS either side, back to back
    (leading silence, room tone and long pauses left out)."""
    keep = _near(found.speech, KEEP_MS // FRAME_MS)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    runs = [x[_samples(a, sr):min(len(x), _samples(b, sr))] for a, b in zip(edges[::2], edges[1::2], strict=True)]
    return np.concatenate(runs) if runs else x[:0]


def speech_rms(x: np.ndarray, sr: int, found: SpeechFound) -> float:
    """The RMS of x over its speech frames (DC removed)."""
    if not found.speech.any():
        speech = x
    else:  # the speech frames' samples, in order: x[_samples(i, sr):_samples(i + 1, sr)] for each
        bounds = np.minimum(np.round(np.arange(len(found.speech) + 1) * (FRAME_MS * sr / 1000)).astype(np.int64),
                            len(x))
        mask = np.zeros(len(x), bool)
        mask[:bounds[-1]] = np.repeat(found.speech, np.diff(bounds))
        speech = x[mask]
    return float(np.sqrt(np.mean((speech - x.mean(dtype=np.float64)) ** 2)))


def set_level(x: np.ndarray, rms: float, dbfs: float) -> np.ndarray:
    """x without its DC offset, scaled so that `rms` (its speech's) becomes `dbfs`."""
    x = x - np.float32(x.mean(dtype=np.float64))
    return (x * np.float32(10 ** (dbfs / 20) / max(rms, 1e-9))).astype(np.float32)


def trim_to_speech(x: np.ndarray, sr: int, min_speech_seconds: float = 0.5, aggressiveness: int = 3) -> np.ndarray:
    """The older front end (`vad` without a level): x from its first to its last 300 ms window
    that is at least half voiced by WebRTC's VAD alone, plus KEEP_MS each side; InvalidSignalError
    "no speech found" when fewer than `min_speech_seconds` of its frames are voiced."""
    voiced = voiced_frames(x, sr, aggressiveness)
    speech_s = voiced.sum() * FRAME_MS / 1000
    dense = np.convolve(voiced.astype(np.int32), np.ones(WINDOW, np.int32), mode="valid") * 2 >= WINDOW
    if speech_s < min_speech_seconds or not dense.any():
        raise InvalidSignalError(f"audio: no speech found ({speech_s:.2f} s of speech, "
                                 f"{min_speech_seconds:g} s needed)")
    on = np.flatnonzero(dense)
    frame = FRAME_MS * sr // 1000
    keep = KEEP_MS * sr // 1000
    start = max(0, on[0] * frame - keep)
    end = min(len(x), (on[-1] + WINDOW) * frame + keep)
    return x[start:end]
