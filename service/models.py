"""The exported networks as the service sees them: the repository manifest (`facevoice.json`)
and two runners for the same ONNX files, in-process onnxruntime (the embedded default) or Triton."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facevoice.service.errors import DeadlineExceeded, DependencyUnavailable, Unsupported
from facevoice.service.media import AssociationAudio, FaceImage, Speech2FaceAudio

MANIFEST = "facevoice.json"


@dataclass(frozen=True)
class NetworkInfo:
    model: str
    triton_version: int
    input: str
    output: str
    input_dims: tuple[int, ...]
    output_dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelGroup:
    """Networks exported together; `version` is what an index built by them records."""

    version: str
    metric: str
    dim: int
    networks: dict[str, NetworkInfo]
    frontends: dict[str, dict]


@dataclass(frozen=True)
class Manifest:
    repo: Path
    triton_version: int
    association: ModelGroup
    speech2face: ModelGroup | None

    @property
    def face_frontend(self) -> FaceImage:
        return _face(self.association.frontends["face_encoder"])

    @property
    def voice_frontend(self) -> AssociationAudio:
        return AssociationAudio(**self.association.frontends["voice_encoder"])

    def s2f(self) -> ModelGroup:
        if self.speech2face is None:
            raise Unsupported("this model repository has no Speech2Face networks (export with --s2f)")
        return self.speech2face

    @property
    def s2f_audio(self) -> Speech2FaceAudio:
        return Speech2FaceAudio(**self.s2f().frontends["s2f_voice_encoder"])

    @property
    def s2f_face(self) -> FaceImage:
        return _face(self.s2f().frontends["face_features"])


def _face(d: dict) -> FaceImage:
    return FaceImage(size=d["size"], mean=tuple(d["mean"]), std=tuple(d["std"]), box_scale=d["box_scale"])


def _group(d: dict) -> ModelGroup:
    nets = {name: NetworkInfo(e["model"], e["triton_version"], e["input"], e["output"], tuple(e["input_dims"]),
                              tuple(e["output_dims"])) for name, e in d["networks"].items()}
    return ModelGroup(d["version"], d["metric"], d["dim"], nets, d["frontends"])


def read_manifest(repo: Path) -> Manifest:
    path = Path(repo) / MANIFEST
    try:
        d = json.loads(path.read_text())
        return Manifest(Path(repo), d["triton_version"], _group(d["association"]),
                        _group(d["speech2face"]) if "speech2face" in d else None)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not a facevoice model repository manifest ({type(e).__name__}: {e}); "
                         "run `facevoice export` first") from e


class EmbeddedRunner:
    """The ONNX files run in-process with onnxruntime, one session per network, made on first use."""

    name = "embedded"

    def __init__(self, manifest: Manifest, threads: int = 1):
        self.manifest, self.threads = manifest, threads
        self._sessions: dict[str, object] = {}
        self._lock = threading.Lock()

    def _session(self, info: NetworkInfo):
        with self._lock:
            if info.model not in self._sessions:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = self.threads  # deliberate: the service shares the cores
                options.inter_op_num_threads = 1
                path = self.manifest.repo / info.model / str(info.triton_version) / "model.onnx"
                self._sessions[info.model] = ort.InferenceSession(str(path), options,
                                                                  providers=["CPUExecutionProvider"])
            return self._sessions[info.model]

    def infer(self, info: NetworkInfo, x: np.ndarray, deadline: float | None = None) -> np.ndarray:
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
        self.client = grpcclient.InferenceServerClient(url, channel_args=[
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000)])

    def infer(self, info: NetworkInfo, x: np.ndarray, deadline: float | None = None) -> np.ndarray:
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
            try:
                result = self.client.infer(info.model, [inp], model_version=str(info.triton_version),
                                           outputs=[self._grpc.InferRequestedOutput(info.output)],
                                           client_timeout=max(left, 0.001))
                return result.as_numpy(info.output)
            except InferenceServerException as e:
                status = str(e.status() or "")
                retryable = "UNAVAILABLE" in status or "DEADLINE" in status
                if not retryable or attempt >= self.retries or time.monotonic() + self.backoff_s >= (
                        deadline or float("inf")):
                    raise DependencyUnavailable(f"Triton at {self.url}: {info.model}: {e.message()}") from e
                attempt += 1
                time.sleep(self.backoff_s * attempt)
