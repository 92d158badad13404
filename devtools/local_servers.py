"""Real `tritonserver` and `redis-server` on free loopback ports, for tests, benchmarks and the demo.

The Triton is the one nvidia-pytriton ships (python backend only). Its python-backend stub is built
against NumPy 1.x, so the models' NumPy and onnxruntime come from a separate site directory
(`$VENV/triton-site`, made by deploy/setup-debian.sh); with NumPy 2 the stub reads and writes
garbage tensors without any error.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Polls check() until it is true; any exception it raises means "not ready yet"."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail}")
        try:
            if check():
                return
        except Exception as e:  # e.g. connection refused while it starts
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s (last: {last})")


def eventually(check, timeout: float = 20.0) -> bool:
    """True as soon as check() is; False when it stays false for `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


class Background:
    """Threads running `self._run(*args)`, one per args tuple, from entering the block until it
    ends (`self._stop` is set, then every thread is joined): the load a test or bench keeps on a
    server while it does something to it."""

    def __init__(self, args: list[tuple]):
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=a) for a in args]

    def _run(self, *args) -> None:
        raise NotImplementedError

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def pytriton_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed (deploy/setup-debian.sh installs it)")
    return Path(spec.submodule_search_locations[0]) / "tritonserver"


def triton_site() -> Path:
    return Path(sys.prefix) / "triton-site"


class LocalProcess:
    """A server process we started: stop() ends it; usable as a context manager."""

    proc: subprocess.Popen | None = None

    def start(self):
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the crash a dependency can have, not a clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class LocalTriton(LocalProcess):
    """`tritonserver` serving MODEL_REPO with the configs/python.pbtxt variant, on free ports."""

    def __init__(self, repo: Path, config_name: str = "python", workdir: Path | None = None):
        self.repo, self.config_name = Path(repo), config_name
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="facevoice-triton-"))
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _backends(self) -> Path:
        """pytriton keeps the stubs per Python version; Triton wants the stub beside the backend."""
        src = pytriton_dir()
        dst = self.workdir / "backends" / "python"
        dst.mkdir(parents=True, exist_ok=True)
        for f in (src / "backends" / "python").iterdir():
            if f.is_file() and not (dst / f.name).exists():
                os.symlink(f, dst / f.name)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = src / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not (dst / stub.name).exists():
            os.symlink(stub, dst / stub.name)
        return dst.parent

    def start(self, timeout: float = 120.0) -> LocalTriton:
        if not triton_site().is_dir():
            raise RuntimeError(f"{triton_site()} is missing (deploy/setup-debian.sh makes it)")
        env = dict(os.environ, LD_LIBRARY_PATH=sysconfig.get_config_var("LIBDIR"),
                   PYTHONPATH=str(triton_site()), FACEVOICE_ORT_THREADS="1")
        cmd = [str(pytriton_dir() / "bin" / "tritonserver"), "--model-repository", str(self.repo),
               "--model-config-name", self.config_name, "--backend-directory", str(self._backends()),
               "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
               "--metrics-port", str(self.metrics_port), "--allow-cpu-metrics", "true", "--exit-timeout-secs", "5"]
        self.log = self.workdir / "tritonserver.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        wait_for(lambda: urllib.request.urlopen(url, timeout=1).status == 200, timeout, "tritonserver",
                 self.proc, self.log)
        return self



class LocalRedis(LocalProcess):
    """`redis-server` on a free loopback port. With `data_dir`, durable as the gallery log wants it
    (AOF, appendfsync always) and restartable on the same data; without, a throw-away AOF in a
    temporary directory."""

    def __init__(self, port: int | None = None, data_dir: Path | None = None):
        self.port = port or free_port()
        self.data_dir = data_dir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> LocalRedis:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (deploy/setup-debian.sh installs it)")
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="facevoice-redis-"))
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "always"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_for(ping, timeout, "redis-server", self.proc)
        return self


class LocalMilvus(LocalProcess):
    """Milvus Lite's gRPC server (`milvus-lite server`, the Milvus protocol) on a free loopback port,
    its data in `data_dir` (restartable on the same data) or a temporary directory."""

    def __init__(self, port: int | None = None, data_dir: Path | None = None):
        self.port = port or free_port()
        self.data_dir = data_dir

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LocalMilvus:
        exe = Path(sys.executable).with_name("milvus-lite")
        if not exe.exists():
            raise RuntimeError("milvus-lite is not installed (make setup installs it)")
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="facevoice-milvus-"))
        self.proc = subprocess.Popen([str(exe), "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1",
                                      "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

        def ready() -> bool:
            from pymilvus import MilvusClient

            client = MilvusClient(uri=self.uri, timeout=2)
            try:
                client.list_collections()
            finally:
                client.close()
            return True

        wait_for(ready, timeout, "milvus-lite server", self.proc)
        return self


class LocalService(LocalProcess):
    """One `facevoice serve` process on a fixed loopback port (a restart comes back on the same
    one); `stub` is its FaceVoice client."""

    def __init__(self, repo: Path, index_root: Path, *extra: str, port: int | None = None):
        import grpc

        from facevoice.v1 import facevoice_pb2_grpc

        self.repo, self.index_root, self.extra = Path(repo), Path(index_root), extra
        self.port = port or free_port()
        self.stub = facevoice_pb2_grpc.FaceVoiceStub(grpc.insecure_channel(f"127.0.0.1:{self.port}"))

    def start(self, timeout: float = 90.0) -> LocalService:
        from facevoice.v1 import facevoice_pb2 as pb

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "facevoice", "serve", "--model-repo", str(self.repo), "--index-root",
             str(self.index_root), "--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", "-1",
             *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        wait_for(lambda: bool(self.stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=1).indexes), timeout,
                 "facevoice serve", self.proc)
        return self

    def rss_mb(self) -> float:
        return rss_bytes(self.proc.pid) / 2**20


def rss_bytes(pid: int | str = "self") -> float:
    """A process's resident set size (VmRSS), in bytes; NaN when it is not there."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return float("nan")


def _postgres_binary(name: str) -> str:
    import glob

    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    path = found[-1] if found else shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} not found (deploy/setup-debian.sh installs postgresql)")
    return path


class LocalPostgres(LocalProcess):
    """A throw-away PostgreSQL: initdb in a temporary directory, `postgres` on a free loopback
    port, database `study` for user `facevoice` (trust auth, loopback only). PostgreSQL refuses
    to run as root, so as root it runs as the `postgres` user the Debian package makes."""

    def __init__(self):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="facevoice-pg-"))
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql://facevoice@127.0.0.1:{self.port}/study"

    def start(self) -> LocalPostgres:
        import psycopg

        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        data, log = self.dir / "data", self.dir / "postgres.log"
        if not data.exists():
            subprocess.run([*self.as_user, _postgres_binary("initdb"), "-D", str(data), "-A", "trust", "-U",
                            "facevoice", "--no-sync"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([*self.as_user, _postgres_binary("postgres"), "-D", str(data), "-p",
                                          str(self.port), "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1"],
                                         stdout=out, stderr=subprocess.STDOUT)
        admin = f"postgresql://facevoice@127.0.0.1:{self.port}/postgres"
        wait_for(lambda: psycopg.connect(admin, connect_timeout=1).close() is None, 60, "postgres", self.proc, log)
        with psycopg.connect(admin, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'study'").fetchone():
                conn.execute("CREATE DATABASE study")
        return self

    def reset(self) -> None:
        """An empty `study` database for the next test."""
        import psycopg

        with psycopg.connect(f"postgresql://facevoice@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS study WITH (FORCE)")
            conn.execute("CREATE DATABASE study")

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class LocalStudy(LocalProcess):
    """One `facevoice study serve` process on a loopback port (a restart keeps the port)."""

    ADMIN_TOKEN = "test-admin-token-0123456789"

    def __init__(self, study_dir: Path, database: str | None = None, extra_args: tuple[str, ...] = ()):
        self.study_dir, self.database, self.extra_args = Path(study_dir), database, list(extra_args)
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LocalStudy:
        extra = (["--database", self.database] if self.database else []) + self.extra_args
        log = self.study_dir / "serve.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "facevoice", "study", "serve", "--study", str(self.study_dir), "--port",
                 str(self.port), *extra], stdout=out, stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1", FACEVOICE_STUDY_ADMIN_TOKEN=self.ADMIN_TOKEN))
        wait_for(lambda: urllib.request.urlopen(self.url + "/api/study", timeout=1).status == 200, timeout,
                 "facevoice study serve", self.proc, log)
        return self


class LocalNginx(LocalProcess):
    """nginx on free loopback ports, running deploy/study/nginx.conf.template with a throw-away
    self-signed certificate for `localhost`, in front of `upstreams` (host:port)."""

    TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "study" / "nginx.conf.template"

    def __init__(self, upstreams: list[str]):
        self.upstreams = upstreams
        self.http_port, self.https_port = free_port(), free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="facevoice-nginx-"))
        self.cert, self.key = self.dir / "cert.pem", self.dir / "key.pem"

    @property
    def url(self) -> str:
        return f"https://localhost:{self.https_port}"

    def start(self) -> LocalNginx:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key), "-out",
                        str(self.cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost"], check=True, capture_output=True)
        values = {"STUDY_UPSTREAM_SERVERS": " ".join(f"server {u};" for u in self.upstreams),
                  "STUDY_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
                  "STUDY_HTTPS_LISTEN": f"127.0.0.1:{self.https_port}",
                  "STUDY_HTTPS_PORT": str(self.https_port),
                  "STUDY_TLS_CERT": str(self.cert), "STUDY_TLS_KEY": str(self.key)}
        site = self.TEMPLATE.read_text()
        for name, value in values.items():  # what the nginx image's envsubst does, for these names only
            site = site.replace("${" + name + "}", value)
        (self.dir / "study.conf").write_text(site)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / sub).mkdir(exist_ok=True)
        (self.dir / "nginx.conf").write_text(
            f"daemon off;\nworker_processes 1;\npid {self.dir}/nginx.pid;\nerror_log {self.dir}/error.log warn;\n"
            + ("user root;\n" if os.geteuid() == 0 else "")
            + "events { worker_connections 1024; }\n"
            f"http {{ client_body_temp_path {self.dir}/body; proxy_temp_path {self.dir}/proxy; "
            f"fastcgi_temp_path {self.dir}/fastcgi; uwsgi_temp_path {self.dir}/uwsgi; scgi_temp_path {self.dir}/scgi; "
            f"include {self.dir}/study.conf; }}\n")
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        log = self.dir / "nginx.out"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([binary, "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir),
                                          "-e", str(self.dir / "error.log")], stdout=out, stderr=subprocess.STDOUT)

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.https_port), timeout=1):
                return True

        wait_for(up, 30, "nginx", self.proc, log)
        return self

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)
