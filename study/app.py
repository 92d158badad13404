"""The study's web application (FastAPI): the jsPsych pages, the participants' API, the admin
API. `facevoice study serve` runs it under uvicorn; docs/study.md lists every endpoint.

Participants are identified by the random code the server gives them, which the page keeps; an
admin by a bearer token. No endpoint logs or echoes media, and no response tells a participant
which option is correct: stimuli are fetched by trial and slot, never by identity."""

from __future__ import annotations

import hmac
import secrets
import shutil
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from facevoice.service.media.errors import MediaError
from facevoice.study.config import EXPERIMENTS, Study
from facevoice.study.design import experiment_pairs, participant_trials, stimulus_people
from facevoice.study.recording import check_face, check_voice
from facevoice.study.store import SOURCES, Conflict, Store

WEB = Path(__file__).parent / "web"
MEDIA_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg",
               ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
COMMON_PLUGINS = ("html-button-response", "call-function", "survey-html-form")
PAGES = {"record": ("Record yourself", ("html-audio-response", "initialize-microphone", "initialize-camera")),
         "match": ("Match voices and faces", ("instructions",))}
UPLOAD_TYPES = {"voice": ("audio/", "video/webm", "application/octet-stream"),
                "face": ("image/jpeg", "image/png", "image/webp")}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NewParticipant(Strict):
    role: Literal["record", "match"]
    # "pilot" needs the pilot token (the preview link's), "simulated" the admin token
    source: Literal["participant", "pilot", "simulated"] = "participant"
    pilot_token: str | None = Field(None, max_length=64)


class Consent(Strict):
    agree: bool


class Survey(Strict):
    answers: dict[str, str | int | float] = Field(max_length=64)


class Played(Strict):
    slot: Literal["query", "0", "1"]


class Answer(Strict):
    choice: Literal[0, 1]
    rt_ms: float | None = Field(default=None, ge=0, le=3_600_000)


class Exclusion(Strict):
    code: str = Field(max_length=64)
    reason: str = Field(min_length=1, max_length=200)
    by: str = Field("admin", min_length=1, max_length=64)  # who excludes (kept in the history)


def failed_controls(trials: list[dict]) -> int:
    """Control tasks failed: a consistency repeat answered with the other person than its
    original, a correctness task (a man and a woman) answered wrong (Kim et al. sec. 3.2)."""
    by_idx = {t["idx"]: t for t in trials}
    failed = 0
    for t in trials:
        if t["chosen"] is None:
            continue
        if t["kind"] == "correctness" and t["chosen"] != t["correct"]:
            failed += 1
        elif t["kind"] == "consistency":
            first = by_idx.get(t["repeat_of"])
            if first and first["chosen"] is not None:
                picked = (t["option0"], t["option1"])[t["chosen"]]
                if picked != (first["option0"], first["option1"])[first["chosen"]]:
                    failed += 1
    return failed


def exclusion(study: Study, survey: dict | None, trials: list[dict]) -> str | None:
    """Why a matcher's data is left out of the analysis (sec. 3.2), or None."""
    if survey and str(survey.get("recorded", "no")).lower() == "yes":
        return "took part in the recording"
    n = failed_controls(trials)
    if n > study.design.max_failed_controls:
        return f"failed {n} control tasks"
    return None


def create_app(study: Study, store: Store, admin_token: str) -> FastAPI:
    people = stimulus_people(study)
    pairs = {e: experiment_pairs(study, people, e) for e in study.experiments}
    app = FastAPI(title=f"facevoice study: {study.title}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.study, app.state.store, app.state.people, app.state.pairs = study, store, people, pairs
    vendor = WEB / "node_modules"
    if vendor.is_dir():
        app.mount("/vendor", StaticFiles(directory=vendor), name="vendor")
    app.mount("/static", StaticFiles(directory=WEB, html=False), name="static")

    def page(name: str) -> HTMLResponse:
        """web/page.html with the page's title, its jsPsych plugins and its script (web/NAME.js)."""
        if not vendor.is_dir():
            raise HTTPException(503, "the pages need jsPsych: run `npm ci --prefix study/web` "
                                     "(deploy/setup-debian.sh does)")
        title, plugins = PAGES[name]
        tags = "\n".join(f'<script src="/vendor/@jspsych/plugin-{p}/dist/index.browser.min.js"></script>'
                         for p in (*COMMON_PLUGINS, *plugins))
        html = (WEB / "page.html").read_text(encoding="utf-8").format(title=title, plugins=tags, name=name)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    def participant(code: str, role: str | None = None):
        if len(code) > 64:
            raise HTTPException(404, "unknown participant code")
        p = store.participant(code)
        if p is None:
            raise HTTPException(404, "unknown participant code")
        if role and p.role != role:
            raise HTTPException(403, f"this code is for the {p.role} task")
        return p

    def admin(request: Request) -> None:
        presented = request.headers.get("authorization", "")
        if not hmac.compare_digest(presented.encode(), f"Bearer {admin_token}".encode()):
            raise HTTPException(401, "admin endpoints need the study's admin token", {"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: data:; "
            "style-src 'self' 'unsafe-inline'; font-src 'self' data:; script-src 'self'")
        return response

    @app.exception_handler(Conflict)
    async def conflict(request: Request, e: Conflict):
        return JSONResponse({"detail": str(e)}, status_code=409)

    @app.get("/", response_class=HTMLResponse)
    def index():
        return HTMLResponse((WEB / "index.html").read_text(encoding="utf-8"))

    @app.get("/record", response_class=HTMLResponse)
    def record_page():
        return page("record")

    @app.get("/match", response_class=HTMLResponse)
    def match_page():
        return page("match")

    @app.get("/api/study")
    def about():
        return {"title": study.title, "consent": study.consent, "survey": list(study.survey),
                "scripts": list(study.scripts), "min_speech_seconds": study.recording.min_speech_seconds,
                "max_upload_bytes": study.recording.max_upload_bytes}

    @app.post("/api/participants", status_code=201)
    def join(body: NewParticipant, request: Request):
        if body.source == "simulated":
            admin(request)  # only the researcher's scripts may add simulated data
        elif body.source == "pilot":
            if not hmac.compare_digest((body.pilot_token or "").encode(), pilot_token(admin_token).encode()):
                raise HTTPException(403, "a pilot join needs the study's preview link (its pilot token)")
        elif body.pilot_token is not None:
            raise HTTPException(400, "pilot_token is only for source \"pilot\"")
        code = secrets.token_urlsafe(16)
        experiment = store.add_participant(code, body.role, study.experiments, secrets.randbits(62), body.source,
                                           study.joins.inactive_after_s)
        out = {"code": code, "role": body.role, "experiment": experiment, "source": body.source}
        if experiment is not None:
            out["direction"] = EXPERIMENTS[experiment][0]
        return out

    @app.post("/api/participants/{code}/consent")
    def consent(code: str, body: Consent):
        participant(code)
        if not body.agree:
            raise HTTPException(400, "the study needs consent; without it nothing is recorded (withdraw to leave)")
        store.consent(code)
        return {"ok": True}

    @app.post("/api/participants/{code}/survey")
    def survey(code: str, body: Survey):
        p = participant(code)
        if p.consented_at is None:
            raise HTTPException(403, "consent first")
        answers = check_survey(study, body.answers)
        trials = None
        if p.role == "match":
            trials = participant_trials(study, people, pairs[p.experiment], p.seed)
        store.save_survey(code, answers, trials)
        return {"ok": True, "trials": len(trials or ())}

    @app.get("/api/participants/{code}/trials")
    def trials(code: str):
        p = participant(code, "match")
        if p.survey is None:
            raise HTTPException(403, "answer the questionnaire first")
        direction = EXPERIMENTS[p.experiment][0]
        base = f"/api/participants/{code}/trials"
        return {"experiment": p.experiment, "direction": direction, "finished": p.finished_at is not None,
                "trials": [{"index": t["idx"], "answered": t["chosen"] is not None,
                            "query": f"{base}/{t['idx']}/media/query",
                            "options": [f"{base}/{t['idx']}/media/0", f"{base}/{t['idx']}/media/1"]}
                           for t in store.trials(code)]}

    def trial_of(code: str, idx: int) -> tuple[dict, str]:
        p = participant(code, "match")
        if p.finished_at is not None:
            raise HTTPException(409, "this code has already finished the study")
        t = next((t for t in store.trials(code) if t["idx"] == idx), None)
        if t is None:
            raise HTTPException(404, f"trial {idx} was not given to this participant")
        return t, EXPERIMENTS[p.experiment][0]

    @app.get("/api/participants/{code}/trials/{idx}/media/{slot}")
    def media(code: str, idx: int, slot: Literal["query", "0", "1"]):
        t, direction = trial_of(code, idx)
        identity = t["query"] if slot == "query" else t[f"option{slot}"]
        person = people[identity]
        face = (slot == "query") == (direction == "F->V")
        path = study.corpus / (person.face if face else person.voice)
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"),
                            headers={"Cache-Control": "no-store"}, filename=None)

    @app.post("/api/participants/{code}/trials/{idx}/played")
    def played(code: str, idx: int, body: Played):
        _, direction = trial_of(code, idx)
        audio = ("query",) if direction == "V->F" else ("0", "1")
        if body.slot not in audio:
            raise HTTPException(400, f"slot {body.slot} of this trial is not a recording")
        if not store.played(code, idx, _bit(body.slot)):
            raise HTTPException(409, "this trial was already answered")
        return {"ok": True}

    @app.post("/api/participants/{code}/trials/{idx}/answer")
    def answer(code: str, idx: int, body: Answer):
        _, direction = trial_of(code, idx)
        needs = _bit("query") if direction == "V->F" else _bit("0") | _bit("1")
        try:
            store.answer(code, idx, body.choice, body.rt_ms, needs)
        except KeyError:
            raise HTTPException(404, f"trial {idx} was not given to this participant") from None
        return {"ok": True}

    @app.post("/api/participants/{code}/finish")
    def finish(code: str):
        p = participant(code)
        if p.survey is None:
            raise HTTPException(403, "answer the questionnaire first")
        if p.role == "match":
            ts = store.trials(code)
            left = sum(t["chosen"] is None for t in ts)
            if left:
                raise HTTPException(409, f"{left} trials are not answered yet")
            why = exclusion(study, p.survey, ts)
        else:
            have = store.recordings(code)
            if not any(r["kind"] == "face" for r in have) or not any(r["kind"] == "voice" for r in have):
                raise HTTPException(409, "record your voice and take a photo first")
            why = None
        store.finish(code, why)
        return {"completion_code": study.completion_code}

    @app.post("/api/participants/{code}/recordings/{kind}/{script}")
    async def upload(code: str, kind: Literal["voice", "face"], script: int, request: Request):
        p = await run_in_threadpool(participant, code, "record")
        if p.survey is None:
            raise HTTPException(403, "answer the questionnaire first")
        if p.finished_at is not None:
            raise HTTPException(409, "this code has already finished the study")
        if not 0 <= script < (len(study.scripts) if kind == "voice" else 1):
            raise HTTPException(404, f"there is no {kind} recording {script}")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not ctype.startswith(UPLOAD_TYPES[kind]):
            allowed = " or ".join(UPLOAD_TYPES[kind])
            raise HTTPException(415, f"a {kind} upload must be {allowed}, not {ctype or 'untyped'}")
        data = await read_capped(request, study.recording.max_upload_bytes)
        try:
            if kind == "voice":
                kept, seconds = await run_in_threadpool(check_voice, data, study)
                box = ""
            else:
                kept, face_box = await run_in_threadpool(check_face, data, study)
                seconds, box = None, " ".join(f"{v:.1f}" for v in face_box)
        except MediaError as e:
            raise HTTPException(422, str(e)) from None
        folder = study.recordings_dir / code
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"voice-{script}.wav" if kind == "voice" else "face-0.jpg"
        tmp = folder / f".{name}.part"
        tmp.write_bytes(kept)
        tmp.replace(folder / name)
        await run_in_threadpool(store.save_recording, code, kind, script, f"{code}/{name}", box, seconds)
        out = {"accepted": True}
        if seconds is not None:
            out["speech_seconds"] = round(seconds, 2)
        return out

    @app.delete("/api/participants/{code}")
    def withdraw(code: str):
        participant(code)
        store.delete(code)
        shutil.rmtree(study.recordings_dir / code, ignore_errors=True)
        return {"deleted": True}

    @app.get("/api/admin/progress")
    def progress(request: Request):
        """Joins and finishes per role and experiment, for one source (default: real participants),
        and how many joined of each source."""
        admin(request)
        source = request.query_params.get("source", "participant")
        if source not in SOURCES:
            raise HTTPException(400, f"source must be one of {', '.join(SOURCES)}")
        out: dict = {"source": source, "record": {"joined": 0, "finished": 0},
                     "match": {str(e): {"joined": 0, "finished": 0, "excluded": 0} for e in study.experiments},
                     "sources": dict.fromkeys(SOURCES, 0)}
        for p in store.participants():
            out["sources"][p.source] += 1
            if p.source != source:
                continue
            row = out["record"] if p.role == "record" else out["match"][str(p.experiment)]
            row["joined"] += 1
            row["finished"] += p.finished_at is not None
            if p.role == "match":
                row["excluded"] += p.excluded is not None
        return out

    @app.get("/api/admin/export")
    def export(request: Request, code: str | None = None):
        """Everything stored but the media (or one participant's): participants, trials with
        their people and answers, recordings' rows, the exclusion history."""
        admin(request)
        ps = store.participants() if code is None else [p for p in [store.participant(code)] if p]
        return {"participants": [p.__dict__ for p in ps], "trials": store.trials(code),
                "recordings": store.recordings(code), "exclusions": store.exclusions(code)}

    @app.post("/api/admin/exclusions")
    def exclude(request: Request, body: Exclusion):
        admin(request)
        if not store.exclude(body.code, body.reason, body.by):
            raise HTTPException(404, "unknown participant code")
        return {"ok": True}

    return app


def pilot_token(admin_token: str) -> str:
    """The preview link's token: derived from the admin token, so it needs no storage, and it
    grants nothing but joining as a pilot (whose data `analyze` leaves out by default)."""
    return hmac.new(admin_token.encode(), b"facevoice study pilot", "sha256").hexdigest()[:32]


def _bit(slot: str) -> int:
    return {"query": 1, "0": 2, "1": 4}[slot]


def check_survey(study: Study, answers: dict) -> dict:
    """The answers, checked against the study's questions: every question answered, from its
    options where it has them, numbers in range; HTTP 400 naming the question otherwise."""
    questions = {q["name"]: q for q in study.survey}
    unknown = sorted(set(answers) - set(questions))
    if unknown:
        raise HTTPException(400, f"unknown questions {unknown}")
    out = {}
    for name, q in questions.items():
        if name not in answers or answers[name] in ("", None):
            raise HTTPException(400, f"question {name!r} is not answered")
        value = answers[name]
        if q.get("type") == "number":
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise HTTPException(400, f"question {name!r} needs a number") from None
            if not q.get("min", float("-inf")) <= value <= q.get("max", float("inf")):
                raise HTTPException(400, f"question {name!r}: {value:g} is out of range")
            value = int(value) if value.is_integer() else value
        elif "options" in q:
            if value not in q["options"]:
                raise HTTPException(400, f"question {name!r}: choose one of {q['options']}")
        else:
            value = str(value).strip()[:200]
        out[name] = value
    return out


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` (never read in full first)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HTTPException(413, f"the upload is larger than {limit} bytes")
        except ValueError:
            raise HTTPException(400, "bad Content-Length") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the upload is larger than {limit} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise HTTPException(400, "the upload is empty")
    return data

