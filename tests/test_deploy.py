"""What can be checked of the deployment without Docker or Kubernetes: the Dockerfile, compose
and kustomize files against the service's real configuration and CLI, and the Prometheus files
with promtool and a real Prometheus scraping a running service."""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import urllib.parse
import urllib.request
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from devtools.local_servers import LocalProcess, free_port, wait_for
from facevoice.cli import build_parser
from facevoice.service.serve import ServeConfig, _convert
from facevoice.service.versions import current_version
from tests.serving import media, start_service

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SETTINGS = {f"FACEVOICE_{f.name.upper()}": f.name for f in fields(ServeConfig)}
DEFAULTS = ServeConfig()


def parses_as_a_command_line(argv: list[str]) -> None:
    """The arguments are a real `facevoice` command line (argparse exits on anything else)."""
    build_parser(argv).parse_args(argv)


def check_settings(env: dict[str, str]) -> ServeConfig:
    """Every FACEVOICE_* name is a real setting and its value converts; returns the config."""
    unknown = [k for k in env if k.startswith("FACEVOICE_") and k not in SETTINGS]
    assert not unknown, unknown
    return ServeConfig(**{SETTINGS[k]: _convert(SETTINGS[k], v) for k, v in env.items() if k in SETTINGS})


# Dockerfile ----------------------------------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's build stages by name ("" for the unnamed last one, the service's)."""
    out: dict[str, list] = {}
    name = None
    for kind, arg in dockerfile():
        if kind == "FROM":
            words = arg.split()
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else ""
            out[name] = []
        elif name is not None:
            out[name].append((kind, arg))
    return out


def test_the_study_image_serves_the_study():
    steps = stages()["study"]
    entry = json.loads(next(a for k, a in steps if k == "ENTRYPOINT"))
    cmd = json.loads(next(a for k, a in steps if k == "CMD"))
    assert entry == ["facevoice"] and cmd[:2] == ["study", "serve"]
    parses_as_a_command_line(cmd)
    assert {int(p) for k, a in steps if k == "EXPOSE" for p in a.split()} == {8600}
    assert next(a for k, a in steps if k == "USER") not in ("root", "0")
    copies = " ".join(a for k, a in steps if k == "COPY")
    assert "--from=study-pages /web/node_modules" in copies and "facevoice/study/web/node_modules" in copies
    pins = " ".join(a for k, a in stages()["study-build"] if k == "RUN")
    from importlib.metadata import version

    for name in ("fastapi", "uvicorn", "psycopg"):  # the versions the tests ran
        assert f"{name}" in pins and version(name) in pins, name


def test_dockerfile_matches_the_service():
    steps = stages()[""]
    for kind, arg in [s for st in stages().values() for s in st]:
        if kind == "COPY" and not arg.startswith("--from"):
            for src in shlex.split(arg)[:-1]:
                assert (ROOT / src).exists(), src
    entry = json.loads(next(a for k, a in steps if k == "ENTRYPOINT"))
    cmd = json.loads(next(a for k, a in steps if k == "CMD"))
    assert entry == ["facevoice"]
    parses_as_a_command_line(cmd)
    health = json.loads(next(a for k, a in steps if k == "HEALTHCHECK").split("CMD", 1)[1])
    assert health[0] == "facevoice"
    parses_as_a_command_line(health[1:])
    env = dict(re.findall(r"(FACEVOICE_\w+)=(\S+)", " ".join(a for k, a in steps if k == "ENV")))
    cfg = check_settings(env)
    exposed = {int(p) for k, a in steps if k == "EXPOSE" for p in a.split()}
    assert exposed == {cfg.port, cfg.metrics_port} == {DEFAULTS.port, DEFAULTS.metrics_port}
    assert next(a for k, a in steps if k == "USER") not in ("root", "0")


def test_service_image_requirements_cover_the_online_imports():
    """The image has no torch: every third-party module the online path imports is pinned there."""
    reqs = {re.split(r"[=\[<>]", line)[0].lower() for line in (DEPLOY / "requirements-service.txt").read_text()
            .splitlines() if line and not line.startswith("#")}
    declared = {re.split(r"[<>=;\[ ]", d)[0].lower() for d in tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert reqs <= declared
    dist = {"PIL": "pillow", "av": "av", "webrtcvad": "webrtcvad-wheels", "dlib": "dlib-bin",
            "face_recognition_models": "face-recognition-models", "grpc": "grpcio",
            "grpc_health": "grpcio-health-checking",
            "grpc_reflection": "grpcio-reflection", "google": "protobuf", "prometheus_client": "prometheus-client",
            "faiss": "faiss-cpu", "tritonclient": "tritonclient", "onnxruntime": "onnxruntime", "redis": "redis",
            "numpy": "numpy", "scipy": "scipy", "soundfile": "soundfile", "tqdm": "tqdm",
            "threadpoolctl": "threadpoolctl"}
    # optional backends: an extra of the package, and a build argument of the image that installs it
    optional = {"pymilvus": "milvus"}
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, extra in optional.items():
        assert any(d.startswith(module) for d in extras[extra])
        assert f'ARG {extra.upper()}=no' in (ROOT / "Dockerfile").read_text()
    online = [*(ROOT / "service").rglob("*.py"), *(ROOT / "facevoice" / n for n in ("cli.py", "query.py", "health.py"))]
    for path in online:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                assert not name.startswith("facevoice.training"), f"{path.name} imports {name}: offline code"
                top = name.split(".")[0]
                if top in ("service", "facevoice", "__future__", *optional) or \
                        top in __import__("sys").stdlib_module_names:
                    continue
                assert dist.get(top) in reqs, f"{path.name} imports {top}, not in requirements-service.txt"


# compose ---------------------------------------------------------------------------------------
def test_compose_matches_the_service():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"triton", "redis", "facevoice", "index-build", "index-prune", "prometheus", "grafana",
                             "study-db", "study", "study-proxy"}  # the study's: tests/test_study_deploy.py
    svc = services["facevoice"]
    cfg = check_settings(svc["environment"])
    parses_as_a_command_line(svc["command"])
    assert {f"{cfg.port}:{cfg.port}", f"{cfg.metrics_port}:{cfg.metrics_port}"} == set(svc["ports"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    assert str(cfg.model_repo) in mounts and str(cfg.index_root) in mounts
    host, port = cfg.triton_url.split(":")
    assert host == "triton" and f"{port}:{port}" in services["triton"]["ports"]
    assert urllib.parse.urlparse(cfg.redis_url).hostname == "redis"
    job = services["index-build"]
    parses_as_a_command_line(job["command"])
    args = job["command"]
    assert args[args.index("--triton-url") + 1] == cfg.triton_url
    assert args[args.index("--out") + 1] == str(cfg.index_root) and job["profiles"] == ["jobs"]
    assert "--model-repository=/models" in services["triton"]["command"]
    parses_as_a_command_line(services["index-prune"]["command"])
    # the gallery write log's Redis: durable, and nothing without a TTL evicted
    redis_durable(services["redis"]["command"][1:])
    assert "redis-data:/data" in services["redis"]["volumes"]
    # listening on every address, so tokens are set, from secrets
    assert cfg.host == "0.0.0.0" and {"facevoice_token", "facevoice_admin_token"} <= set(svc["secrets"])
    for name in ("token", "admin_token"):
        secret = svc["environment"][f"FACEVOICE_{name.upper()}_FILE"].rsplit("/", 1)[1]
        assert secret in compose["secrets"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            assert (DEPLOY / volume.split(":")[0]).exists(), volume
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in scrape}
    assert targets["facevoice"] == [f"facevoice:{cfg.metrics_port}"]
    assert targets["triton"] == ["triton:8002"] and "8002:8002" in services["triton"]["ports"]


def redis_durable(args: list[str]) -> None:
    """AOF on with fsync before each reply; eviction only of keys with a TTL (not the stream)."""
    flags = dict(zip(args[::2], args[1::2], strict=False))
    assert flags["--appendonly"] == "yes" and flags["--appendfsync"] == "always"
    assert flags["--maxmemory-policy"].startswith("volatile-")


# kubernetes -----------------------------------------------------------------------------------
def k8s(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def base_objects() -> dict[tuple[str, str], dict]:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "base" / "kustomization.yaml").read_text())
    objects = {}
    for resource in kustomization["resources"]:
        for d in k8s(DEPLOY / "k8s" / "base" / resource):
            objects[(d["kind"], d["metadata"]["name"])] = d
    return objects


def apply_patch(doc: dict, ops: list[dict]) -> dict:
    """The JSON-patch subset the overlay uses (add, replace), with ~1 escapes; fails on a bad path."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        key = int(last) if isinstance(node, list) else last
        if op["op"] == "replace":
            assert (key < len(node)) if isinstance(node, list) else (key in node), op["path"]
        node[key] = op["value"]
    return doc


def test_kubernetes_base_matches_the_service():
    objects = base_objects()
    config = check_settings(objects[("ConfigMap", "facevoice")]["data"])
    deploy = objects[("Deployment", "facevoice")]["spec"]["template"]["spec"]
    container = deploy["containers"][0]
    parses_as_a_command_line(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == config.port
    service = objects[("Service", "facevoice")]["spec"]["ports"]
    assert {p["targetPort"] for p in service} == set(ports.values())
    claims = {name for kind, name in objects if kind == "PersistentVolumeClaim"}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {str(config.model_repo), str(config.index_root)} <= mounts
    assert {v["persistentVolumeClaim"]["claimName"] for v in deploy["volumes"]} <= claims
    assert config.triton_url == "triton:8001" and ("Service", "triton") in objects
    triton_ports = {p["port"] for p in objects[("Service", "triton")]["spec"]["ports"]}
    assert 8001 in triton_ports and urllib.parse.urlparse(config.redis_url).hostname == "redis"
    job = objects[("CronJob", "index-rebuild")]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    build, prune = job["initContainers"][0]["args"], job["containers"][0]["args"]
    parses_as_a_command_line(build)
    parses_as_a_command_line(prune)
    assert build[:2] == ["index", "build"] and prune[:2] == ["index", "prune"]
    redis = objects[("Deployment", "redis")]["spec"]["template"]["spec"]
    redis_durable(redis["containers"][0]["args"])
    assert {v["persistentVolumeClaim"]["claimName"] for v in redis["volumes"]} <= claims
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert {"FACEVOICE_TOKEN", "FACEVOICE_ADMIN_TOKEN"} <= set(secrets)
    assert not any(ref.get("optional") for ref in secrets.values())  # no token, no start
    assert {v["persistentVolumeClaim"]["claimName"] for v in job["volumes"]} <= claims
    hpa = objects[("HorizontalPodAutoscaler", "facevoice")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "facevoice" and hpa["minReplicas"] >= 2


def test_sharded_build_jobs_match_the_cli():
    folder = DEPLOY / "k8s" / "sharded-build"
    shards = yaml.safe_load((folder / "index-shards.yaml").read_text())
    merge = yaml.safe_load((folder / "index-merge.yaml").read_text())
    assert shards["spec"]["completionMode"] == "Indexed"
    n = shards["spec"]["completions"]
    args = shards["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"$(JOB_COMPLETION_INDEX)/{n}" in args  # Kubernetes sets the index; it fills in the argument
    for i in (0, n - 1):
        parses_as_a_command_line([a.replace("$(JOB_COMPLETION_INDEX)", str(i)) for a in args])
    merge_args = merge["spec"]["template"]["spec"]["containers"][0]["args"]
    parses_as_a_command_line(merge_args)
    assert merge_args[:2] == ["index", "merge"] and merge_args[merge_args.index("--shards") + 1] == str(n)
    same = ("--gallery", "--model-repo", "--out")
    assert all(args[args.index(f) + 1] == merge_args[merge_args.index(f) + 1] for f in same)
    claims = {name for kind, name in base_objects() if kind == "PersistentVolumeClaim"}
    for job in (shards, merge):
        assert {v["persistentVolumeClaim"]["claimName"] for v in job["spec"]["template"]["spec"]["volumes"]} <= claims


def test_sharded_build_script_runs_every_shard_then_the_merge(stack, tmp_path):
    from tests.serving import copy_indexes

    out = copy_indexes(stack, tmp_path / "indexes")
    before = current_version(out, "voice")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(DEPLOY / "sharded-build.sh"), "2", str(stack.corpus / "manifest.csv"),
                        str(stack.repo), str(out), "--memory-budget", "1GB"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "--shard 0/2" in r.stdout and "--shard 1/2" in r.stdout and "index merge: 2 shards" in r.stdout
    assert current_version(out, "voice") != before


def test_gpu_overlay_patches_apply():
    objects = base_objects()
    overlay = yaml.safe_load((DEPLOY / "k8s" / "overlays" / "gpu" / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../../base"]
    patched = {}
    for p in overlay["patches"]:
        key = (p["target"]["kind"], p["target"]["name"])
        patched[key] = apply_patch(objects[key], yaml.safe_load(p["patch"]))
    triton = patched[("Deployment", "triton")]["spec"]["template"]["spec"]["containers"][0]
    assert "--model-config-name=gpu" in triton["args"] and "--model-config-name=cpu" not in triton["args"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert check_settings(patched[("ConfigMap", "facevoice")]["data"]).gpu is True


def test_every_kubernetes_object_validates_against_the_api_schemas():
    """kubernetes-validate (the API's own OpenAPI schemas, shipped in the package: no cluster, no
    network), strict: an unknown field is an error. The base, the GPU overlay's patched objects,
    and the sharded build's jobs."""
    import kubernetes_validate

    objects = list(base_objects().values())
    overlay = yaml.safe_load((DEPLOY / "k8s" / "overlays" / "gpu" / "kustomization.yaml").read_text())
    by_key = base_objects()
    objects += [apply_patch(by_key[(p["target"]["kind"], p["target"]["name"])], yaml.safe_load(p["patch"]))
                for p in overlay["patches"]]
    objects += [d for f in sorted((DEPLOY / "k8s" / "sharded-build").glob("*.yaml")) for d in k8s(f)]
    assert len(objects) >= 17
    for doc in objects:
        kubernetes_validate.validate(doc, "1.31", strict=True)  # raises on a schema error
    broken = copy.deepcopy(by_key[("Deployment", "facevoice")])
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):  # the check can fail
        kubernetes_validate.validate(broken, "1.31", strict=True)


def test_compose_and_kubernetes_run_the_image_as_it_is_built():
    """The Dockerfile's service stage against what runs it: the user it declares is the one the
    manifests name, the directories it makes are the ones they mount, read-only where the
    service only reads, and every FACEVOICE_ setting the image sets is one the service knows."""
    steps = stages()[""]
    user = next(a for k, a in steps if k == "USER")
    env = dict(re.findall(r"(FACEVOICE_\w+)=(\S+)", " ".join(a for k, a in steps if k == "ENV")))
    cfg = check_settings(env)
    root = " ".join(a for st in stages().values() for k, a in st if k == "RUN")
    assert "mkdir -p /models /indexes" in root and "chown facevoice /indexes" in root
    for deployment in (base_objects()[("Deployment", "facevoice")],):
        pod = deployment["spec"]["template"]["spec"]
        assert str(pod["securityContext"]["runAsUser"]) == user
        mounts = {m["mountPath"]: m.get("readOnly", False) for m in pod["containers"][0]["volumeMounts"]}
        assert mounts[str(cfg.model_repo)] is True and mounts[str(cfg.index_root)] is True  # the service only reads
    job = base_objects()[("CronJob", "index-rebuild")]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert str(job["securityContext"]["runAsUser"]) == user
    job_mounts = {m["mountPath"]: m.get("readOnly", False) for c in job["initContainers"] for m in c["volumeMounts"]}
    assert job_mounts[str(cfg.index_root)] is False and job_mounts[str(cfg.model_repo)] is True  # the job writes
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    svc = {v.split(":")[1]: v.split(":")[2:] for v in compose["facevoice"]["volumes"]}
    assert svc[str(cfg.model_repo)] == ["ro"] and svc[str(cfg.index_root)] == ["ro"]
    build = {v.split(":")[1]: v.split(":")[2:] for v in compose["index-build"]["volumes"]}
    assert build[str(cfg.index_root)] == [] and build[str(cfg.model_repo)] == ["ro"]


# Prometheus -----------------------------------------------------------------------------------
def promtool(*args: str, cwd: Path = DEPLOY / "prometheus", stdin: str | None = None) -> str:
    r = subprocess.run(["promtool", *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def test_promtool_accepts_config_rules_and_rule_tests():
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in promtool("check", "rules", "rules.yml")
    assert "SUCCESS" in promtool("test", "rules", "rules_test.yml")


class LocalPrometheus(LocalProcess):
    def __init__(self, workdir: Path, target: str):
        self.port, self.workdir = free_port(), workdir
        rules = (DEPLOY / "prometheus" / "rules.yml").read_text()
        (workdir / "rules.yml").write_text(rules)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": ["rules.yml"],
            "scrape_configs": [{"job_name": "facevoice", "static_configs": [{"targets": [target]}]}]}))

    def start(self) -> LocalPrometheus:
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: urllib.request.urlopen(self.url("/-/ready"), timeout=1).status == 200, 60, "prometheus",
                 self.proc)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def query(self, expr: str) -> dict:
        url = self.url("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        try:
            return json.loads(urllib.request.urlopen(url, timeout=5).read())
        except urllib.error.HTTPError as e:  # a bad expression answers 400 with a JSON error
            return json.loads(e.read())


def test_real_prometheus_scrapes_the_service_and_the_dashboard_queries_parse(stack, tmp_path):
    from facevoice.v1 import facevoice_pb2 as pb

    running, stub = start_service(stack)
    try:
        stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=media(stack, "toy001", "voice")), top_k=2))
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5).read()
        promtool("check", "metrics", stdin=metrics.decode())
        with LocalPrometheus(tmp_path, f"127.0.0.1:{running.metrics_port}") as prom:
            def requests_scraped():
                return prom.query('facevoice_requests_total{method="SearchFaces"}')["data"]["result"]

            wait_for(requests_scraped, 60, "a scrape of facevoice_requests_total")
            result = requests_scraped()
            assert result[0]["metric"]["code"] == "OK" and result[0]["metric"]["job"] == "facevoice"
            items = prom.query("facevoice_index_items")["data"]["result"]
            assert {r["metric"]["index"] for r in items} == {"face", "voice", "face_feature"}
            wait_for(lambda: prom.query("facevoice:requests:rate5m")["data"]["result"], 60, "a recording rule")
            dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "facevoice.json").read_text())
            for panel in dashboard["panels"]:
                for target in panel["targets"]:
                    answer = prom.query(target["expr"])
                    assert answer["status"] == "success", (panel["title"], answer)
    finally:
        running.stop(0)
