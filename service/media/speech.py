"""Speech detection: WebRTC's voice activity detector (webrtcvad), in-process.

`trim_to_speech` keeps a clip from the first to the last 300 ms window in which at least half
of the 30 ms frames are voiced (so a stray false positive in the silence does not count), with
150 ms kept either side so word onsets are not clipped, and refuses a clip with less speech
than asked: "no speech found". Decisions are made on a 16 kHz copy; the samples returned are the
original's. Like any energy-and-spectrum VAD it hears loud broadband noise as speech.
"""

from __future__ import annotations

import numpy as np

from facevoice.service.media.errors import InvalidSignalError

VAD_RATE = 16_000
FRAME_MS = 30
KEEP_MS = 150
WINDOW = 10  # frames: 300 ms


def voiced_frames(x: np.ndarray, sr: int, aggressiveness: int = 3) -> np.ndarray:
    """One bool per 30 ms frame of x: does WebRTC's VAD hear speech in it."""
    import webrtcvad

    from facevoice.service.media.audio import resample

    if not 0 <= aggressiveness <= 3:
        raise ValueError("VAD aggressiveness is 0 (least) to 3 (most)")
    y = resample(x, sr, VAD_RATE)
    pcm = (np.clip(y, -1.0, 1.0) * 32767).astype("<i2")
    step = VAD_RATE * FRAME_MS // 1000
    vad = webrtcvad.Vad(aggressiveness)
    n = len(pcm) // step
    return np.fromiter((vad.is_speech(pcm[i * step:(i + 1) * step].tobytes(), VAD_RATE) for i in range(n)), bool, n)


def trim_to_speech(x: np.ndarray, sr: int, min_speech_seconds: float = 0.5, aggressiveness: int = 3) -> np.ndarray:
    """x from its first to its last voiced frame (plus KEEP_MS each side); InvalidSignalError
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
