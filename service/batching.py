"""Dynamic batching for the embedded runner, as Triton's dynamic batcher does it.

Requests for one network queue; a worker takes the oldest and runs every request that fits in
one call (`max_batch` rows). Each caller gets its own rows back. The settings come from the
network's config.pbtxt (`max_batch_size`, `dynamic_batching { preferred_batch_size,
max_queue_delay_microseconds }`), so the embedded runner and Triton read one setting
(`read_policy`).

When to wait for more: as Triton, a worker holds a batch up to `max_delay_s` (from its oldest
request's arrival) until it has the largest preferred size. Unlike Triton, it waits only while
every other instance is running a batch: on a CPU the instances share the cores, so when one is
idle, holding a request gains nothing (at concurrency 1 every call would pay the whole delay).

- A request whose deadline passes while it waits is taken out of the queue and fails alone
  (DeadlineExceeded); one whose deadline passes while its batch runs gets DeadlineExceeded and
  its rows are dropped.
- A request of a call that the client cancelled (`call_scope`, set by the gRPC handler) leaves the
  queue at once.
- A batch that fails is run again one request at a time, so one bad input fails only its caller.
- A request alone in the queue runs as it is: the same array, the same call as without batching.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facevoice.service.errors import Cancelled, DeadlineExceeded, DependencyUnavailable


@dataclass(frozen=True)
class BatchPolicy:
    """How requests for one network are batched: at most `max_batch` rows per call, the oldest
    request waiting at most `max_delay_s` for others. max_batch 1 turns batching off."""

    max_batch: int = 1
    max_delay_s: float = 0.0
    preferred: tuple[int, ...] = ()  # batch sizes worth waiting for (the largest ends the wait)

    @property
    def enough(self) -> int:
        """The rows a waiting worker stops waiting at."""
        return min(max(self.preferred, default=self.max_batch), self.max_batch)


def read_policy(config_pbtxt: Path) -> BatchPolicy:
    """The batching a Triton model config asks for: `max_batch_size`, and the dynamic batcher's
    `max_queue_delay_microseconds` (0 without a `dynamic_batching` block, or without the file:
    no batching)."""
    try:
        text = Path(config_pbtxt).read_text()
    except OSError:
        return BatchPolicy()
    size = re.search(r"^\s*max_batch_size\s*:\s*(\d+)", text, re.M)
    if size is None or int(size.group(1)) < 2 or "dynamic_batching" not in text:
        return BatchPolicy()
    delay = re.search(r"max_queue_delay_microseconds\s*:\s*(\d+)", text)
    preferred = re.search(r"preferred_batch_size\s*:\s*\[([\d,\s]*)\]", text)
    sizes = tuple(int(v) for v in preferred.group(1).replace(",", " ").split()) if preferred else ()
    return BatchPolicy(int(size.group(1)), int(delay.group(1)) / 1e6 if delay else 0.0, sizes)


_FINISH = threading.Lock()


@dataclass(eq=False)
class _Request:
    x: np.ndarray
    deadline: float | None
    arrived: float
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None
    taken: bool = False  # in a batch that is running

    def finish(self, result: np.ndarray | None = None, error: BaseException | None = None) -> None:
        """The first answer wins (the worker's and the caller's deadline can race)."""
        with _FINISH:
            if self.done.is_set():
                return
            self.result, self.error = result, error
            self.done.set()


class CallScope:
    """One RPC's requests in the batchers: cancelled together when the call ends early."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[Batcher, _Request]] = []
        self.cancelled = False

    def _add(self, batcher: Batcher, req: _Request) -> bool:
        with self._lock:
            if not self.cancelled:
                self._pending.append((batcher, req))
            return not self.cancelled

    def _remove(self, req: _Request) -> None:
        with self._lock:
            self._pending = [(b, r) for b, r in self._pending if r is not req]

    def cancel(self) -> None:
        with self._lock:
            self.cancelled, pending, self._pending = True, self._pending, []
        for batcher, req in pending:
            batcher._withdraw(req, Cancelled("the call was cancelled while its input waited to be batched"))


_SCOPE: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar("facevoice_call_scope", default=None)


@contextmanager
def call_scope() -> Iterator[CallScope]:
    """The scope of one RPC on this thread: the handler calls scope.cancel() when the client goes."""
    scope = CallScope()
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


class Batcher:
    """Batches the requests for one network: `run(x)` ([B, ...] -> [B, ...]) is called by
    `instances` worker threads, each with one batch at a time."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], policy: BatchPolicy, instances: int = 1,
                 name: str = "network", observe: Callable[[int], None] | None = None):
        self.run, self.policy, self.name, self.observe = run, policy, name, observe
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._busy = 0  # workers running a batch
        self._workers = [threading.Thread(target=self._work, name=f"batch-{name}-{k}", daemon=True)
                         for k in range(max(1, instances))]
        for w in self._workers:
            w.start()

    def infer(self, x: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """x's rows through the network, batched with other callers' rows; blocks until done."""
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise DeadlineExceeded(f"deadline passed before {self.name} ran")
        req = _Request(x, deadline, now)
        scope = _SCOPE.get()
        if scope is not None and not scope._add(self, req):
            raise Cancelled("the call was cancelled")
        with self._cond:
            if self._closed:
                raise DependencyUnavailable(f"{self.name}: the runner is closed")
            self._queue.append(req)
            self._cond.notify()
        try:
            # gRPC reports "no deadline" as years away, past what a wait can take: wait a minute at a time
            while not req.done.wait(60 if deadline is None else min(max(deadline - time.monotonic(), 0), 60)):
                if deadline is not None and time.monotonic() >= deadline:
                    break
            if not req.done.is_set() and not self._withdraw(
                    req, DeadlineExceeded(f"deadline passed while {self.name} was busy")):
                req.finish(error=DeadlineExceeded(f"deadline passed while {self.name} ran its batch"))
        finally:
            if scope is not None:
                scope._remove(req)
        if req.error is not None:
            raise req.error
        return req.result

    def _withdraw(self, req: _Request, error: BaseException) -> bool:
        """Take a request out of the queue before it runs, failing it with `error`; False when
        it is already running (or done)."""
        with self._cond:
            if req.taken or req.done.is_set():
                return False
            try:
                self._queue.remove(req)
            except ValueError:
                return False
        req.finish(error=error)
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending, self._queue = list(self._queue), deque()
            self._cond.notify_all()
        for req in pending:
            req.finish(error=DependencyUnavailable(f"{self.name}: the runner is closed"))
        for w in self._workers:
            w.join(timeout=5)

    def _take(self) -> list[_Request] | None:
        """The next batch: the oldest request and those after it that fit in max_batch rows,
        after waiting up to max_delay_s (from the oldest one's arrival) for the largest preferred
        size, only while every other instance is busy."""
        p = self.policy
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            until = self._queue[0].arrived + p.max_delay_s
            # wait for more rows only while every other instance is busy (the module docstring)
            while (self._busy >= len(self._workers) - 1 and sum(len(r.x) for r in self._queue) < p.enough
                   and not self._closed):
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if not self._queue:
                return []
            first = self._queue.popleft()
            batch, rows, now = [first], len(first.x), time.monotonic()
            kept: deque[_Request] = deque()
            while self._queue:
                r = self._queue.popleft()
                if r.deadline is not None and r.deadline <= now:
                    r.finish(error=DeadlineExceeded(f"deadline passed while {self.name} was busy"))
                elif rows + len(r.x) <= p.max_batch and r.x.shape[1:] == first.x.shape[1:]:
                    batch.append(r)
                    rows += len(r.x)
                else:
                    kept.append(r)  # another shape, or no room: the next batch
            self._queue = kept
            for r in batch:
                r.taken = True
            self._busy += 1
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if batch:
                try:
                    self._run(batch)
                except BaseException as e:  # nothing may leave a caller waiting, or end the worker
                    for r in batch:
                        r.finish(error=e)
                finally:
                    with self._cond:
                        self._busy -= 1
                        self._cond.notify_all()  # a worker waiting for rows now has an idle instance beside it

    def _run(self, batch: list[_Request]) -> None:
        if len(batch) == 1:
            self._run_one(batch[0])
            return
        try:
            out = self.run(np.concatenate([r.x for r in batch]))
        except Exception:
            for r in batch:  # one bad input fails only its caller
                self._run_one(r)
            return
        self._observe(len(out))
        start = 0
        for r in batch:
            r.finish(out[start:start + len(r.x)])
            start += len(r.x)

    def _run_one(self, r: _Request) -> None:
        try:
            out = self.run(r.x)
        except Exception as e:
            r.finish(error=e)
            return
        self._observe(len(out))
        r.finish(out)

    def _observe(self, rows: int) -> None:
        if self.observe is not None:
            with contextlib.suppress(Exception):  # a metric must not fail a call
                self.observe(rows)
