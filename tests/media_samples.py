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
}


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
        v = None
        if video:
            v = c.add_stream("mpeg4", rate=25)
            v.width = v.height = 64
            v.pix_fmt = "yuv420p"
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
            for i in range(int(25 * (seconds_of_video or len(y) / rate))):
                frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
                frame.pts = i
                for p in v.encode(frame):
                    c.mux(p)
            for p in v.encode(None):
                c.mux(p)
    return buf.getvalue()


def video_without_audio(seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        v = c.add_stream("mpeg4", rate=25)
        v.width = v.height = 64
        v.pix_fmt = "yuv420p"
        for i in range(int(25 * seconds)):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
    return buf.getvalue()
