"""`facevoice serve` as users run it: settings precedence, serve until told to stop, TLS,
and a graceful stop under load."""

from __future__ import annotations

import subprocess
import threading
import time

import grpc
import pytest

from devtools.local_servers import free_port, wait_for
from facevoice.service.errors import UsageError
from facevoice.service.serve import ServeConfig, ServeOptions, load_config, serve
from facevoice.v1 import facevoice_pb2 as pb
from facevoice.v1 import facevoice_pb2_grpc as pb_grpc
from tests.serving import media, start_service


def test_settings_flags_over_env_over_file_over_defaults(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text('[serve]\nport = 6000\nworkers = 3\nredis_url = "redis://file:1/0"\ngpu = false\n')
    env = {"FACEVOICE_PORT": "7000", "FACEVOICE_CACHE_TTL_S": "60"}
    cfg = load_config(ServeOptions(config=f, port=8000), env)
    assert (cfg.port, cfg.workers, cfg.redis_url, cfg.cache_ttl_s, cfg.gpu) == (8000, 3, "redis://file:1/0", 60, False)
    assert load_config(ServeOptions(), {}) == ServeConfig()
    f.write_text("[serve]\nprot = 1\n")
    with pytest.raises(UsageError, match="prot"):
        load_config(ServeOptions(config=f), {})


def test_serve_starts_answers_and_drains_when_told(stack, capsys):
    """`serve` in-process until its stop event (the process, stopped by SIGTERM: tests/test_cli.py)."""
    port, metrics = free_port(), free_port()
    stop, done = threading.Event(), []
    opts = ServeOptions(model_repo=stack.repo, index_root=stack.index_root, host="127.0.0.1", port=port)
    thread = threading.Thread(target=lambda: done.append(
        serve(opts, env={"FACEVOICE_METRICS_PORT": str(metrics)}, stop=stop)))
    thread.start()
    try:
        stub = pb_grpc.FaceVoiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        wait_for(lambda: bool(stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=1).indexes), 60, "facevoice serve")
        hits = stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=media(stack, "toy001", "voice")), top_k=2))
        assert len(hits.hits) == 2
    finally:
        stop.set()
        thread.join(60)
    (result,) = done
    assert (result.port, result.metrics_port) == (port, metrics)
    out = capsys.readouterr().out
    assert "gRPC on 127.0.0.1:" in out and "draining" in out


def test_tls(stack, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    running, _ = start_service(stack, tls_cert=cert, tls_key=key)
    try:
        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        secure = pb_grpc.FaceVoiceStub(grpc.secure_channel(f"localhost:{running.port}", creds))
        assert secure.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=10).indexes
        plain = pb_grpc.FaceVoiceStub(grpc.insecure_channel(f"localhost:{running.port}"))
        with pytest.raises(grpc.RpcError) as e:
            plain.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0)


def test_graceful_stop_under_load_loses_no_call(stack):
    running, stub = start_service(stack)
    request = pb.SearchFacesRequest(voice=pb.Audio(data=media(stack, "toy001", "voice")), top_k=3)
    codes: list = []
    done = threading.Event()

    def client():
        while not done.is_set():
            try:
                stub.SearchFaces(request, timeout=30)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(codes) > 20, 30, "traffic")
    running.stop(grace_s=10)
    time.sleep(0.2)
    done.set()
    for t in threads:
        t.join()
    # calls arriving after the stop are refused (UNAVAILABLE, or CANCELLED when they raced the
    # shutdown before any handler saw them); every call a handler started reached its client
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    handled = running.metrics.registry.get_sample_value("facevoice_requests_total",
                                                        {"method": "SearchFaces", "code": "OK"})
    assert codes.count(grpc.StatusCode.OK) == handled > 20
