"""The one media pipeline: bytes -> model inputs, shared by training datasets and the service."""

from facevoice.service.media.audio import (
    AssociationAudio,
    Speech2FaceAudio,
    association_waveform,
    decode_audio,
    speech2face_spectrogram,
)
from facevoice.service.media.errors import (
    EmptyMediaError,
    InvalidSignalError,
    MediaDecodeError,
    MediaError,
    MediaTooLargeError,
)
from facevoice.service.media.image import FaceImage, decode_image, face_input
from facevoice.service.media.limits import DEFAULT_LIMITS, MediaLimits

__all__ = [
    "DEFAULT_LIMITS",
    "AssociationAudio",
    "EmptyMediaError",
    "FaceImage",
    "InvalidSignalError",
    "MediaDecodeError",
    "MediaError",
    "MediaLimits",
    "MediaTooLargeError",
    "Speech2FaceAudio",
    "association_waveform",
    "decode_audio",
    "decode_image",
    "face_input",
    "speech2face_spectrogram",
]
