"""service/decodepool.py: decoding in worker processes gives what decoding in process gives,
bad media fails as it does in process, a deadline is honoured, and a worker killed for real
fails only its own call and is replaced."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image

from facevoice.service.decodepool import DecodePool
from facevoice.service.errors import DeadlineExceeded, DependencyUnavailable
from facevoice.service.media import DEFAULT_LIMITS, AssociationAudio, FaceImage, MediaError
from facevoice.service.media.frontends import model_input_used
from tests.conftest import image_bytes


@pytest.fixture(scope="module")
def pool():
    p = DecodePool(2)
    yield p
    p.close()


def clip() -> bytes:
    """Seven seconds of espeak-ng's speech as WAV."""
    from devtools.media_samples import speech, wav_bytes

    x, sr = speech("The quick brown fox jumps over the lazy dog, twice over, and then once more.")
    return wav_bytes(x, sr)


def test_the_pool_decodes_as_the_process_does(pool):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    for data, frontend, box in ((clip(), AssociationAudio(), None),
                                (image_bytes(photo), FaceImage(size=64), (20.0, 20.0, 40.0, 40.0))):
        want, used = model_input_used(data, frontend, box, DEFAULT_LIMITS, 0)
        got, got_used = pool.decode(data, frontend, box, DEFAULT_LIMITS, 0)
        assert got.dtype == want.dtype and np.array_equal(got, want) and got_used == used


@pytest.mark.parametrize("data", [b"", b"RIFF\x00\x00", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, os.urandom(2000)])
def test_bad_media_fails_as_it_does_in_process(pool, data):
    with pytest.raises(MediaError) as in_process:
        model_input_used(data, AssociationAudio(), None, DEFAULT_LIMITS, 0)
    with pytest.raises(MediaError) as pooled:
        pool.decode(data, AssociationAudio(), None, DEFAULT_LIMITS, 0)
    assert type(pooled.value) is type(in_process.value) and str(pooled.value) == str(in_process.value)


def test_a_deadline_that_passes_while_decoding():
    pool = DecodePool(1)
    try:
        (pid,) = [w.proc.pid for w in pool.all]
        with pytest.raises(DeadlineExceeded, match="before"):  # passed already: nothing is sent
            pool.decode(clip(), AssociationAudio(), None, DEFAULT_LIMITS, 0, deadline=time.monotonic() - 1)
        with pytest.raises(DeadlineExceeded, match="while"):  # passes while the worker decodes
            pool.decode(clip(), AssociationAudio(), None, DEFAULT_LIMITS, 0, deadline=time.monotonic() + 0.001)
        x, _ = pool.decode(clip(), AssociationAudio(), None, DEFAULT_LIMITS, 0)  # and the pool goes on
        # with the same worker: its late answer was taken and dropped, the worker kept warm
        assert x.shape == (AssociationAudio().samples,) and [w.proc.pid for w in pool.all] == [pid]
    finally:
        pool.close()


def test_a_killed_worker_fails_only_its_own_call_and_is_replaced():
    from devtools.media_samples import speech, wav_bytes

    x, sr = speech("The quick brown fox jumps over the lazy dog. " * 12)
    long = wav_bytes(x, sr)  # about a minute of speech: a call that lasts long enough to be killed in
    pool = DecodePool(1)
    try:
        # killed while idle: the next call finds the pool broken, renews it, and succeeds
        (pid,) = [w.proc.pid for w in pool.all]
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        x, _ = pool.decode(clip(), AssociationAudio(), None, DEFAULT_LIMITS, 0)
        assert x.shape == (AssociationAudio().samples,)
        # killed during a call: that call fails UNAVAILABLE, the next one runs on a new worker
        (pid,) = [w.proc.pid for w in pool.all]
        result: list = []
        t = threading.Thread(target=lambda: result.append(_outcome(pool, long)))
        t.start()
        while True:  # the worker has the call once it has left the idle list
            with pool._cond:
                if not pool._idle:
                    break
            time.sleep(0.001)
        time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        t.join(30)
        assert isinstance(result[0], DependencyUnavailable) and "died" in str(result[0])
        x, _ = pool.decode(clip(), AssociationAudio(), None, DEFAULT_LIMITS, 0)
        assert x.shape == (AssociationAudio().samples,) and pid not in [w.proc.pid for w in pool.all]
    finally:
        pool.close()


def _outcome(pool: DecodePool, data: bytes):
    try:
        return pool.decode(data, AssociationAudio(), None, DEFAULT_LIMITS, 0)
    except Exception as e:  # the test reads it
        return e
