"""The embedded runner's dynamic batcher (service/batching.py): rows go back to their callers,
deadlines and cancellation are honoured inside a batch, one bad input fails alone, and a batch
of one is the call it was without batching. Then the real runner on the released ONNX files."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from facevoice.service.batching import Batcher, BatchPolicy, call_scope, read_policy
from facevoice.service.errors import Cancelled, DeadlineExceeded

ROOT = Path(__file__).resolve().parent.parent


class Network:
    """A stand-in network: row -> 3 * row + 1, each call recorded; `gate` holds calls until set;
    a row holding NaN fails the whole call, as a bad input fails an onnxruntime call."""

    def __init__(self, gate: bool = False):
        self.calls: list[np.ndarray] = []
        self.gate = threading.Event()
        if not gate:
            self.gate.set()
        self.started = threading.Event()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(x)
        self.started.set()
        self.gate.wait(10)
        if np.isnan(x).any():
            raise ValueError("NaN in the input")
        return 3 * x + 1


def threads_calling(batcher: Batcher, inputs: list[np.ndarray], deadlines=None) -> list:
    out: list = [None] * len(inputs)

    def call(k: int) -> None:
        try:
            out[k] = batcher.infer(inputs[k], None if deadlines is None else deadlines[k])
        except Exception as e:  # the test reads it
            out[k] = e

    ts = [threading.Thread(target=call, args=(k,)) for k in range(len(inputs))]
    for t in ts:
        t.start()
    return ts, out


def queued_rows(b: Batcher) -> int:
    with b._cond:  # the queue is read under the batcher's own lock
        return sum(len(r.x) for r in b._queue)


@contextmanager
def occupied(max_batch: int, max_delay_s: float = 0.0):
    """(net, batcher): one worker, busy with a first call until the test sets net.gate, so the
    test's calls queue behind it."""
    net = Network(gate=True)
    b = Batcher(net, BatchPolicy(max_batch, max_delay_s), instances=1, name="toy")
    try:
        blocker, _ = threads_calling(b, [np.zeros((1, 2), np.float32)])
        assert net.started.wait(5)
        yield net, b
        net.gate.set()
        for t in blocker:
            t.join(10)
    finally:
        net.gate.set()
        b.close()


def test_each_caller_gets_its_own_rows_back():
    net = Network(gate=True)
    b = Batcher(net, BatchPolicy(max_batch=16, max_delay_s=0.05), instances=1, name="toy")
    try:
        first_ts, first = threads_calling(b, [np.full((1, 3), -1.0, np.float32)])
        assert net.started.wait(5)  # the worker is busy: the next callers queue together
        inputs = [np.full((1 + k % 3, 3), k, np.float32) for k in range(12)]
        ts, out = threads_calling(b, inputs)
        while queued_rows(b) < sum(len(x) for x in inputs):
            time.sleep(0.005)
        net.gate.set()
        for t in first_ts + ts:
            t.join(10)
        assert np.array_equal(first[0], np.full((1, 3), -2.0))
        for x, y in zip(inputs, out, strict=True):
            assert isinstance(y, np.ndarray) and np.array_equal(y, 3 * x + 1)
        # 24 rows of 12 callers in batches of at most 16 rows, after the first call
        sizes = [len(c) for c in net.calls[1:]]
        assert sum(sizes) == 24 and max(sizes) <= 16 and len(sizes) == 2
    finally:
        b.close()


def test_a_batch_of_one_is_the_call_itself():
    net = Network()
    b = Batcher(net, BatchPolicy(max_batch=32, max_delay_s=0.0), name="toy")
    try:
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        y = b.infer(x)
        assert len(net.calls) == 1 and net.calls[0] is x  # the same array, not a copy or a concatenation
        assert np.array_equal(y, 3 * x + 1)
        # gRPC gives a call without a deadline one years away: more than a wait can take
        assert np.array_equal(b.infer(x, time.monotonic() + 1e11), 3 * x + 1)
    finally:
        b.close()


@pytest.mark.parametrize("instances", [1, 2])
def test_a_worker_waits_for_more_rows_only_when_no_instance_is_idle(instances):
    """Two requests 50 ms apart, a 300 ms queue delay: one instance holds the first for the
    second, as Triton does; with a second instance idle the first runs at once."""
    net = Network()
    b = Batcher(net, BatchPolicy(max_batch=8, max_delay_s=0.3, preferred=(4, 8)), instances=instances, name="toy")
    try:
        first, out = threads_calling(b, [np.zeros((1, 2), np.float32)])
        time.sleep(0.05)
        second = b.infer(np.ones((1, 2), np.float32))
        first[0].join(10)
        assert np.array_equal(out[0], np.ones((1, 2))) and np.array_equal(second, np.full((1, 2), 4.0))
        assert [len(c) for c in net.calls] == ([2] if instances == 1 else [1, 1])
    finally:
        b.close()

def test_one_bad_input_fails_only_its_caller():
    with occupied(16, 0.05) as (net, b):
        inputs = [np.full((1, 2), k, np.float32) for k in range(5)]
        inputs[2] = np.array([[np.nan, 1.0]], np.float32)
        ts, out = threads_calling(b, inputs)
        while queued_rows(b) < 5:
            time.sleep(0.005)
        net.gate.set()
        for t in ts:
            t.join(10)
        assert isinstance(out[2], ValueError)
        for k in (0, 1, 3, 4):
            assert np.array_equal(out[k], 3 * inputs[k] + 1)
        assert [len(c) for c in net.calls[1:]] == [5, 1, 1, 1, 1, 1]  # the batch failed, then each alone


def test_a_deadline_that_passes_in_the_queue_fails_that_call_alone():
    with occupied(8) as (net, b):
        now = time.monotonic()
        inputs = [np.full((1, 2), k, np.float32) for k in range(3)]
        ts, out = threads_calling(b, inputs, deadlines=[now + 0.05, None, now + 30])
        ts[0].join(5)  # it gives up on its own, while the worker is still busy
        assert isinstance(out[0], DeadlineExceeded)
        net.gate.set()
        for t in ts:
            t.join(10)
        assert np.array_equal(out[1], 3 * inputs[1] + 1) and np.array_equal(out[2], 3 * inputs[2] + 1)
        assert [len(c) for c in net.calls] == [1, 2]  # the expired request never ran


def test_a_deadline_that_passes_while_its_batch_runs():
    net = Network(gate=True)
    b = Batcher(net, BatchPolicy(max_batch=8, max_delay_s=0.2), instances=1, name="toy")
    try:
        now = time.monotonic()
        inputs = [np.full((1, 2), k, np.float32) for k in range(2)]
        ts, out = threads_calling(b, inputs, deadlines=[now + 0.3, None])
        assert net.started.wait(5)  # both in the batch (the queue delay gathered them), now running
        ts[0].join(5)
        assert isinstance(out[0], DeadlineExceeded) and "ran its batch" in str(out[0])
        net.gate.set()
        ts[1].join(10)
        assert [len(c) for c in net.calls] == [2] and np.array_equal(out[1], 3 * inputs[1] + 1)
    finally:
        b.close()


def test_a_cancelled_call_leaves_the_queue():
    with occupied(8) as (net, b):
        result: list = []
        scopes: list = []

        def call() -> None:
            with call_scope() as scope:
                scopes.append(scope)
                try:
                    result.append(b.infer(np.ones((1, 2), np.float32)))
                except Cancelled as e:
                    result.append(e)

        t = threading.Thread(target=call)
        t.start()
        while not queued_rows(b):
            time.sleep(0.005)
        scopes[0].cancel()  # what the gRPC handler's termination callback does
        t.join(5)
        assert isinstance(result[0], Cancelled) and not b._queue
        net.gate.set()
        with call_scope() as scope:  # a scope cancelled before its call starts refuses it
            scope.cancel()
            with pytest.raises(Cancelled):
                b.infer(np.ones((1, 2), np.float32))
    assert len(net.calls) == 1  # the cancelled request never ran


def test_the_policy_comes_from_the_triton_config(tmp_path):
    cfg = read_policy(ROOT / "models/demo/voice_encoder/config.pbtxt")
    assert cfg == BatchPolicy(max_batch=64, max_delay_s=0.0005, preferred=(4, 8, 16, 32)) and cfg.enough == 32
    plain = tmp_path / "config.pbtxt"
    plain.write_text('name: "x"\nmax_batch_size: 64\n')  # no dynamic_batching block: no batching
    assert read_policy(plain) == BatchPolicy()
    assert read_policy(tmp_path / "missing.pbtxt") == BatchPolicy()


def test_the_embedded_runner_batches_real_encoders_without_changing_answers():
    """32 concurrent callers on the released voice encoder: the same embeddings as one at a time
    (to float32 rounding), in fewer onnxruntime calls than callers."""
    from facevoice.service.repository import VOICE, open_repository
    from facevoice.service.runners import EmbeddedRunner

    repo = ROOT / "models/demo"
    info = open_repository(repo).space(VOICE).network
    rng = np.random.default_rng(0)
    inputs = [(0.1 * rng.standard_normal((1, *info.input_dims))).astype(np.float32) for _ in range(32)]
    alone = EmbeddedRunner(repo, batching=False)
    want = [alone.infer(info, x) for x in inputs]
    rows: list[int] = []
    runner = EmbeddedRunner(repo, instances=1, observe=lambda net, n: rows.append(n))
    try:
        runner.infer(info, inputs[0])  # the session made before the callers start
        rows.clear()
        out: list = [None] * 32
        ts = [threading.Thread(target=lambda k=k: out.__setitem__(k, runner.infer(info, inputs[k]))) for k in range(32)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        for got, w in zip(out, want, strict=True):
            np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)
        assert sum(rows) == 32 and len(rows) < 32
    finally:
        runner.close()


def test_a_failing_metric_fails_no_call():
    def broken(rows: int) -> None:
        raise RuntimeError("metrics backend down")

    b = Batcher(Network(), BatchPolicy(max_batch=8), name="toy", observe=broken)
    try:
        x = np.ones((2, 2), np.float32)
        assert np.array_equal(b.infer(x), 3 * x + 1) and np.array_equal(b.infer(x), 3 * x + 1)
    finally:
        b.close()
