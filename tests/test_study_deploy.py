"""The study deployed as deploy/compose.yaml runs it, with real parts: two `facevoice study
serve` replicas on one real PostgreSQL, behind a real nginx running deploy/study/nginx.conf.template
with TLS. Plain HTTP only redirects; a participant goes through TLS to either replica; the join
limit sees each participant's address as the proxy hands it over, which a participant cannot
forge; a replica that dies is skipped; and the compose file wires the same parts."""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from devtools.local_servers import LocalNginx, LocalPostgres, LocalStudy
from devtools.study_helpers import answers, make_study

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                                reason="needs nginx (deploy/setup-debian.sh installs it)")


def call(url: str, method: str = "GET", body=None, context=None, headers=None) -> tuple[int, dict, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                       **(headers or {})})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **kw):
            return None

    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}"), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        payload = e.read()
        try:
            return e.code, json.loads(payload or b"{}"), {k.lower(): v for k, v in e.headers.items()}
        except json.JSONDecodeError:
            return e.code, {}, {k.lower(): v for k, v in e.headers.items()}


def test_two_replicas_on_postgresql_behind_tls(tmp_path, corpus):
    study = make_study(tmp_path / "study", corpus[0], per_minute=60, burst=4)
    toml = (study / "study.toml").read_text()
    (study / "study.toml").write_text(toml.replace("[joins]\n", "[joins]\ntrust_proxy = true\n"))
    with LocalPostgres() as pg, LocalStudy(study, pg.url) as a, LocalStudy(study, pg.url) as b, \
            LocalNginx([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]) as proxy:
        tls = ssl.create_default_context(cafile=str(proxy.cert))
        # plain HTTP is only a redirect to HTTPS
        status, _, headers = call(f"http://127.0.0.1:{proxy.http_port}/match")
        assert status == 301 and headers["location"].startswith(f"https://127.0.0.1:{proxy.https_port}/match")
        # without trusting the certificate nothing is said; with it, the pages and the API answer
        with pytest.raises(urllib.error.URLError):
            call(proxy.url + "/api/study")
        status, about, headers = call(proxy.url + "/api/study", context=tls)
        assert status == 200 and about["title"] == "test study"
        assert "max-age" in headers["strict-transport-security"]
        # participants through the proxy land on both replicas and share one database
        codes = []
        for k in range(4):
            status, p, _ = call(proxy.url + "/api/participants", "POST", {"role": "match"}, tls,
                                {"X-Forwarded-For": f"10.9.9.{k}"})  # forged: the proxy replaces it
            assert status == 201, p
            codes.append(p["code"])
        assert sorted(p_["experiment"] for p_ in
                      [call(proxy.url + f"/api/participants/{c}", context=tls)[1] for c in codes]) == [1, 2, 3, 4]
        # more joins from this address are limited, however the participant names themselves
        # (each replica limits its own share: at most 2 x burst go through)
        statuses = []
        for k in range(12):
            status, _, headers = call(proxy.url + "/api/participants", "POST", {"role": "match"}, tls,
                                      {"X-Forwarded-For": f"10.8.8.{k}"})
            statuses.append(status)
            if status == 429:
                break
        assert statuses[-1] == 429 and "retry-after" in headers and len(statuses) <= 9, statuses
        # a replica dies: the proxy skips it, and the participant goes on
        a.kill()
        code = codes[0]
        assert call(proxy.url + f"/api/participants/{code}/consent", "POST", {"agree": True}, tls)[0] == 200
        assert call(proxy.url + f"/api/participants/{code}/survey", "POST", {"answers": answers()}, tls)[0] == 200
        for _ in range(4):
            assert call(proxy.url + f"/api/participants/{code}", context=tls)[1]["stage"] == "tasks"


def test_compose_runs_the_study_with_postgresql_and_tls():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    study, db, proxy = services["study"], services["study-db"], services["study-proxy"]
    assert "study" in study["profiles"] and study["deploy"]["replicas"] == 2
    command = " ".join(study["command"])
    assert "study serve" in command and "--host 0.0.0.0" in command and "--database-file" in command
    assert {"study-admin-token", "study-database-url"} <= set(study["secrets"]) and not study.get("environment")
    assert study["depends_on"]["study-db"]["condition"] == "service_healthy"
    assert db["image"].startswith("postgres:") and "healthcheck" in db and "study-db-password" in db["secrets"]
    assert not db.get("ports") and not study.get("ports")  # only the proxy is reachable from outside
    assert proxy["image"].startswith("nginx:")
    mounts = " ".join(proxy["volumes"])
    assert "./study/nginx.conf.template:/etc/nginx/templates/default.conf.template" in mounts
    env = proxy["environment"]
    assert {"STUDY_UPSTREAM_SERVERS", "STUDY_HTTP_LISTEN", "STUDY_HTTPS_LISTEN", "STUDY_HTTPS_PORT", "STUDY_TLS_CERT",
            "STUDY_TLS_KEY"} <= set(env)
    template = (ROOT / "deploy" / "study" / "nginx.conf.template").read_text()
    assert all(f"${{{name}}}" in template for name in env)
    assert all(compose["secrets"][name]["file"].startswith("./secrets/") for name in
               (*study["secrets"], *db["secrets"], *proxy["secrets"]))
    from facevoice.cli import build_parser

    argv = study["command"]
    build_parser(argv).parse_args(argv)  # a real command line
