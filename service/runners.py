"""Two runners for the same exported ONNX files: in-process onnxruntime (the embedded default)
or a Triton server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from facevoice.service.errors import DeadlineExceeded, DependencyUnavailable
from facevoice.service.repository import NetworkEntry, network_file


class EmbeddedRunner:
    """The ONNX files run in-process with onnxruntime, one session per network, made on first use."""

    name = "embedded"

    def __init__(self, repo: Path, threads: int = 1):
        self.repo, self.threads = Path(repo), threads
        self._sessions: dict[str, object] = {}
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

    def close(self) -> None:
        pass

    def infer(self, info: NetworkEntry, x: np.ndarray, deadline: float | None = None) -> np.ndarray:
        return self._session(info).run([info.output], {info.input: np.ascontiguousarray(x, np.float32)})[0]


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
