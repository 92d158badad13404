"""`facevoice serve`: the gRPC service, its /metrics endpoint, health and reflection.

Settings come from flags, else FACEVOICE_* environment variables, else a TOML file (--config),
else the defaults below. The embedded default needs only --model-repo (and --index-root to search).
`serve(ServeOptions(...))` runs it until SIGTERM or SIGINT (or a given event); `Running(ServeConfig(...))`
is the started service itself, for a caller that stops it.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import logging
import os
import signal
import threading
import time
import tomllib
from concurrent import futures
from dataclasses import dataclass, fields, make_dataclass
from pathlib import Path

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from facevoice.cli import options
from facevoice.service.cache import Cache, Subscriber
from facevoice.service.decodepool import DecodePool
from facevoice.service.embedder import Embedder
from facevoice.service.errors import DependencyUnavailable, UsageError
from facevoice.service.handlers import FaceVoiceService
from facevoice.service.indexes import IndexSet
from facevoice.service.media import DEFAULT_LIMITS
from facevoice.service.metrics import Metrics
from facevoice.service.repository import open_repository
from facevoice.service.runners import EmbeddedRunner, TritonRunner
from facevoice.service.writelog import LogDamaged, LogTrimmed, RedisLog, open_log
from facevoice.v1 import facevoice_pb2, facevoice_pb2_grpc

log = logging.getLogger("facevoice.serve")
SERVICE_NAME = facevoice_pb2.DESCRIPTOR.services_by_name["FaceVoice"].full_name
# health of the gallery's write path and of this replica's log replay (searches answer through both)
WRITES_SERVICE = f"{SERVICE_NAME}.GalleryWrites"
REPLICA_SERVICE = f"{SERVICE_NAME}.GalleryReplica"


@dataclass
class ServeConfig:
    model_repo: Path = Path("model_repo")
    index_root: Path | None = None
    host: str = "127.0.0.1"  # loopback unless told; another address needs a token (or --insecure)
    port: int = 50051
    metrics_port: int = 9464  # 0 picks a free port; -1 turns /metrics off
    triton_url: str | None = None  # gRPC host:port; none = embedded onnxruntime
    triton_retries: int = 2
    redis_url: str | None = None
    cache_ttl_s: int = 300
    token: str | None = None  # bearer token for searches; none = no auth
    admin_token: str | None = None  # bearer token for gallery writes (UpsertItems / DeleteItems)
    token_file: Path | None = None  # read the token from this file (a Docker / Kubernetes secret)
    admin_token_file: Path | None = None
    insecure: bool = False  # allow a non-loopback address without a token
    gallery_log: str = "auto"  # auto (Redis stream with a Redis, else the index root's file), file, redis
    volatile_log_ok: bool = False  # accept a Redis log without AOF (acknowledged writes may be lost)
    max_overlay: int = 100_000  # live-edited item ids per index before writes are refused
    max_lag_s: float = 30.0  # a replica this long without some log entry reports "behind"
    max_concurrent_rpcs: int = 64  # FaceVoice calls accepted at once (queued or running); 0: no limit
    tls_cert: Path | None = None
    tls_key: Path | None = None
    workers: int = 8
    ort_threads: int = 1
    ort_instances: int = 2  # embedded runner: batches run at once per network, each on ort_threads threads
    batching: bool = True  # embedded runner: batch concurrent calls as each network's config.pbtxt says
    decode_processes: int = 2  # decode media in this many worker processes (0: in the handlers' threads)
    faiss_threads: int = 1
    gpu: bool = True  # use a GPU for FAISS when faiss sees one
    index_mmap: bool = True  # map index files (a replica starts without reading them); read in on a write
    gallery_backend: str = "faiss"  # faiss: versions under --index-root on this replica; milvus: --milvus-uri
    milvus_uri: str | None = None  # http://host:19530: a Milvus cluster (or `milvus-lite server`)
    milvus_token_file: Path | None = None  # Milvus's token, from a file (a secret)
    index_verify: str = "before"  # before: every file of a version hashed before it is served; background:
    # files over 256 MB hashed after the swap (the previous version kept until they match)
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


ServeOptions = make_dataclass("ServeOptions", [
    ("config", "Path | None", None),
    *((f.name, f.type if "None" in f.type else f"{f.type} | None", None) for f in fields(ServeConfig))],
    frozen=True)
ServeOptions.__module__ = __name__
ServeOptions.__doc__ = """`facevoice serve`'s arguments: `config` (the TOML file) and one flag per ServeConfig
field, each None when not given, so that the environment, the file, then ServeConfig's default decide
(load_config)."""


def load_config(flags: ServeOptions | None = None, env: dict | None = None) -> ServeConfig:
    """Flags over FACEVOICE_* environment variables over the --config TOML file over defaults."""
    env = os.environ if env is None else env
    values: dict = {}
    config_file = getattr(flags, "config", None) or env.get("FACEVOICE_CONFIG")
    if config_file:
        with open(config_file, "rb") as f:
            values.update(tomllib.load(f).get("serve", {}))
    for f in fields(ServeConfig):
        if f"FACEVOICE_{f.name.upper()}" in env:
            values[f.name] = env[f"FACEVOICE_{f.name.upper()}"]
        flag = getattr(flags, f.name, None) if flags is not None else None
        if flag is not None:
            values[f.name] = flag
    unknown = set(values) - {f.name for f in fields(ServeConfig)}
    if unknown:
        raise UsageError(f"unknown serve settings: {sorted(unknown)}")
    cfg = ServeConfig(**{k: _convert(k, v) for k, v in values.items()})
    for name in ("token", "admin_token"):
        path = getattr(cfg, f"{name}_file")
        if path is not None:
            try:
                setattr(cfg, name, Path(path).read_text().strip() or None)
            except OSError as e:
                raise UsageError(f"{name}_file {path}: {e.strerror}") from e
    return cfg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML file with a [serve] table")
    for f in fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            p.add_argument(flag, dest=f.name, default=None, help=f"(default {f.default})")


WRITES = ("UpsertItems", "DeleteItems")


def _refuse(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    def deny(request, context):
        context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(deny)


def _same(presented: str | None, token: str | None) -> bool:
    return token is not None and presented is not None and hmac.compare_digest(
        presented.encode(), f"Bearer {token}".encode())


class AuthInterceptor(grpc.ServerInterceptor):
    """Bearer tokens for the FaceVoice methods (compared in constant time): searches take the
    search or the admin token; gallery writes only the admin token. Health and reflection stay open."""

    def __init__(self, token: str | None, admin_token: str | None):
        self.token, self.admin_token = token, admin_token

    def intercept_service(self, continuation, details):
        if not details.method.startswith(f"/{SERVICE_NAME}/"):
            return continuation(details)
        presented = dict(details.invocation_metadata).get("authorization")
        write = details.method.rsplit("/", 1)[-1] in WRITES
        if _same(presented, self.admin_token) or (not write and _same(presented, self.token)):
            return continuation(details)
        if write and _same(presented, self.token):
            return _refuse(grpc.StatusCode.PERMISSION_DENIED, "gallery writes need the admin token")
        if write and self.admin_token is None and self.token is None:
            return continuation(details)
        if not write and self.token is None and self.admin_token is not None:
            return continuation(details)  # only writes are protected
        return _refuse(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


class ConcurrencyLimit(grpc.ServerInterceptor):
    """At most `limit` FaceVoice calls accepted at once, queued or running: beyond it a call is
    answered RESOURCE_EXHAUSTED at once (counted in facevoice_rejected_total{reason="concurrency"})
    instead of waiting behind the others."""

    def __init__(self, limit: int, metrics: Metrics):
        self.limit, self.metrics = limit, metrics
        self.in_flight = 0
        self._lock = threading.Lock()

    def intercept_service(self, continuation, details):
        if not details.method.startswith(f"/{SERVICE_NAME}/"):
            return continuation(details)
        method = details.method.rsplit("/", 1)[-1]
        with self._lock:
            if self.in_flight >= self.limit:
                self.metrics.rejected.labels(method, "concurrency").inc()
                return _refuse(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the server is at its limit of {self.limit} concurrent calls; retry with back-off")
            self.in_flight += 1
            self.metrics.in_flight.set(self.in_flight)
        try:
            handler = continuation(details)
        except BaseException:
            self._done()
            raise
        if handler is None or handler.unary_unary is None:  # unknown method: gRPC answers UNIMPLEMENTED
            self._done()
            return handler

        def behaviour(request, context, inner=handler.unary_unary):
            try:
                return inner(request, context)
            finally:
                self._done()

        return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_security(cfg: ServeConfig) -> None:
    """Refuses settings that would serve less safely than they seem to (Redis's protected mode)."""
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise UsageError("--tls-cert and --tls-key go together: with only one the server would serve plaintext")
    for path in (cfg.tls_cert, cfg.tls_key):
        if path and not Path(path).is_file():
            raise UsageError(f"{path}: no such TLS file")
    if not is_loopback(cfg.host) and not (cfg.token or cfg.admin_token) and not cfg.insecure:
        raise UsageError(f"refusing to listen on {cfg.host} without a token: anyone who can reach it could "
                         "search and edit a biometric gallery. Set --token and --admin-token (FACEVOICE_TOKEN, "
                         "FACEVOICE_ADMIN_TOKEN), listen on 127.0.0.1, or pass --insecure")


class Running:
    """A started service: its port, parts, and stop(). A failure part-way through start-up stops
    what had started before it is raised."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        check_security(cfg)
        self.server = self.subscriber = self.metrics_server = self.cache = self.indexes = self.embedder = None
        self.write_log = None
        try:
            self._start(cfg)
        except BaseException:
            self.stop(0)
            raise

    def _start(self, cfg: ServeConfig) -> None:
        faiss.omp_set_num_threads(cfg.faiss_threads)
        self.metrics = Metrics()
        manifest = open_repository(cfg.model_repo)
        runner = (TritonRunner(cfg.triton_url, retries=cfg.triton_retries) if cfg.triton_url
                  else EmbeddedRunner(cfg.model_repo, threads=cfg.ort_threads, instances=cfg.ort_instances,
                                      batching=cfg.batching,
                                      observe=lambda net, rows: self.metrics.runner_batch.labels(net).observe(rows)))
        pool = DecodePool(cfg.decode_processes) if cfg.decode_processes > 0 else None
        self.embedder = Embedder(manifest, runner, pool=pool)
        versions = {name: space.version for name, space in manifest.indexed().items()}
        if cfg.gallery_backend not in ("faiss", "milvus"):
            raise UsageError(f"--gallery-backend must be faiss or milvus, not {cfg.gallery_backend!r}")
        self.cache = Cache(cfg.redis_url, self.metrics, ttl_s=cfg.cache_ttl_s)
        if cfg.gallery_backend == "milvus":
            self._start_milvus(cfg, versions)
        else:
            self._start_faiss(cfg, versions)
        self._start_server(cfg)

    def _open_log(self, cfg: ServeConfig) -> None:
        """The gallery write log (both backends append every acknowledged write to it)."""
        self.write_log = open_log(cfg.gallery_log, cfg.index_root, cfg.redis_url)
        if isinstance(self.write_log, RedisLog):
            try:
                settings = self.write_log.durability()
            except DependencyUnavailable as e:  # Redis is down now: serve; the check waits for a restart
                log.warning("cannot check the gallery log's durability now: %s", e)
                settings = {}
            if settings.get("appendonly") == "no" and not cfg.volatile_log_ok:
                raise UsageError(f"Redis at {cfg.redis_url} has appendonly no: acknowledged gallery writes would be "
                                 "lost with it. Configure AOF (appendonly yes, appendfsync always), use "
                                 "--gallery-log file, or pass --volatile-log-ok")
            if settings.get("appendfsync") not in (None, "always"):
                log.warning("Redis appendfsync is %s: a power loss can lose up to a second of acknowledged "
                            "gallery writes (docs/operations.md)", settings.get("appendfsync"))

    def _start_milvus(self, cfg: ServeConfig, versions: dict[str, str]) -> None:
        from facevoice.service.milvus import MilvusIndexSet

        if not cfg.milvus_uri:
            raise UsageError("--gallery-backend milvus needs --milvus-uri")
        token = cfg.milvus_token_file.read_text().strip() if cfg.milvus_token_file else None
        self._open_log(cfg)
        self.indexes = MilvusIndexSet(cfg.milvus_uri, versions, self.metrics, token, write_log=self.write_log)
        self.indexes.refresh()
        if cfg.poll_s > 0:
            self.indexes.watch(cfg.poll_s)

    def _start_faiss(self, cfg: ServeConfig, versions: dict[str, str]) -> None:
        self._open_log(cfg)
        self.indexes = IndexSet(cfg.index_root, versions, self.metrics, use_gpu=cfg.gpu, mmap=cfg.index_mmap,
                                verify=cfg.index_verify, write_log=self.write_log, max_overlay=cfg.max_overlay,
                                max_lag_s=cfg.max_lag_s)
        self.indexes.refresh()
        try:
            self.indexes.catch_up()
        except (DependencyUnavailable, LogTrimmed, LogDamaged) as e:  # the follower keeps trying
            log.warning("gallery log not applied at start-up: %s", e)
        self.indexes.follow()
        if cfg.redis_url:
            self.subscriber = Subscriber(cfg.redis_url, lambda published: self.indexes.refresh())
            self.subscriber.start()
        if cfg.index_root and cfg.poll_s > 0:
            self.indexes.watch(cfg.poll_s)

    def _start_server(self, cfg: ServeConfig) -> None:
        channel_options = [("grpc.max_receive_message_length", cfg.max_message_bytes),
                           ("grpc.max_send_message_length", cfg.max_message_bytes)]
        interceptors = []
        if cfg.max_concurrent_rpcs > 0:
            interceptors.append(ConcurrencyLimit(cfg.max_concurrent_rpcs, self.metrics))
        if cfg.token or cfg.admin_token:
            interceptors.append(AuthInterceptor(cfg.token, cfg.admin_token))
        self.server = grpc.server(futures.ThreadPoolExecutor(cfg.workers, thread_name_prefix="facevoice-rpc"),
                                  options=channel_options, interceptors=interceptors)
        facevoice_pb2_grpc.add_FaceVoiceServicer_to_server(
            FaceVoiceService(self.embedder, self.indexes, self.cache, self.metrics), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls_cert:
            creds = grpc.ssl_server_credentials([(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())])
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        self.metrics_server = self.metrics.serve(cfg.metrics_port, cfg.host) if cfg.metrics_port >= 0 else None
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)  # searches go on whatever the log does
        self.indexes.on_status = self._log_health
        self.indexes.report()

    def _log_health(self, st) -> None:
        """WRITES_SERVICE: SERVING while gallery writes are taken; REPLICA_SERVICE: SERVING while this
        replica has the log applied within the lag bound."""
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(WRITES_SERVICE, serving if st.writes else not_serving)
        self.health.set(REPLICA_SERVICE, serving if st.state == "ok" else not_serving)

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server[0].server_port if self.metrics_server else None

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful: health says NOT_SERVING, new calls are refused, calls in flight finish; then
        every thread is joined and every client closed."""
        if self.server is not None:
            self.health.enter_graceful_shutdown()
            self.server.stop(self.cfg.grace_s if grace_s is None else grace_s).wait()
        if self.subscriber:
            self.subscriber.stop()
            self.subscriber.join(5.0)
        if self.indexes is not None:
            self.indexes.stop()  # joins the watcher and the log follower, closes the log
        elif self.write_log is not None:
            self.write_log.close()
        if self.metrics_server:
            self.metrics_server[0].shutdown()
            self.metrics_server[0].server_close()
            self.metrics_server[1].join(5.0)
        if self.cache is not None:
            self.cache.close()
        if self.embedder is not None:
            self.embedder.runner.close()
            if self.embedder.pool is not None:
                self.embedder.pool.close()


@dataclass(frozen=True)
class ServeResult:
    host: str
    port: int  # the gRPC port it listened on
    metrics_port: int | None  # None with /metrics off
    runner: str  # embedded or triton
    loaded: dict[str, tuple[str, int]]  # index -> (version, items) at start-up
    missing: list[str]  # the served models' indexes it found no version of at start-up
    seconds: float  # from start-up to the end of the drain

    def summary(self) -> str:
        return f"facevoice serve: stopped after {self.seconds:.0f} s serving gRPC on {self.host}:{self.port}"


def serve(opts: ServeOptions, *, env: dict | None = None, stop: threading.Event | None = None) -> ServeResult:
    """`facevoice serve`: the service with the settings of `load_config(opts, env)`, until SIGTERM or
    SIGINT (or, when given, until `stop` is set: then no signal handler is installed, so it may run
    off the main thread), then drained. Prints where it listens once started, and when it drains."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(opts, env)
    t0 = time.monotonic()
    running = Running(cfg)
    loaded = {n: (g.meta.version, g.size) for n, g in running.indexes.galleries.items()}
    missing = [n for n in running.indexes.model_versions if n not in loaded]
    port, metrics_port, runner = running.port, running.metrics_port, running.embedder.runner.name
    print(f"facevoice serve: gRPC on {cfg.host}:{port}, metrics on :{metrics_port}, {runner} runner, "
          f"indexes {loaded or 'none'}; missing: {missing or 'none'}", flush=True)
    handlers = {}
    try:
        if stop is None:
            stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers[sig] = signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        print("facevoice serve: draining", flush=True)
    finally:
        running.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return ServeResult(cfg.host, port, metrics_port, runner, loaded, missing, time.monotonic() - t0)


def run(args: argparse.Namespace) -> int:
    print(serve(options(ServeOptions, args)).summary(), flush=True)
    return 0
