"""Shared fixtures (a small synthetic corpus and a tiny trained stack, each built once per
session) and the two tiers: `make test` runs everything; `make check` leaves out what the
`slow` marker names (below), for the inner loop."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facevoice.training.corpus.synth import SynthConfig, build_corpus

SMALL = SynthConfig(identities=20, seed=7, faces=2, clips=2, workers=2, oracle_trials=300,
                    oracle_population=400)


# `slow`: the test starts a server (Redis, Triton, PostgreSQL, the service, the study) or a
# browser, trains a model, or runs a benchmark. These modules do throughout; so does any test
# that uses the trained stack or a PostgreSQL.
SLOW_MODULES = {
    "test_association_heldout", "test_association_train", "test_bench", "test_deploy", "test_export",
    "test_frozen", "test_gpu_check", "test_history", "test_hot_swap_and_redis", "test_index_build",
    "test_index_shards", "test_media_ceiling", "test_milvus", "test_parity", "test_query_client", "test_release",
    "test_replicas", "test_serve_command", "test_served", "test_server", "test_service_hardening",
    "test_speech2face_train", "test_study", "test_study_browser", "test_study_deploy", "test_study_platform",
    "test_triton", "test_video_corpora", "test_writelog",
}
SLOW_FIXTURES = {"stack", "postgres"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts a server or a browser, trains a model or runs a benchmark "
                                       "(`make check` leaves it out)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


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
