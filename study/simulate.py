"""`facevoice study simulate --study STUDY_DIR --participants N --skill oracle|RATE`: scripted
participants through the study's real HTTP API, for testing and for planning (docs/study.md).

Each simulated matcher joins, consents, answers the questionnaire, plays every recording and
answers every task through the same endpoints as the browser pages. How often they are right:
- `--skill RATE` (e.g. 0.6): each participant's own rate is drawn around RATE (SD `--spread`,
  0.1 by default, about Table 1's 12-14%), and each task is right with that probability;
- `--skill oracle`: the corpus's oracle (the generator's true joint model, docs/corpus.md)
  answers, and a participant follows it except on a lapse (rate `--lapse`, 0.2), when they guess.
Controls are answered like any task, except that `--careless` (0.05) of the participants guess
on everything, so some fail the controls and are excluded, as 9 of 301 were in sec. 3.2.

The simulator reads each trial's people through the admin export (it needs the admin token);
the answers go through the participant API only."""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from facevoice.cli import options
from facevoice.service.errors import UsageError
from facevoice.study.config import EXPERIMENTS, load_study


class Refused(Exception):
    """The study server answered with an error status."""

    def __init__(self, status: int, payload):
        super().__init__(f"{status}: {payload}")
        self.status, self.payload = status, payload


class Client:
    """The study's HTTP API over urllib: `send` gives (status, JSON or bytes) for any answer,
    `call` the JSON of a success and raises Refused otherwise."""

    def __init__(self, base: str, admin_token: str | None = None):
        self.base, self.admin_token = base.rstrip("/"), admin_token

    def send(self, method: str, path: str, body=None, admin: bool = False, raw: bytes | None = None,
             content_type: str = "application/json") -> tuple[int, dict | bytes]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        if admin:
            req.add_header("Authorization", f"Bearer {self.admin_token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, payload, ctype = r.status, r.read(), r.headers.get("content-type", "")
        except urllib.error.HTTPError as e:
            status, payload, ctype = e.code, e.read(), e.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            return status, json.loads(payload) if payload else {}
        return status, payload

    def call(self, method: str, path: str, body=None, admin: bool = False, raw: bytes | None = None,
             content_type: str = "application/json"):
        status, payload = self.send(method, path, body, admin, raw, content_type)
        if status >= 400:
            raise Refused(status, payload)
        return payload


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(study_dir: Path, database: str | None, admin_token: str):
    """The study's app under uvicorn in a thread, on a free loopback port; yields its base URL."""
    import uvicorn

    from facevoice.study.app import create_app
    from facevoice.study.store import opened

    with opened(study_dir, database) as (study, store):
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(study, store, admin_token), host="127.0.0.1", port=port,
                                               log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the study server did not start")
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)


def oracle_chooser(study_dir: Path):
    """(direction, query, options) -> the option the corpus's oracle picks; None if the corpus
    is not synthetic."""
    from facevoice.training.corpus.oracle import corpus_people, log_voice_given_face, log_voice_marginal

    study = load_study(study_dir)
    found = corpus_people(study.corpus)
    if found is None:
        return None
    model, people = found

    def choose(direction: str, query: str, options: list[str]) -> int:
        if direction == "V->F":
            scores = [log_voice_given_face(model, people[query].voice, people[o].face) for o in options]
        else:
            scores = [log_voice_given_face(model, people[o].voice, people[query].face)
                      - log_voice_marginal(model, people[o].voice) for o in options]
        return int(scores[1] > scores[0])

    return choose


def simulate(client: Client, n: int, skill: str, seed: int = 0, spread: float = 0.1, lapse: float = 0.2,
             careless: float = 0.05, survey: dict | None = None, chooser=None, progress: bool = True) -> list[dict]:
    """N matchers through the API; returns one dict per participant (code, experiment, the rate
    they were given, careless or not)."""
    rng = random.Random(seed)
    about = client.call("GET", "/api/study")
    answers = survey or default_answers(about["survey"])
    out = []
    for k in range(n):
        p = client.call("POST", "/api/participants", {"role": "match", "source": "simulated"}, admin=True)
        code = p["code"]
        client.call("POST", f"/api/participants/{code}/consent", {"agree": True})
        client.call("POST", f"/api/participants/{code}/survey", {"answers": answers})
        plan = client.call("GET", f"/api/participants/{code}/trials")
        truth = {t["idx"]: t for t in client.call("GET", f"/api/admin/export?code={code}", admin=True)["trials"]}
        is_careless = rng.random() < careless
        rate = min(1.0, max(0.0, rng.gauss(float(skill), spread))) if skill != "oracle" else None
        enforce = about["listening"]["enforce"]
        for t in plan["trials"]:
            idx, real = t["index"], truth[t["index"]]
            slots = ("query",) if p["direction"] == "V->F" else ("0", "1")
            for slot in slots:  # fetched as the page does (the server's listening check starts there)
                client.call("GET", f"/api/participants/{code}/trials/{idx}/media/{slot}")
            if enforce:
                time.sleep(plan["clip_seconds"] * len(slots))
            for slot in slots:
                client.call("POST", f"/api/participants/{code}/trials/{idx}/played", {"slot": slot})
            if is_careless:
                choice = rng.randrange(2)
            elif rate is not None:
                choice = real["correct"] if rng.random() < rate else 1 - real["correct"]
            elif rng.random() < lapse:
                choice = rng.randrange(2)
            else:
                choice = chooser(p["direction"], real["query"], [real["option0"], real["option1"]])
            client.call("POST", f"/api/participants/{code}/trials/{idx}/answer",
                        {"choice": choice, "rt_ms": round(rng.uniform(1500, 6000), 1)})
        done = client.call("POST", f"/api/participants/{code}/finish")
        out.append({"code": code, "experiment": p["experiment"], "rate": rate, "careless": is_careless,
                    "completion_code": done["completion_code"]})
        if progress:
            print(f"\rsimulate: {k + 1}/{n} participants", end="", flush=True)
    if progress:
        print()
    return out


def default_answers(questions: list[dict]) -> dict:
    """A plausible questionnaire: the first option of each (after gender's), 30 years, English;
    never one who took part in the recording."""
    out = {}
    for q in questions:
        if q["name"] == "recorded":
            out[q["name"]] = "no"
        elif "options" in q:
            out[q["name"]] = q["options"][0]
        elif q.get("type") == "number":
            out[q["name"]] = 30
        else:
            out[q["name"]] = "English"
    return out


@dataclass(frozen=True)
class StudySimulateOptions:
    study: Path
    participants: int = 40
    skill: str = "oracle"  # 'oracle' or a rate in [0, 1]
    url: str | None = None  # a running `study serve` (None: the study served here on a free port)
    database: str | None = None  # with no url: the database URL (default STUDY_DIR's SQLite)
    admin_token_file: Path | None = None
    seed: int = 0
    spread: float = 0.1
    lapse: float = 0.2
    careless: float = 0.05
    no_progress: bool = False


@dataclass(frozen=True)
class StudySimulateResult:
    study: Path
    skill: str
    participants: list[dict]  # one per matcher: code, experiment, rate, careless, completion_code

    @property
    def per_experiment(self) -> dict[int, int]:
        return {e: sum(r["experiment"] == e for r in self.participants) for e in EXPERIMENTS}

    def summary(self) -> str:
        careless = sum(r["careless"] for r in self.participants)
        return "\n".join([
            f"simulated {len(self.participants)} matchers (skill {self.skill}; {careless} careless): "
            + ", ".join(f"experiment {e}: {n}" for e, n in self.per_experiment.items() if n),
            f"next: facevoice study analyze --study {self.study} --out REPORT_DIR --sources simulated"])


def add_arguments(p: argparse.ArgumentParser) -> None:
    o = StudySimulateOptions
    p.add_argument("--study", type=Path, required=True)
    p.add_argument("--participants", type=int, default=o.participants)
    p.add_argument("--skill", default=o.skill, help="'oracle' or a rate in [0, 1] (default oracle)")
    p.add_argument("--url", help="a running `study serve` (default: serve the study here on a free port)")
    p.add_argument("--database", help="with no --url: the database URL (default STUDY_DIR's SQLite)")
    p.add_argument("--admin-token-file", type=Path)
    p.add_argument("--seed", type=int, default=o.seed)
    p.add_argument("--spread", type=float, default=o.spread)
    p.add_argument("--lapse", type=float, default=o.lapse)
    p.add_argument("--careless", type=float, default=o.careless)
    p.add_argument("--no-progress", action="store_true")


def study_simulate(opts: StudySimulateOptions) -> StudySimulateResult:
    """`study simulate`: `simulate` against --url, or against the study served here for the run."""
    from facevoice.study.serve import admin_token

    if opts.skill != "oracle":
        try:
            if not 0.0 <= float(opts.skill) <= 1.0:
                raise ValueError
        except ValueError:
            raise UsageError(f"--skill {opts.skill!r}: 'oracle' or a rate between 0 and 1") from None
    chooser = oracle_chooser(opts.study) if opts.skill == "oracle" else None
    if opts.skill == "oracle" and chooser is None:
        raise UsageError("--skill oracle needs a synthetic corpus (its corpus.json has the generator); give a rate")
    token, _ = admin_token(Path(opts.study).resolve(), opts.admin_token_file)
    kw = dict(seed=opts.seed, spread=opts.spread, lapse=opts.lapse, careless=opts.careless, chooser=chooser,
              progress=not opts.no_progress)
    try:
        if opts.url:
            results = simulate(Client(opts.url, token), opts.participants, opts.skill, **kw)
        else:
            with served(opts.study, opts.database, token) as url:
                results = simulate(Client(url, token), opts.participants, opts.skill, **kw)
    except Refused as e:
        raise UsageError(f"the study server answered {e}") from e
    return StudySimulateResult(opts.study, opts.skill, results)


def run(args: argparse.Namespace) -> int:
    print(study_simulate(options(StudySimulateOptions, args)).summary())
    return 0
