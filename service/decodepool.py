"""Decoding in worker processes, so that the handlers' decodes run on every core at once.

A voice's decode (the container, the voice guard's VAD, periodicity and level, the resampler) is
13 ms of mostly Python and numpy that holds the GIL: in the server's own process, 32 concurrent
calls decoded one at a time, about 70 a second on any number of cores (benchmarks.md, "Retrieval
service"). `DecodePool` runs service.media's model_input_used in `processes` spawned workers
(not forked: the server has threads), one call each at a time; the handler thread waits without
the GIL. A worker that dies (a decoder's crash) fails only the calls it held and is replaced; the
server lives on. Bytes go in and the model input comes back by pickling: about 0.3 ms each way for
a 7 s clip, measured in the same bench.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from facevoice.service.errors import DeadlineExceeded, DependencyUnavailable
from facevoice.service.media import MediaLimits
from facevoice.service.media.frontends import Frontend, model_input_used
from facevoice.service.media.image import Box, FaceUsed


def _init_worker() -> None:
    """One thread for each library in a worker: the workers are the parallelism."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _warm() -> int:
    import facevoice.service.media.frontends  # noqa: F401 - imported once, before the first request

    return 0


class DecodePool:
    """model_input_used in `processes` worker processes; `decode` blocks until the input is back."""

    def __init__(self, processes: int = 2):
        self.processes = processes
        self._lock = threading.Lock()
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(self.processes, mp_context=mp.get_context("spawn"), initializer=_init_worker)
        for f in [pool.submit(_warm) for _ in range(self.processes)]:  # every worker started now, not on a request
            f.result()
        return pool

    def decode(self, data: bytes, frontend: Frontend, box: Box | None, limits: MediaLimits, face_index: int,
               deadline: float | None = None) -> tuple[np.ndarray, FaceUsed | None]:
        """The same as model_input_used(data, frontend, box, limits, face_index), in a worker.
        MediaError as it raises it; DeadlineExceeded when the deadline passes first; UNAVAILABLE
        (DependencyUnavailable) when the worker died on this input (the pool is then renewed)."""
        pool = self._pool
        try:
            future = pool.submit(model_input_used, data, frontend, box, limits, face_index)
        except (BrokenProcessPool, RuntimeError):
            pool = self._renew(pool)
            future = pool.submit(model_input_used, data, frontend, box, limits, face_index)
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            return future.result(None if left is None or left > 3600 else left)
        except FutureTimeout as e:
            future.cancel()
            raise DeadlineExceeded("deadline passed while the media was decoded") from e
        except BrokenProcessPool as e:
            self._renew(pool)
            raise DependencyUnavailable("a decoding process died on this request; it has been replaced") from e

    def _renew(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is broken:
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start()
            return self._pool

    def close(self) -> None:
        with self._lock:
            self._pool.shutdown(wait=True, cancel_futures=True)
