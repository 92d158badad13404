"""Two runners for the same exported ONNX files: in-process onnxruntime (the embedded default)
or a Triton server."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facevoice.service.batching import Batcher, BatchPolicy, read_policy
from facevoice.service.errors import DeadlineExceeded, DependencyUnavailable
from facevoice.service.repository import NetworkEntry, network_file


class EmbeddedRunner:
    """The ONNX files run in-process with onnxruntime, one session per network, made on first use.

    Each network whose config.pbtxt asks for dynamic batching (`max_batch_size` > 1 and a
    `dynamic_batching` block, as `facevoice export` writes it) gets a Batcher
    (service/batching.py): concurrent callers' rows go through one onnxruntime call, as Triton's
    dynamic batcher does, with the same max batch size and queue delay. `instances` batches run
    at once, each on `threads` onnxruntime threads (instances x threads: the cores the encoders
    may use). `batching=False` runs every call on its own, in the caller's thread."""

    name = "embedded"

    def __init__(self, repo: Path, threads: int = 1, instances: int = 2, batching: bool = True,
                 observe: Callable[[str, int], None] | None = None):
        self.repo, self.threads, self.instances, self.batching = Path(repo), threads, instances, batching
        self.observe = observe  # (network, rows) of each onnxruntime call that a batcher made
        self._sessions: dict[str, object] = {}
        self._batchers: dict[str, Batcher | None] = {}
        self._closed = False
        self._lock = threading.Lock()

    def _session(self, info: NetworkEntry):
        with self._lock:
            if info.model not in self._sessions:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = self.threads  # deliberate: the service shares the cores
                options.inter_op_num_threads = 1
                path = self.repo / network_file(info)
                self._sessions[info.model] = ort.InferenceSession(str(path), options,
                                                                  providers=["CPUExecutionProvider"])
            return self._sessions[info.model]

    def policy(self, info: NetworkEntry) -> BatchPolicy:
        """The network's batching, from its config.pbtxt (none when batching is off)."""
        return read_policy(self.repo / info.model / "config.pbtxt") if self.batching else BatchPolicy()

    def _batcher(self, info: NetworkEntry) -> Batcher | None:
        if self._closed:
            raise DependencyUnavailable("the embedded runner is closed (the server is stopping)")
        key = f"{info.model}/{info.triton_version}"
        if key in self._batchers:
            return self._batchers[key]
        session, policy = self._session(info), self.policy(info)
        with self._lock:
            if key not in self._batchers:
                def run(x: np.ndarray, session=session) -> np.ndarray:
                    return session.run([info.output], {info.input: x})[0]

                observe = None if self.observe is None else functools.partial(self.observe, info.model)
                self._batchers[key] = (Batcher(run, policy, self.instances, info.model, observe)
                                       if policy.max_batch > 1 else None)
            return self._batchers[key]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            batchers, self._batchers = list(self._batchers.values()), {}
        for b in batchers:
            if b is not None:
                b.close()

    def infer(self, info: NetworkEntry, x: np.ndarray, deadline: float | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        batcher = self._batcher(info)
        if batcher is None:
            return self._session(info).run([info.output], {info.input: x})[0]
        return batcher.infer(x, deadline)


class TritonRunner:
    """The same networks on a Triton server, through tritonclient's gRPC client.

    Connection failures are retried with a short back-off while the call's deadline allows
    (at most `retries` times); then UNAVAILABLE, fast."""

    name = "triton"

    def __init__(self, url: str, retries: int = 2, backoff_s: float = 0.05, timeout_s: float = 10.0):
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.url, self.retries, self.backoff_s, self.timeout_s = url, retries, backoff_s, timeout_s
        # reconnect soon after Triton comes back (gRPC's default back-off grows to two minutes)
        self._outputs: dict[str, list] = {}  # requested outputs per network, made once
        self.client = grpcclient.InferenceServerClient(url, channel_args=[
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000)])

    def close(self) -> None:
        self.client.close()

    def infer(self, info: NetworkEntry, x: np.ndarray, deadline: float | None = None) -> np.ndarray:
        from tritonclient.utils import InferenceServerException

        x = np.ascontiguousarray(x, np.float32)
        attempt = 0
        while True:
            # a call without a deadline still waits at most timeout_s (gRPC reports "no deadline" as years)
            left = self.timeout_s if deadline is None else min(deadline - time.monotonic(), self.timeout_s)
            if left <= 0:
                raise DeadlineExceeded(f"deadline passed before Triton answered {info.model}")
            inp = self._grpc.InferInput(info.input, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            outputs = self._outputs.get(info.model)
            if outputs is None:
                outputs = self._outputs[info.model] = [self._grpc.InferRequestedOutput(info.output)]
            try:
                result = self.client.infer(info.model, [inp], model_version=str(info.triton_version),
                                           outputs=outputs, client_timeout=max(left, 0.001))
                return result.as_numpy(info.output)
            except InferenceServerException as e:
                status = str(e.status() or "")
                retryable = "UNAVAILABLE" in status or "DEADLINE" in status
                if not retryable or attempt >= self.retries or time.monotonic() + self.backoff_s >= (
                        deadline or float("inf")):
                    raise DependencyUnavailable(f"Triton at {self.url}: {info.model}: {e.message()}") from e
                attempt += 1
                time.sleep(self.backoff_s * attempt)
