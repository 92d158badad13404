"""Media bytes -> embeddings and pictures: the one media pipeline, then the exported networks
(in-process or on Triton). What the gRPC handlers and the index build job call."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from facevoice.service.media import DEFAULT_LIMITS, MediaLimits
from facevoice.service.models import EmbeddedRunner, Manifest, TritonRunner
from facevoice.service.preprocess import face_query, voice_query

Box = tuple[float, float, float, float]
Runner = EmbeddedRunner | TritonRunner


class Embedder:
    def __init__(self, manifest: Manifest, runner: Runner, limits: MediaLimits = DEFAULT_LIMITS):
        self.manifest, self.runner, self.limits = manifest, runner, limits
        self.assoc = manifest.association.networks

    # decode: bytes -> one model input (MediaError on bad media); the path tests/test_parity.py
    # checks against the training datasets
    def voice_input(self, audio: bytes) -> np.ndarray:
        return voice_query(audio, self.manifest.voice_frontend, self.limits)[0]

    def face_input(self, image: bytes, box: Box | None = None) -> np.ndarray:
        return face_query(image, self.manifest.face_frontend, box, self.limits)[0]

    def s2f_input(self, audio: bytes) -> np.ndarray:
        return voice_query(audio, self.manifest.s2f_audio, self.limits)[0]

    def face_feature_input(self, image: bytes, box: Box | None = None) -> np.ndarray:
        return face_query(image, self.manifest.s2f_face, box, self.limits)[0]

    # embed: batches of model inputs -> vectors
    def voices(self, x: np.ndarray, deadline: float | None = None) -> np.ndarray:
        return self.runner.infer(self.assoc["voice_encoder"], x, deadline)

    def faces(self, x: np.ndarray, deadline: float | None = None) -> np.ndarray:
        return self.runner.infer(self.assoc["face_encoder"], x, deadline)

    def s2f_features(self, x: np.ndarray, deadline: float | None = None) -> np.ndarray:
        return self.runner.infer(self.manifest.s2f().networks["s2f_voice_encoder"], x, deadline)

    def face_features(self, x: np.ndarray, deadline: float | None = None) -> np.ndarray:
        return self.runner.infer(self.manifest.s2f().networks["face_features"], x, deadline)

    def decode_faces(self, features: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """Face features -> [N, 3, S, S] pictures in [0, 1] (the Speech2Face face decoder)."""
        return self.runner.infer(self.manifest.s2f().networks["face_decoder"], features, deadline)


def to_png(picture: np.ndarray) -> bytes:
    """[3, S, S] in [0, 1] -> PNG bytes."""
    pixels = (np.clip(picture.transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
