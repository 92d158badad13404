"""Media bytes -> embeddings and pictures: the one media pipeline with each space's front end,
then the exported networks (in-process or on Triton). What the RPC handlers and the index build
call; a space is named, and everything about it comes from the model repository's manifest."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from facevoice.service.decodepool import DecodePool
from facevoice.service.media import DEFAULT_LIMITS, MediaLimits
from facevoice.service.media.frontends import model_input_used
from facevoice.service.media.image import Box, FaceUsed
from facevoice.service.repository import Manifest
from facevoice.service.runners import EmbeddedRunner, TritonRunner

Runner = EmbeddedRunner | TritonRunner


class Embedder:
    """`pool` (a DecodePool): decode in worker processes, beside the handlers' threads; None
    decodes in the caller's thread."""

    def __init__(self, manifest: Manifest, runner: Runner, limits: MediaLimits = DEFAULT_LIMITS,
                 pool: DecodePool | None = None):
        self.manifest, self.runner, self.limits, self.pool = manifest, runner, limits, pool

    def decode(self, space: str, data: bytes, box: Box | None = None, face_index: int = 0) -> np.ndarray:
        """Bytes -> one model input of the space (MediaError on bad media); the path
        tests/test_parity.py checks against what training feeds."""
        return self.decode_used(space, data, box, face_index)[0]

    def decode_used(self, space: str, data: bytes, box: Box | None = None, face_index: int = 0,
                    deadline: float | None = None) -> tuple[np.ndarray, FaceUsed | None]:
        """decode, and for a face space the face the input was cut from."""
        frontend = self.manifest.space(space).frontend
        if self.pool is not None:
            return self.pool.decode(data, frontend, box, self.limits, face_index, deadline)
        return model_input_used(data, frontend, box, self.limits, face_index)

    def embed(self, space: str, batch: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """[N, ...] model inputs -> [N, dim] vectors of the space."""
        return self.runner.infer(self.manifest.space(space).network, batch, deadline)

    def version(self, space: str) -> str:
        """The model version an index of this space must have been built by."""
        return self.manifest.space(space).version

    def draw_faces(self, features: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """Face features -> [N, 3, S, S] pictures in [0, 1] (the Speech2Face face decoder)."""
        return self.runner.infer(self.manifest.face_decoder(), features, deadline)


def to_png(picture: np.ndarray) -> bytes:
    """[3, S, S] in [0, 1] -> PNG bytes."""
    pixels = (np.clip(picture.transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
