"""The service image as it is deployed (deploy/image-test.sh runs this after building it): the
rebuild job from the image on a small gallery, then the image's own entrypoint and command as
its own user, with the model repository read-only and the index root mounted as the manifests
mount them (the service read-only, the job read-write) and the gallery log on a real Redis; every
RPC queried and its answer checked; then what must not be in the image (torch, a compiler, pip
and its cache) and that its user can write nowhere but /indexes.

    python -m devtools.image_check --image localhost/facevoice:ci [--models models/demo]

Runs with buildah (these machines have no Docker engine); a container shares the machine's
network, so the service listens on free loopback ports."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

USER = "10001"  # the image's user (Dockerfile; the Kubernetes manifests run it as this uid)


def buildah(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=check, **kw)


class Container:
    """A working container of the image: `run` a command in it as the image's user."""

    def __init__(self, image: str):
        self.image = image
        self.id = buildah("from", "--quiet", image).stdout.strip()
        inspected = json.loads(buildah("inspect", "--type", "image", image).stdout)
        config = inspected["OCIv1"]["config"]
        self.entrypoint, self.cmd = config.get("Entrypoint") or [], config.get("Cmd") or []
        self.env = dict(e.split("=", 1) for e in config.get("Env", []))
        # the docker format keeps the HEALTHCHECK: ["CMD", argv...]
        test = ((inspected.get("Docker") or {}).get("config") or {}).get("Healthcheck", {}).get("Test") or []
        self.healthcheck = test[1:] if test[:1] == ["CMD"] else []

    def set_env(self, **env: str) -> None:
        for k, v in env.items():
            buildah("config", "--env", f"{k}={v}", self.id)

    def argv(self, command: list[str], volumes: dict[Path, str]) -> list[str]:
        mounts = [a for host, where in volumes.items() for a in ("-v", f"{host}:{where}")]
        return ["buildah", "run", "--isolation", "chroot", "--user", USER, *mounts, self.id, "--", *command]

    def run(self, command: list[str], volumes: dict[Path, str] | None = None, timeout: float = 600):
        return subprocess.run(self.argv(command, volumes or {}), capture_output=True, text=True, timeout=timeout)

    def remove(self) -> None:
        buildah("rm", self.id, check=False)


def timed(results: list, name: str):
    class Step:
        def __enter__(self):
            self.start = time.perf_counter()
            print(f"== image check: {name}", flush=True)

        def __exit__(self, *exc):
            results.append((name, time.perf_counter() - self.start, exc[0] is None))
    return Step()


def small_gallery(out: Path) -> Path:
    """12 synthetic people, all in `test`: the gallery the rebuild job indexes."""
    from facevoice.training.corpus.synth import CorpusSynthOptions, corpus_synth

    corpus_synth(CorpusSynthOptions(out=out, identities=12, seed=3, faces=2, clips=2, split=(0.0, 0.0, 1.0),
                                    workers=1, oracle_trials=0, force=True), progress=False)
    return out


def query_everything(port: int, admin_token: str, gallery: Path) -> dict:
    """Every RPC of the service, each answer checked; what each gave, for the summary."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from facevoice.service.corpus import read_manifest
    from facevoice.v1 import facevoice_pb2 as pb
    from facevoice.v1 import facevoice_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.FaceVoiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, health
    rows = [r for r in read_manifest(gallery) if r.modality in ("face", "voice")]
    face = next(r for r in rows if r.modality == "face")
    voice = next(r for r in rows if r.modality == "voice" and r.identity == face.identity)
    other = next(r for r in rows if r.modality == "face" and r.identity != face.identity)
    face_bytes, voice_bytes = (gallery / face.path).read_bytes(), (gallery / voice.path).read_bytes()
    people = {r.identity for r in rows}
    got = {}
    info = stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=30)
    names = {i.name: i for i in info.indexes}
    assert {"face", "voice"} <= set(names) and names["face"].size == sum(r.modality == "face" for r in rows), info
    got["GetIndexInfo"] = {n: i.size for n, i in names.items()}
    faces = stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=voice_bytes), top_k=5), timeout=60)
    assert len(faces.hits) == 5 and {h.identity for h in faces.hits} <= people, faces
    got["SearchFaces"] = [h.identity for h in faces.hits]
    voices = stub.SearchVoices(pb.SearchVoicesRequest(face=pb.Image(data=face_bytes), top_k=5), timeout=60)
    assert len(voices.hits) == 5 and {h.identity for h in voices.hits} <= people, voices
    got["SearchVoices"] = [h.identity for h in voices.hits]
    match = stub.Match(pb.MatchRequest(probe=pb.Media(audio=pb.Audio(data=voice_bytes)), candidates=[
        pb.Media(image=pb.Image(data=face_bytes)), pb.Media(image=pb.Image(data=(gallery / other.path).read_bytes()))]),
        timeout=60)
    assert sorted(r.index for r in match.ranking) == [0, 1], match
    got["Match"] = [r.index for r in match.ranking]
    rec = stub.ReconstructFace(pb.ReconstructFaceRequest(voice=pb.Audio(data=voice_bytes), top_k=3), timeout=60)
    assert rec.png.startswith(b"\x89PNG") and len(rec.nearest) == 3, "ReconstructFace gave no PNG"
    got["ReconstructFace"] = f"{len(rec.png)} bytes of PNG"
    emb = stub.Embed(pb.EmbedRequest(media=pb.Media(image=pb.Image(data=face_bytes))), timeout=60)
    assert len(emb.embedding) > 0 and emb.model_version, emb
    got["Embed"] = f"{len(emb.embedding)}-d, model {emb.model_version[:12]}"
    item = pb.GalleryItem(item_id="image-check-new", identity="new-person", media=pb.Media(image=pb.Image(
        data=(gallery / other.path).read_bytes())), attributes={"gender": "female"})
    try:
        stub.UpsertItems(pb.UpsertItemsRequest(items=[item]), timeout=60)
        raise AssertionError("an upsert without the admin token was taken")
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), e
    done = stub.UpsertItems(pb.UpsertItemsRequest(items=[item]), timeout=60,
                            metadata=(("authorization", f"Bearer {admin_token}"),))
    assert done.upserted == 1 and done.index_size["face"] == names["face"].size + 1, done
    deadline = time.monotonic() + 30
    while True:  # applied through the Redis log, then searchable
        near = stub.SearchVoices(pb.SearchVoicesRequest(face=pb.Image(data=face_bytes), top_k=5), timeout=60)
        size = {i.name: i.size for i in stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=30).indexes}["face"]
        if size == names["face"].size + 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert size == names["face"].size + 1, f"the upsert never reached the face index ({size})"
    got["UpsertItems"] = f"face index {names['face'].size} -> {size} items"
    del near
    return got


def inside_checks(ctr: Container, volumes: dict[Path, str]) -> dict:
    """What must not be in the image, and where its user may write, asked from inside it."""
    script = r"""
import importlib.util, json, os, shutil
out = {"torch": importlib.util.find_spec("torch") is not None,
       "pip": importlib.util.find_spec("pip") is not None,
       "scipy": importlib.util.find_spec("scipy") is not None,
       "compilers": [c for c in ("gcc", "cc", "g++", "c++", "clang", "make") if shutil.which(c)],
       "pip_cache": [p for p in ("/root/.cache/pip", "/home/facevoice/.cache/pip", "/.cache/pip") if os.path.exists(p)],
       "uid": os.getuid(), "writable": []}
for where in ("/", "/tmp", "/var/tmp", "/opt/venv", "/opt/venv/lib/python3.11/site-packages", "/models",
              "/etc", "/usr", "/home", "/root", "/indexes"):
    try:
        with open(os.path.join(where, ".write-check"), "w") as f:
            f.write("x")
        os.remove(os.path.join(where, ".write-check"))
        out["writable"].append(where)
    except OSError:
        pass
print(json.dumps(out))
"""
    done = ctr.run(["python", "-c", script], volumes, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def image_bytes(image: str) -> int:
    out = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", image], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    from devtools.local_servers import LocalRedis, free_port, wait_for

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default="localhost/facevoice:ci")
    p.add_argument("--models", type=Path, default=Path("models/demo"), help="the model repository to serve")
    p.add_argument("--work", type=Path, help="where the gallery and the index root go (default: a new temp dir)")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="facevoice-image-"))
    steps: list = []
    models, gallery, indexes, secrets = args.models.resolve(), work / "gallery", work / "indexes", work / "secrets"
    for d in (indexes, secrets):
        d.mkdir(parents=True, exist_ok=True)
    os.chown(indexes, int(USER), int(USER))  # the job's user writes there, as on a volume it owns
    admin_token = os.urandom(16).hex()
    (secrets / "admin-token").write_text(admin_token)
    os.chmod(secrets / "admin-token", 0o644)
    ctr = Container(args.image)
    service, redis = None, None
    try:
        with timed(steps, "a 12-person gallery (on this machine)"):
            small_gallery(gallery)
        with timed(steps, "the rebuild job, from the image: index build"):
            job = ctr.run(["facevoice", "index", "build", "--gallery", "/gallery/manifest.csv", "--model-repo",
                           "/models", "--out", "/indexes", "--split", "test", "--no-progress"],
                          {models: "/models:ro", gallery: "/gallery:ro", indexes: "/indexes"})
            assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:]
            assert (indexes / "face" / "current").exists() and (indexes / "voice" / "current").exists()
        with timed(steps, "the image's own entrypoint and command, as its user, on Redis"):
            redis = LocalRedis().start()
            port, metrics = free_port(), free_port()
            ctr.set_env(FACEVOICE_PORT=str(port), FACEVOICE_METRICS_PORT=str(metrics), FACEVOICE_REDIS_URL=redis.url,
                        FACEVOICE_ADMIN_TOKEN_FILE="/run/secrets/admin-token", FACEVOICE_POLL_S="0.5")
            command = [*ctr.entrypoint, *ctr.cmd]
            assert command == ["facevoice", "serve"], command
            log = work / "service.log"
            service = subprocess.Popen(ctr.argv(command, {models: "/models:ro", indexes: "/indexes:ro",
                                                          secrets: "/run/secrets:ro"}),
                                       stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

            def serving() -> bool:
                import grpc
                from grpc_health.v1 import health_pb2, health_pb2_grpc

                stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
                return stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1

            wait_for(serving, 180, "the service in the image", service, log)
            # the image's own HEALTHCHECK, run inside it (its port is the one this run gave the service)
            assert ctr.healthcheck[:2] == ["facevoice", "health"], f"the image's HEALTHCHECK: {ctr.healthcheck}"
            check = [a.replace(":50051", f":{port}") for a in ctr.healthcheck]
            health = ctr.run(check, timeout=60)
            assert health.returncode == 0 and "SERVING" in health.stdout, health.stdout + health.stderr
        with timed(steps, "every RPC, answers checked"):
            answers = query_everything(port, admin_token, gallery)
            import urllib.request

            scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
            assert "facevoice_" in scraped, "no facevoice metrics on /metrics"
        with timed(steps, "inside the image: no torch, compiler or pip; writable nowhere but /indexes"):
            inside = inside_checks(ctr, {models: "/models:ro", indexes: "/indexes"})
            assert inside["uid"] == int(USER), inside
            assert not inside["torch"] and not inside["pip"] and not inside["scipy"], inside
            assert not inside["compilers"] and not inside["pip_cache"], inside
            assert inside["writable"] == ["/indexes"], f"the image's user can write to {inside['writable']}"
    finally:
        if service is not None:
            os.killpg(service.pid, signal.SIGTERM)
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(service.pid, signal.SIGKILL)
        if redis is not None:
            redis.stop()
        ctr.remove()
    size = image_bytes(args.image)
    width = max(len(n) for n, _, _ in steps)
    print(f"\nimage check of {args.image}: {size / 1e6:.0f} MB")
    for name, seconds, ok in steps:
        print(f"  {name:<{width}}  {seconds:6.1f} s  {'ok' if ok else 'FAILED'}")
    for rpc, what in answers.items():
        print(f"  {rpc}: {what}")
    print(f"  inside: torch {inside['torch']}, pip {inside['pip']}, scipy {inside['scipy']}, compilers "
          f"{inside['compilers'] or 'none'}; writable by uid {inside['uid']}: {', '.join(inside['writable'])}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    from facevoice.cli import run_script

    run_script(main, "python -m devtools.image_check")
