"""Compressed audio and the audio track of video, through FFmpeg's libraries (PyAV, in-process).

MP3, AAC (ADTS, and in MP4/M4A/MOV), Opus and Vorbis (in Ogg, WebM and Matroska), FLAC and WAV,
and the audio track of MP4 / WebM / MKV video. The container is sniffed from the first bytes
and FFmpeg is told which demuxer to use, so it never probes its way into a playlist or a
`concat` list that would open other files or URLs. Caps are enforced while decoding: the
duration a header claims is checked before any frame is decoded, and decoding stops as soon as
the samples pass the cap, so neither a long file nor a tiny file that decodes to hours costs
more than the cap's worth of decoding.
"""

from __future__ import annotations

import io

import numpy as np

from facevoice.service.media.errors import EmptyMediaError, MediaDecodeError, MediaError, MediaTooLargeError
from facevoice.service.media.limits import MediaLimits

# demuxers FFmpeg may use, by what the first bytes say
DEMUXERS = {"mp3": "mp3", "mp4": "mov", "matroska": "matroska", "ogg": "ogg", "wav": "wav", "flac": "flac",
            "aac": "aac"}
FORMAT_NAMES = "MP3 / M4A / AAC / MP4 / WebM / MKV / Ogg (Opus or Vorbis) / FLAC / WAV"


def sniff(data: bytes) -> str | None:
    """The container named by the magic bytes, or None."""
    head = bytes(data[:64])
    if head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # WebM is Matroska
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"ID3"):
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:  # ADTS sync word, layer 0
            return "aac"
        if head[1] & 0xE0 == 0xE0 and head[1] & 0x06:  # MPEG audio frame sync, layer I-III
            return "mp3"
    return None


def decode_container(data: bytes, limits: MediaLimits) -> tuple[np.ndarray, int]:
    """Bytes of a supported container -> (mono float32 samples, sample rate) within `limits`."""
    import av

    kind = sniff(data)
    if kind is None:
        raise MediaDecodeError(f"audio: not a readable audio file (supported: {FORMAT_NAMES})")
    try:
        with av.open(io.BytesIO(bytes(data)), mode="r", format=DEMUXERS[kind],
                     options={"probesize": "5000000", "analyzeduration": "5000000"}) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise MediaDecodeError(f"audio: the {kind} file has no audio track")
            sr = stream.codec_context.sample_rate or stream.rate
            if not sr:
                raise MediaDecodeError("audio: the audio track names no sample rate")
            claimed = _claimed_seconds(container, stream)
            if claimed is not None and claimed > limits.max_audio_seconds * 1.05 + 1:
                raise MediaTooLargeError(
                    f"audio: {claimed:.1f} s (from the {kind} header) is over the {limits.max_audio_seconds:g} s limit")
            cap = int(limits.max_audio_seconds * sr)
            # planar float in the track's own layout; down-mixed here, as libsndfile's path is
            resampler = av.AudioResampler(format="fltp", rate=sr)
            blocks, n = [], 0
            for packet in container.demux(stream):
                for frame in packet.decode():
                    for out in resampler.resample(frame):
                        block = _mono(out.to_ndarray())
                        blocks.append(block)
                        n += len(block)
                if n > cap:
                    raise MediaTooLargeError(f"audio: longer than the {limits.max_audio_seconds:g} s limit")
            for out in resampler.resample(None):
                blocks.append(_mono(out.to_ndarray()))
    except MediaError:
        raise
    except Exception as e:  # FFmpeg's many complaints about bad files, as one type
        raise MediaDecodeError(f"audio: not a readable {kind} file ({_why(e)})") from e
    if not blocks:
        raise EmptyMediaError(f"audio: no samples could be decoded from the {kind} file (truncated?)")
    return np.concatenate(blocks).astype(np.float32, copy=False), int(sr)


def _mono(planes: np.ndarray) -> np.ndarray:
    from facevoice.service.media.audio import downmix

    return planes[0].copy() if len(planes) == 1 else downmix(planes.T)


def _claimed_seconds(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _why(e: Exception) -> str:
    """FFmpeg's reason without PyAV's repr of the file object."""
    text = getattr(e, "strerror", None) or str(e)
    return text.split(": '<_io.")[0][:200]
