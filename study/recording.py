"""Recordings (Kim et al. sec. 3.1): each upload goes through the one media pipeline before it
is kept, and what is kept is only what a corpus needs.

- A voice (any format the pipeline reads: the browser's WebM/Opus, WAV, MP3, ...) must hold at
  least `recording.min_speech_seconds` of speech (WebRTC VAD). Kept: the speech, trimmed of
  leading and trailing silence, as 16-bit 22,050 Hz WAV. The upload itself is not kept.
- With `[recording] video = true` (Kim et al. 3.1 filmed each reading), a voice is uploaded as
  the page's video (WebM or MP4). Its audio is checked and kept as above, and the video, once a
  frame of it decodes, is kept as uploaded beside it. Without the switch no video is kept.
- A face photo (a camera still: JPEG, PNG or WebP) must have a face that dlib's HOG detector
  finds. Kept: the square of twice the face box around it, as JPEG (no EXIF, so no camera or
  place metadata), with the box in it.
Each failure is a MediaError whose message the page shows, so the participant can retake."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import soundfile as sf

from facevoice.service.media import DEFAULT_LIMITS, decode_audio, decode_image
from facevoice.service.media.audio import resample
from facevoice.service.media.errors import InvalidSignalError
from facevoice.service.media.speech import FRAME_MS, trim_to_speech, voiced_frames
from facevoice.study.config import Study

VOICE_RATE = 22_050


def check_voice(data: bytes, study: Study) -> tuple[bytes, float]:
    """Upload -> (WAV bytes of its speech, seconds of speech); MediaError when unusable."""
    limits = replace(DEFAULT_LIMITS, max_bytes=study.recording.max_upload_bytes, max_audio_seconds=120.0)
    x, sr = decode_audio(data, limits)
    speech = trim_to_speech(x, sr, study.recording.min_speech_seconds)
    seconds = float(voiced_frames(speech, sr).sum() * FRAME_MS / 1000)
    buf = io.BytesIO()
    sf.write(buf, resample(speech, sr, VOICE_RATE).astype(np.float32), VOICE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue(), seconds


def check_video(data: bytes) -> str:
    """A filmed reading -> the file suffix to keep it under; MediaError without a decodable frame."""
    import av

    from facevoice.service.media.containers import DEMUXERS, sniff
    from facevoice.service.media.errors import MediaDecodeError

    kind = sniff(data)
    if kind not in ("matroska", "mp4"):
        raise MediaDecodeError("video: not a WebM or MP4 video")
    try:
        with av.open(io.BytesIO(data), mode="r", format=DEMUXERS[kind]) as container:
            stream = next((s for s in container.streams if s.type == "video"), None)
            if stream is None:
                raise MediaDecodeError("video: the recording holds no picture; is the camera on?")
            for packet in container.demux(stream):
                if packet.decode():
                    return ".webm" if kind == "matroska" else ".mp4"
    except MediaDecodeError:
        raise
    except Exception as e:  # FFmpeg's complaints about a damaged file, as one type
        raise MediaDecodeError(f"video: not a readable {kind} file") from e
    raise MediaDecodeError("video: no frame of the recording could be decoded (truncated?)")


def check_face(data: bytes, study: Study) -> tuple[bytes, tuple[float, float, float, float]]:
    """Upload -> (JPEG of the region around the largest face, the face box in it)."""
    from facevoice.service.media.faces import detect_faces, face_region, pick

    limits = replace(DEFAULT_LIMITS, max_bytes=study.recording.max_upload_bytes)
    img = decode_image(data, limits)
    face = pick(detect_faces(img, "hog", 0.0))
    if face.area < 0.01 * img.width * img.height:
        raise InvalidSignalError("image: the face is too small; come closer to the camera")
    region, box = face_region(img, face)
    buf = io.BytesIO()
    region.save(buf, "JPEG", quality=92)
    return buf.getvalue(), box
