"""Audio bytes -> model inputs: decode, mono, polyphase resample, the two papers' front ends."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from math import gcd

import numpy as np
import soundfile as sf

from facevoice.service.media.containers import decode_container, sniff
from facevoice.service.media.errors import (
    EmptyMediaError,
    InvalidSignalError,
    MediaDecodeError,
    MediaError,
    MediaTooLargeError,
)
from facevoice.service.media.limits import DEFAULT_LIMITS, MediaLimits, check_size

MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4_000, 192_000
MAX_CHANNELS = 32
_BLOCK = 1 << 16


@dataclass(frozen=True)
class AssociationAudio:
    """Kim et al. 2018 sec. 4.3: 22,050 Hz, 10 s, shorter clips tiled back to back, then trimmed."""

    sample_rate: int = 22_050
    seconds: float = 10.0
    # Not in the paper. Every clip must hold min_speech_seconds of speech (speech.py), whatever
    # the rest says. vad: the seconds are taken from the speech found (with level_dbfs set),
    # or, in the older front end (level_dbfs None), from its first to its last speech;
    # level_dbfs: the speech's RMS is brought to this level first (None: as decoded).
    vad: bool = False
    min_speech_seconds: float = 0.5
    level_dbfs: float | None = None

    @property
    def samples(self) -> int:
        return round(self.sample_rate * self.seconds)


@dataclass(frozen=True)
class Speech2FaceAudio:
    """Oh et al. 2019 sec. 3 (implementation details): 16 kHz, 6 s (repeated if shorter), STFT
    with a 25 ms Hann window, 10 ms hop, 512-point FFT, sgn(S)|S|^0.3 on real and imaginary parts."""

    sample_rate: int = 16_000
    seconds: float = 6.0
    window_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    power: float = 0.3
    vad: bool = False  # as AssociationAudio's vad, min_speech_seconds and level_dbfs
    min_speech_seconds: float = 0.5
    level_dbfs: float | None = None

    @property
    def samples(self) -> int:
        return round(self.sample_rate * self.seconds)

    @property
    def window(self) -> int:
        return round(self.sample_rate * self.window_ms / 1000)

    @property
    def hop(self) -> int:
        return round(self.sample_rate * self.hop_ms / 1000)

    @property
    def shape(self) -> tuple[int, int, int]:
        """[real/imag, time, frequency]: (2, 598, 257) for the paper's 6 s."""
        return (2, 1 + (self.samples - self.window) // self.hop, self.n_fft // 2 + 1)


def decode_audio(data: bytes, limits: MediaLimits = DEFAULT_LIMITS) -> tuple[np.ndarray, int]:
    """Audio bytes -> (mono float32 samples, sample rate), within `limits`. WAV, FLAC and
    Ogg/Vorbis through libsndfile (what the training corpora are); MP3, AAC/M4A, Opus, WebM, MP4
    and MKV (their audio track) through FFmpeg's libraries (`containers.py`)."""
    check_size(data, limits, "audio")
    kind = sniff(data)
    if kind not in ("wav", "flac", "ogg"):
        return _decode_ffmpeg(data, limits)
    if kind == "wav":
        data = wav_with_data_size(data)
    try:
        return _decode_sndfile(data, limits)
    except MediaDecodeError:
        if kind != "ogg" or b"OpusHead" not in bytes(data[:128]):
            raise
        return _decode_ffmpeg(data, limits)  # Ogg/Opus, which libsndfile may not read


def wav_with_data_size(data: bytes) -> bytes:
    """A WAV whose `data` chunk says 0 bytes (what a recorder that streams, or one that died
    before it could go back to the header, leaves) with the size of what the file holds."""
    head = bytes(data[:4096])
    at = 12
    while at + 8 <= len(head):
        chunk, size = head[at:at + 4], int.from_bytes(head[at + 4:at + 8], "little")
        if chunk == b"data":
            if size != 0 or len(data) <= at + 8:
                return data
            fixed = bytearray(data)
            fixed[at + 4:at + 8] = (len(data) - at - 8).to_bytes(4, "little")
            return bytes(fixed)
        at += 8 + size + (size & 1)
    return data


def _decode_ffmpeg(data: bytes, limits: MediaLimits) -> tuple[np.ndarray, int]:
    x, sr = decode_container(data, limits)
    _check_header(sr, 1, 0, limits)
    _check_signal(x, sr, limits)
    return x, sr


def _decode_sndfile(data: bytes, limits: MediaLimits) -> tuple[np.ndarray, int]:
    try:
        with sf.SoundFile(io.BytesIO(bytes(data))) as f:
            sr, channels, frames = f.samplerate, f.channels, f.frames
            _check_header(sr, channels, frames, limits)
            cap = int(limits.max_audio_seconds * sr)
            blocks = []
            read = 0
            while read <= cap:  # read in blocks and downmix as we go: memory stays mono
                block = f.read(min(_BLOCK, cap + 1 - read), dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                blocks.append(block[:, 0] if channels == 1 else downmix(block))
                read += len(block)
    except MediaError:
        raise
    except Exception as e:  # libsndfile's many complaints about bad files, as one type
        why = getattr(e, "error_string", None) or str(e)  # libsndfile's words, without a repr
        raise MediaDecodeError(f"audio: not a readable WAV/FLAC/OGG file ({why})") from e
    x = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    _check_signal(x, sr, limits)
    return x, sr


def downmix(block: np.ndarray) -> np.ndarray:
    """[frames, channels] -> mono: the mean after turning over any channel that runs against the
    first (a phase-inverted channel would otherwise cancel the voice into silence)."""
    signs = np.sign(block[:, :1].T @ block)[0]
    signs[signs == 0] = 1
    return (block * signs).mean(axis=1).astype(np.float32, copy=False)


def _check_header(sr: int, channels: int, frames: int, limits: MediaLimits) -> None:
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise MediaDecodeError(
            f"audio: sample rate {sr} Hz outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise MediaDecodeError(f"audio: {channels} channels (1-{MAX_CHANNELS} supported)")
    if 0 < frames < 2**62 and frames / sr > limits.max_audio_seconds:
        raise MediaTooLargeError(
            f"audio: {frames / sr:.1f} s is over the {limits.max_audio_seconds:g} s limit")


def _check_signal(x: np.ndarray, sr: int, limits: MediaLimits) -> None:
    if x.size == 0:
        raise EmptyMediaError("audio: no samples could be decoded (zero-length or truncated file)")
    if x.size > limits.max_audio_seconds * sr:
        raise MediaTooLargeError(f"audio: longer than the {limits.max_audio_seconds:g} s limit")
    hi, lo = float(x.max()), float(x.min())  # NaN and Inf reach these; no temporary arrays
    if not (np.isfinite(hi) and np.isfinite(lo)):
        raise InvalidSignalError("audio: contains NaN or Inf samples")
    if x.size < limits.min_audio_seconds * sr:
        raise InvalidSignalError(
            f"audio: {x.size / sr * 1000:.0f} ms is shorter than {limits.min_audio_seconds:g} s")
    peak = max(hi, -lo)
    if peak < 10 ** (limits.silence_peak_dbfs / 20):
        level = -np.inf if peak == 0 else 20 * np.log10(peak)
        raise InvalidSignalError(
            f"audio: silent (peak {level:.0f} dBFS, below {limits.silence_peak_dbfs:g} dBFS)")


def speech_of(data: bytes, cfg: AssociationAudio | Speech2FaceAudio, limits: MediaLimits) -> tuple[np.ndarray, int]:
    """Decoded and guarded (no speech, no answer: InvalidSignalError), then cut to its speech and
    set to its level as the front end asks."""
    from facevoice.service.media import speech

    x, sr = decode_audio(data, limits)
    found = speech.find_speech(x, sr)
    speech.require_speech(found, cfg.min_speech_seconds)
    if cfg.level_dbfs is None:
        return (speech.trim_to_speech(x, sr, cfg.min_speech_seconds) if cfg.vad else x), sr
    level = speech.speech_rms(x, sr, found)
    if cfg.vad:
        x = speech.speech_only(x, sr, found)
    return speech.set_level(x, level, cfg.level_dbfs), sr


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling (Kaiser-windowed FIR); exotic rate ratios approximated to 1e-6."""
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    ratio = Fraction(sr_out, sr_in).limit_denominator(1000)
    return resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float32)


def resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """scipy.signal.resample_poly's defaults (a Kaiser-windowed (beta 5) low-pass FIR of 20 x
    max(up, down) + 1 taps, zero padding, the same alignment), in numpy, in float64: the service
    image carries no scipy for this one function. tests/test_media_audio.py holds it to scipy's.

    Output k is the `taps` samples of the zero-padded input ending at k * down // up, dotted with
    the filter's phase (k * down) % up. Every `up` outputs the input moves on by `down` samples
    and the phases repeat, so the outputs are a matrix product: the input cut into rows that
    start `down` samples apart, times the filter laid out as one banded matrix per group of
    phases (_polyphase_plan, made once per ratio). A handful of BLAS calls instead of one per
    phase, as fast as scipy's compiled loop (bench: decode in benchmarks.md)."""
    g = gcd(up, down)
    up, down = up // g, down // g
    x = np.asarray(x, np.float64)
    if up == down == 1:
        return x.copy()
    n_in = len(x)
    n_out = -(-n_in * up // down)
    first, taps, span, groups = _polyphase_plan(up, down)
    q0, q1 = first // up, (first + n_out - 1) // up + 1  # the rows of `up` outputs that hold ours
    need = (q1 - 1) * down + span  # the padded input the last row reads
    xp = np.zeros(max(need, taps - 1 + n_in))
    xp[taps - 1:taps - 1 + n_in] = x  # x[i] at xp[i + taps - 1]
    rows = np.lib.stride_tricks.as_strided(xp[q0 * down:], shape=(q1 - q0, span),
                                           strides=(down * xp.strides[0], xp.strides[0]), writeable=False)
    out = np.empty((q1 - q0, up))
    with _ONE_BLAS_THREAD:
        for r0, r1, s0, s1, w in groups:
            out[:, r0:r1] = np.ascontiguousarray(rows[:, s0:s1]) @ w  # contiguous: BLAS, not numpy's own loop
    start = first - q0 * up
    return out.reshape(-1)[start:start + n_out]


class _OneBlasThread:
    """A context in which numpy's BLAS runs on one thread: OpenBLAS otherwise starts a thread per
    core for products of a few hundred rows, and on two busy cores that made a clip's resampling
    20-70x slower (measured here, issue 36). The limit is process-wide (threadpoolctl), so
    overlapping callers share one: it is set by the first to enter and lifted by the last to
    leave."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._blas = None  # numpy's BLAS libraries, found once
        self._limit = None

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                if self._blas is None:
                    from threadpoolctl import ThreadpoolController

                    self._blas = ThreadpoolController().select(user_api="blas")
                self._limit = self._blas.limit(limits=1)
            self._users += 1

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._limit.restore_original_limits()
                self._limit = None


_ONE_BLAS_THREAD = _OneBlasThread()


_GROUP = 32  # phases per banded block: wider wastes multiplications on zeros, narrower adds calls


@lru_cache(maxsize=32)
def _polyphase_plan(up: int, down: int) -> tuple[int, int, int, tuple]:
    """For resample_poly at up / down (reduced): the first output kept (on the full output's
    count), the taps per phase, the input span one row of `up` outputs reads, and per group of
    phases (r0, r1, s0, s1, W): outputs r0..r1 of a row are row[s0:s1] @ W."""
    max_rate = max(up, down)
    half_len = 10 * max_rate
    m = np.arange(2 * half_len + 1) - half_len
    h = np.sinc(m / max_rate) / max_rate * np.kaiser(len(m), 5.0)  # firwin(..., 1 / max_rate)
    h = h / h.sum() * up
    pre_pad = down - half_len % down  # scipy's alignment: the filter's centre on the first output
    first = (half_len + pre_pad) // down
    h = np.concatenate([np.zeros(pre_pad), h])
    taps = -(-len(h) // up)  # each polyphase branch's length
    branches = np.concatenate([h, np.zeros(taps * up - len(h))]).reshape(taps, up).T[:, ::-1]  # [phase, tap]
    ends = [r * down // up for r in range(up)]  # where output r of a row starts reading, in the row
    groups = []
    for r0 in range(0, up, _GROUP):
        r1 = min(up, r0 + _GROUP)
        s0, s1 = ends[r0], ends[r1 - 1] + taps
        w = np.zeros((s1 - s0, r1 - r0))
        for r in range(r0, r1):
            w[ends[r] - s0:ends[r] - s0 + taps, r - r0] = branches[(r * down) % up]
        w.flags.writeable = False
        groups.append((r0, r1, s0, s1, w))
    return first, taps, ends[-1] + taps, tuple(groups)


def tile_to_length(x: np.ndarray, n: int) -> np.ndarray:
    """Repeat a clip back to back until it is n samples long, then trim (Kim 4.3, Oh sec. 3)."""
    reps = -(-n // len(x))
    return np.tile(x, reps)[:n]


def association_waveform(data: bytes, cfg: AssociationAudio = AssociationAudio(),
                         limits: MediaLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Bytes -> the voice subnetwork's input: float32 [cfg.samples] at cfg.sample_rate."""
    x, sr = speech_of(data, cfg, limits)
    return tile_to_length(resample(x, sr, cfg.sample_rate), cfg.samples)


def complex_spectrogram(x: np.ndarray, cfg: Speech2FaceAudio) -> np.ndarray:
    """STFT without centring: Hann window of cfg.window samples zero-padded to n_fft; [T, F]."""
    frames = np.lib.stride_tricks.sliding_window_view(x, cfg.window)[:: cfg.hop]
    window = np.hanning(cfg.window + 1)[:-1]  # periodic Hann, as torch.hann_window
    return np.fft.rfft(frames * window, n=cfg.n_fft, axis=1)


def power_law(spec: np.ndarray, power: float) -> np.ndarray:
    """sgn(S)|S|^p applied to real and imaginary parts independently -> float32 [2, T, F]."""
    parts = np.stack([spec.real, spec.imag])
    return (np.sign(parts) * np.abs(parts) ** power).astype(np.float32)


def speech2face_spectrogram(data: bytes, cfg: Speech2FaceAudio = Speech2FaceAudio(),
                            limits: MediaLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Bytes -> the Speech2Face voice encoder's input: float32 [2, 598, 257] for 6 s."""
    x, sr = speech_of(data, cfg, limits)
    x = tile_to_length(resample(x, sr, cfg.sample_rate), cfg.samples)
    return power_law(complex_spectrogram(x, cfg), cfg.power)
