"""Request bytes -> batched model inputs; what the gRPC handlers hand to the encoders."""

from __future__ import annotations

import numpy as np

from facevoice.service.media import (
    DEFAULT_LIMITS,
    AssociationAudio,
    FaceImage,
    MediaLimits,
    Speech2FaceAudio,
    association_waveform,
    face_input,
    speech2face_spectrogram,
)

Box = tuple[float, float, float, float]


def voice_query(audio: bytes, frontend: AssociationAudio | Speech2FaceAudio = AssociationAudio(),
                limits: MediaLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A batch of one: [1, samples] for the association encoder, [1, 2, T, F] for Speech2Face."""
    if isinstance(frontend, Speech2FaceAudio):
        return speech2face_spectrogram(audio, frontend, limits)[None]
    return association_waveform(audio, frontend, limits)[None]


def face_query(image: bytes, cfg: FaceImage = FaceImage(), box: Box | None = None,
               limits: MediaLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A batch of one: [1, 3, size, size]."""
    return face_input(image, cfg, box, limits)[None]
