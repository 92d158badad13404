"""The front ends by name: how a model repository records one, and bytes -> model input for any."""

from __future__ import annotations

from dataclasses import asdict, fields

import numpy as np

from facevoice.service.media.audio import (
    AssociationAudio,
    Speech2FaceAudio,
    association_waveform,
    speech2face_spectrogram,
)
from facevoice.service.media.image import Box, FaceImage, FaceUsed, face_input_used
from facevoice.service.media.limits import DEFAULT_LIMITS, MediaLimits

Frontend = FaceImage | AssociationAudio | Speech2FaceAudio
KINDS: dict[str, type] = {"face_image": FaceImage, "association_audio": AssociationAudio,
                          "speech2face_audio": Speech2FaceAudio}


def model_input(data: bytes, frontend: Frontend, box: Box | None = None,
                limits: MediaLimits = DEFAULT_LIMITS, face_index: int = 0) -> np.ndarray:
    """Bytes -> the input of the network this front end feeds (MediaError on bad media). A box
    (and a face index) applies to faces only."""
    return model_input_used(data, frontend, box, limits, face_index)[0]


def model_input_used(data: bytes, frontend: Frontend, box: Box | None = None, limits: MediaLimits = DEFAULT_LIMITS,
                     face_index: int = 0) -> tuple[np.ndarray, FaceUsed | None]:
    """model_input, and for a face the face it was cut from."""
    if isinstance(frontend, FaceImage):
        return face_input_used(data, frontend, box, limits, face_index)
    if isinstance(frontend, Speech2FaceAudio):
        return speech2face_spectrogram(data, frontend, limits), None
    return association_waveform(data, frontend, limits), None


def to_dict(frontend: Frontend) -> dict:
    kind = next(k for k, cls in KINDS.items() if isinstance(frontend, cls))
    return {"kind": kind, **asdict(frontend)}


def from_dict(d: dict) -> Frontend:
    """The inverse of to_dict; KeyError / TypeError / ValueError on anything else."""
    cls = KINDS[d["kind"]]
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names - {"kind"}
    if unknown:
        raise ValueError(f"front end {d['kind']!r} has no settings {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "kind"})
