"""Real compressed media made in the test: a signal encoded by FFmpeg's encoders (PyAV) into the
containers browsers, phones and video sites produce."""

from __future__ import annotations

import io
import shutil
import subprocess

import av
import numpy as np

# name -> (container, audio codec, codec sample rate, with a video track)
FORMATS = {
    "mp3": ("mp3", "libmp3lame", 22_050, False),
    "m4a": ("ipod", "aac", 22_050, False),
    "webm-opus": ("webm", "libopus", 48_000, False),
    "ogg-opus": ("ogg", "libopus", 48_000, False),
    "mp4-video": ("mp4", "aac", 22_050, True),
    "mkv-video": ("matroska", "libopus", 48_000, True),
    "webm-video": ("webm", "libopus", 48_000, True),  # what a browser's MediaRecorder films
}


def wav_bytes(x: np.ndarray, sr: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def speech(seconds_text: str = "The quick brown fox jumps over the lazy dog, twice over.") -> tuple[np.ndarray, int]:
    """A real speech recording: espeak-ng's voice, as (float32 mono, 22,050 Hz)."""
    import soundfile as sf

    exe = shutil.which("espeak-ng")
    wav = subprocess.run([exe, "--stdout", "-s", "150", seconds_text], check=True, capture_output=True).stdout
    x, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return x, sr


def encode(x: np.ndarray, sr: int, name: str, seconds_of_video: float | None = None) -> bytes:
    """x (mono float32 at sr) encoded as FORMATS[name]; video tracks are black 64x64 frames."""
    from facevoice.service.media.audio import resample

    container, codec, rate, video = FORMATS[name]
    y = resample(x, sr, rate)
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as c:
        v = _black_stream(c, "libvpx" if container == "webm" else "mpeg4") if video else None
        a = c.add_stream(codec, rate=rate)
        a.layout = "mono"
        fmt = a.codec_context.format.name
        step = a.codec_context.frame_size or 1024
        for i in range(0, len(y), step):
            chunk = y[i:i + step][None, :]
            frame = av.AudioFrame.from_ndarray(
                (chunk * 32767).astype(np.int16) if fmt.startswith("s16") else chunk.astype(np.float32),
                format=fmt if fmt in ("s16", "s16p", "flt", "fltp") else "fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i
            for p in a.encode(frame):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
        if v is not None:
            _black_frames(c, v, seconds_of_video or len(y) / rate)
    return buf.getvalue()


def _black_stream(c, codec: str = "mpeg4"):
    v = c.add_stream(codec, rate=25)
    v.width = v.height = 64
    v.pix_fmt = "yuv420p"
    return v


def _black_frames(c, v, seconds: float) -> None:
    for i in range(int(25 * seconds)):
        frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
        frame.pts = i
        for p in v.encode(frame):
            c.mux(p)
    for p in v.encode(None):
        c.mux(p)


def video_without_audio(seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        _black_frames(c, _black_stream(c), seconds)
    return buf.getvalue()


def av_clip(path, frame, audio: np.ndarray, sr: int, seconds: float | None = None, fps: int = 10) -> None:
    """An MP4 (MPEG-4 video, AAC audio) showing `frame` (a PIL image; drifting a few pixels, so the
    frames differ) over the audio track `audio`."""
    from facevoice.service.media.audio import resample

    rate = 22_050
    y = resample(audio, sr, rate)
    seconds = seconds or len(y) / rate
    w, h = (frame.width // 2) * 2, (frame.height // 2) * 2
    with av.open(str(path), "w", format="mp4") as c:
        v = c.add_stream("mpeg4", rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.bit_rate = 2_000_000
        a = c.add_stream("aac", rate=rate)
        a.layout = "mono"
        step = a.codec_context.frame_size or 1024
        fmt = a.codec_context.format.name
        for i in range(0, len(y), step):
            f = av.AudioFrame.from_ndarray(y[i:i + step][None, :].astype(np.float32),
                                           format=fmt if fmt in ("flt", "fltp") else "fltp", layout="mono")
            f.sample_rate, f.pts = rate, i
            for p in a.encode(f):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
        pixels = np.asarray(frame.convert("RGB"))[:h, :w]
        for i in range(int(seconds * fps)):
            shifted = np.roll(pixels, shift=(i % 5) - 2, axis=1)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(shifted), format="rgb24")
            vf.pts = i
            for p in v.encode(vf):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
