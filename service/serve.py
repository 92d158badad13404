"""`facevoice serve`: the gRPC service, its /metrics endpoint, health and reflection.

Settings come from flags, else FACEVOICE_* environment variables, else a TOML file (--config),
else the defaults below. The embedded default needs only --model-repo (and --index-root to search).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import tomllib
from concurrent import futures
from dataclasses import dataclass, fields
from pathlib import Path

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from facevoice.service.cache import Cache, Subscriber
from facevoice.service.embedder import Embedder
from facevoice.service.errors import UsageError
from facevoice.service.handlers import FaceVoiceService
from facevoice.service.media import DEFAULT_LIMITS
from facevoice.service.metrics import Metrics
from facevoice.service.repository import read_manifest
from facevoice.service.runners import EmbeddedRunner, TritonRunner
from facevoice.service.served import IndexSet
from facevoice.v1 import facevoice_pb2, facevoice_pb2_grpc

log = logging.getLogger("facevoice.serve")
SERVICE_NAME = facevoice_pb2.DESCRIPTOR.services_by_name["FaceVoice"].full_name


@dataclass
class ServeConfig:
    model_repo: Path = Path("model_repo")
    index_root: Path | None = None
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_port: int = 9464  # 0 picks a free port; -1 turns /metrics off
    triton_url: str | None = None  # gRPC host:port; none = embedded onnxruntime
    triton_retries: int = 2
    redis_url: str | None = None
    cache_ttl_s: int = 300
    token: str | None = None  # bearer token; none = no auth
    tls_cert: Path | None = None
    tls_key: Path | None = None
    workers: int = 8
    ort_threads: int = 1
    faiss_threads: int = 1
    gpu: bool = True  # use a GPU for FAISS when faiss sees one
    poll_s: float = 2.0
    grace_s: float = 10.0
    max_message_bytes: int = 4 * DEFAULT_LIMITS.max_bytes + (1 << 20)


def _convert(name: str, value):
    kind = {f.name: f.type for f in fields(ServeConfig)}[name]
    if value is None:
        return None
    if "Path" in str(kind):
        return Path(value)
    if "int" in str(kind):
        return int(value)
    if "float" in str(kind):
        return float(value)
    if "bool" in str(kind):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    return str(value)


def load_config(args: argparse.Namespace | None = None, env: dict | None = None) -> ServeConfig:
    """Flags over FACEVOICE_* environment variables over the --config TOML file over defaults."""
    env = os.environ if env is None else env
    values: dict = {}
    config_file = getattr(args, "config", None) or env.get("FACEVOICE_CONFIG")
    if config_file:
        with open(config_file, "rb") as f:
            values.update(tomllib.load(f).get("serve", {}))
    for f in fields(ServeConfig):
        if f"FACEVOICE_{f.name.upper()}" in env:
            values[f.name] = env[f"FACEVOICE_{f.name.upper()}"]
        flag = getattr(args, f.name, None) if args is not None else None
        if flag is not None:
            values[f.name] = flag
    unknown = set(values) - {f.name for f in fields(ServeConfig)}
    if unknown:
        raise UsageError(f"unknown serve settings: {sorted(unknown)}")
    return ServeConfig(**{k: _convert(k, v) for k, v in values.items()})


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML file with a [serve] table")
    for f in fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            p.add_argument(flag, dest=f.name, default=None, help=f"(default {f.default})")


class AuthInterceptor(grpc.ServerInterceptor):
    """Bearer-token auth for the FaceVoice methods; health and reflection stay open."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}"

    def intercept_service(self, continuation, details):
        if not details.method.startswith(f"/{SERVICE_NAME}/"):
            return continuation(details)
        if dict(details.invocation_metadata).get("authorization") == self.expected:
            return continuation(details)

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        return grpc.unary_unary_rpc_method_handler(deny)


class Running:
    """A started service: its port, parts, and stop()."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        faiss.omp_set_num_threads(cfg.faiss_threads)
        self.metrics = Metrics()
        manifest = read_manifest(cfg.model_repo)
        runner = (TritonRunner(cfg.triton_url, retries=cfg.triton_retries) if cfg.triton_url
                  else EmbeddedRunner(cfg.model_repo, threads=cfg.ort_threads))
        self.embedder = Embedder(manifest, runner)
        versions = {name: space.version for name, space in manifest.indexed().items()}
        self.indexes = IndexSet(cfg.index_root, versions, self.metrics, use_gpu=cfg.gpu)
        self.indexes.refresh()
        self.cache = Cache(cfg.redis_url, self.metrics, ttl_s=cfg.cache_ttl_s)
        self.subscriber = None
        if cfg.redis_url:
            self.subscriber = Subscriber(cfg.redis_url, lambda published: self.indexes.refresh())
            self.subscriber.start()
        self.watcher = self.indexes.watch(cfg.poll_s) if cfg.index_root and cfg.poll_s > 0 else None

        options = [("grpc.max_receive_message_length", cfg.max_message_bytes),
                   ("grpc.max_send_message_length", cfg.max_message_bytes)]
        interceptors = [AuthInterceptor(cfg.token)] if cfg.token else []
        self.server = grpc.server(futures.ThreadPoolExecutor(cfg.workers, thread_name_prefix="facevoice-rpc"),
                                  options=options, interceptors=interceptors)
        facevoice_pb2_grpc.add_FaceVoiceServicer_to_server(
            FaceVoiceService(self.embedder, self.indexes, self.cache, self.metrics), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls_cert and cfg.tls_key:
            creds = grpc.ssl_server_credentials([(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())])
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        self.metrics_server = self.metrics.serve(cfg.metrics_port, cfg.host) if cfg.metrics_port >= 0 else None
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server[0].server_port if self.metrics_server else None

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful: health says NOT_SERVING, new calls are refused, calls in flight finish."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.cfg.grace_s if grace_s is None else grace_s).wait()
        self.indexes.stop()
        if self.subscriber:
            self.subscriber.stop()
        if self.metrics_server:
            self.metrics_server[0].shutdown()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args)
    running = Running(cfg)
    loaded = {n: (g.meta["version"], g.size) for n, g in running.indexes.galleries.items()}
    print(f"facevoice serve: gRPC on {cfg.host}:{running.port}, metrics on :{running.metrics_port}, "
          f"{running.embedder.runner.name} runner, indexes {loaded or 'none'}; "
          f"missing: {[n for n in running.indexes.model_versions if n not in loaded] or 'none'}", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    print("facevoice serve: draining", flush=True)
    running.stop()
    return 0
