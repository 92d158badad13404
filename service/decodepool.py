"""Decoding in worker processes, so that the handlers' decodes run on every core at once.

A voice's decode (the container, the voice guard's VAD, periodicity and level, the resampler) is
13 ms of mostly Python and numpy that holds the GIL: in the server's own process, 32 concurrent
calls decoded one at a time, about 70 a second on any number of cores (benchmarks.md, "Retrieval
service"). `DecodePool` runs service.media's model_input_used in `processes` spawned workers
(not forked: the server has threads), one call each at a time; the handler thread waits on its
worker's pipe without the GIL. A worker that dies (a decoder's crash) fails only the call it held
and is replaced; the server lives on. The bytes go in and the model input comes back pickled,
under 1 ms each way for a 7 s clip (measured).
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import numpy as np

from facevoice.service.errors import DeadlineExceeded, DependencyUnavailable
from facevoice.service.media import MediaLimits
from facevoice.service.media.frontends import Frontend, model_input_used
from facevoice.service.media.image import Box, FaceUsed


def _serve(conn) -> None:
    """A worker: one thread for each library (the workers are the parallelism), "ready" once its
    imports are done, then decode what comes down the pipe until it closes; each answer is
    ("ok", result) or ("error", exception). Ctrl-C is the server's to handle (its grace period),
    not the workers': they ignore SIGINT."""
    import signal

    from threadpoolctl import threadpool_limits

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threadpool_limits(1)
    conn.send(("ready", None))
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            answer = ("ok", model_input_used(*args))
        except Exception as e:  # MediaError and the rest go back to the caller, as in process
            answer = ("error", e)
        try:
            conn.send(answer)
        except (EOFError, OSError):
            return
        except Exception as e:  # an exception that does not pickle: its words, as a plain error
            conn.send(("error", RuntimeError(f"{type(answer[1]).__name__}: {answer[1]}" if answer[0] == "error"
                                            else f"the decoded input could not be sent back: {e}")))


READY_S = 120.0  # how long a new worker may take to import its libraries


class _Worker:
    def __init__(self, ctx):
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(theirs,), daemon=True, name="facevoice-decode")
        self.proc.start()
        theirs.close()
        self.ready = False

    def wait_ready(self, timeout: float = READY_S) -> None:
        """Block until the worker said "ready"; DependencyUnavailable when it died or is silent
        (for example a script that starts the service without `if __name__ == "__main__":`)."""
        if self.ready:
            return
        try:
            if self.conn.poll(timeout) and self.conn.recv()[0] == "ready":
                self.ready = True
                return
        except (EOFError, OSError):
            pass
        raise DependencyUnavailable("a decoding process did not start (a script that starts the service needs "
                                    "`if __name__ == \"__main__\":`, as multiprocessing's spawn does)")

    def stop(self) -> None:
        self.conn.close()
        self.proc.kill()
        self.proc.join(5)


class DecodePool:
    """model_input_used in `processes` worker processes; `decode` blocks until the input is back.
    Each worker has its own pipe, and an idle worker is taken last-in first-out, so at low
    concurrency one worker stays warm (with a shared queue, calls alternated between workers and
    each cost about 5 ms more; measured)."""

    def __init__(self, processes: int = 2):
        self.processes = processes
        self._ctx = mp.get_context("spawn")
        self._cond = threading.Condition()
        self._closed = False
        self._idle: list[_Worker] = []
        try:
            for _ in range(processes):
                self._idle.append(_Worker(self._ctx))
            for w in self._idle:
                w.wait_ready()
        except BaseException:
            for w in self._idle:
                w.stop()
            raise
        self.all = list(self._idle)

    def decode(self, data: bytes, frontend: Frontend, box: Box | None, limits: MediaLimits, face_index: int,
               deadline: float | None = None) -> tuple[np.ndarray, FaceUsed | None]:
        """The same as model_input_used(data, frontend, box, limits, face_index), in a worker.
        MediaError as it raises it; DeadlineExceeded when the deadline passes first (the worker
        is kept: a thread takes its late answer and drops it, then it is idle again);
        UNAVAILABLE (DependencyUnavailable) when the worker died on this input (it is replaced)."""
        worker = self._take(deadline)
        state = "dead"  # what the worker is after this call: "ok", "late" (its answer still to come), "dead"
        try:
            worker.wait_ready()
            if deadline is not None and time.monotonic() >= deadline:
                state = "ok"
                raise DeadlineExceeded("deadline passed before the media was decoded")
            worker.conn.send((data, frontend, box, limits, face_index))
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not worker.conn.poll(None if left is None or left > 3600 else left):
                state = "late"
                raise DeadlineExceeded("deadline passed while the media was decoded")
            kind, value = worker.conn.recv()
            state = "ok"
        except (EOFError, OSError) as e:
            raise DependencyUnavailable("a decoding process died on this request; it has been replaced") from e
        finally:
            self._give_back(worker, state)
        if kind == "error":
            raise value
        return value

    def _take(self, deadline: float | None) -> _Worker:
        with self._cond:
            while not self._idle:
                if self._closed:
                    raise DependencyUnavailable("the decoding processes are stopped")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise DeadlineExceeded("deadline passed while every decoding process was busy")
                self._cond.wait(None if left is None else min(left, 60))
            if self._closed:
                raise DependencyUnavailable("the decoding processes are stopped")
            worker = self._idle.pop()
        if not worker.proc.is_alive():  # died while idle: replaced (outside the lock) before it is used
            worker = self._replace(worker)
        return worker

    def _replace(self, worker: _Worker) -> _Worker:
        """A new worker in a dead one's place; it says "ready" to the call that first uses it."""
        worker.stop()
        fresh = _Worker(self._ctx)
        self.all = [fresh if w is worker else w for w in self.all]
        return fresh

    def _give_back(self, worker: _Worker, state: str) -> None:
        if state == "late":  # kept, not killed: a thread takes its late answer, then it is idle again
            threading.Thread(target=self._reclaim, args=(worker,), daemon=True, name="decode-reclaim").start()
            return
        if state == "dead":
            worker = self._replace(worker)
        with self._cond:
            if self._closed:
                worker.stop()
                return
            self._idle.append(worker)
            self._cond.notify()

    def _reclaim(self, worker: _Worker) -> None:
        try:
            fine = worker.conn.poll(READY_S) and worker.conn.recv() is not None
        except (EOFError, OSError):
            fine = False
        self._give_back(worker, "ok" if fine else "dead")

    def close(self) -> None:
        """Every worker stopped, busy ones too: their callers get UNAVAILABLE, none waits on."""
        with self._cond:
            self._closed = True
            self._idle = []
            self._cond.notify_all()
        for w in list(self.all):
            w.stop()
