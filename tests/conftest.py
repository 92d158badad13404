"""Shared fixtures: a small synthetic corpus built once per test session."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facevoice.training.corpus.synth import SynthConfig, build_corpus

SMALL = SynthConfig(identities=20, seed=7, faces=2, clips=2, workers=2, oracle_trials=300,
                    oracle_population=400)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(directory, summary) of a 20-identity corpus."""
    out = tmp_path_factory.mktemp("corpus")
    return out, build_corpus(out, SMALL, force=True, progress=False)


def image_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def tone(freq: float = 220.0, sr: int = 16_000, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """Tiny trained association + Speech2Face runs, exported, with published indexes."""
    from tests.serving import build_stack

    return build_stack(tmp_path_factory.mktemp("stack"))
