"""The study's web application (FastAPI): the jsPsych pages, the participants' API, the admin
API. `facevoice study serve` runs it under uvicorn; docs/study.md lists every endpoint.

The routes are thin: each parses its request, calls the participation's method for it
(study/participation.py, over the rules in study/rules.py and the store) and turns what it
returns into the JSON answer. A refusal is a StudyError carrying its HTTP status
(study/errors.py), answered in one place here (`refused`).

Participants are identified by the random code the server gives them, which the page keeps; an
admin by a bearer token. No endpoint logs or echoes media, and no response tells a participant
which option is correct: stimuli are fetched by trial and slot, never by identity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from facevoice.study.checks import INTERVALS
from facevoice.study.config import EXPERIMENTS, Study, public
from facevoice.study.errors import Invalid, NotOpen, StudyError, TooLarge
from facevoice.study.participation import Participation
from facevoice.study.rules import pilot_token
from facevoice.study.store import SOURCES, Store

__all__ = ["create_app", "pilot_token"]

WEB = Path(__file__).parent / "web"
MEDIA_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg",
               ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
COMMON_PLUGINS = ("html-button-response", "call-function", "survey-html-form")
PAGES = {"record": ("Record yourself", ()), "match": ("Match voices and faces", ("instructions",)),
         "withdraw": ("Withdraw from the study", ())}
NO_STORE = {"Cache-Control": "no-store"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


PlatformValue = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class ClientInfo(Strict):
    """What the page tells of its browser (kept with the participant, for the export)."""
    device: Literal["desktop", "tablet", "phone"]
    screen: str = Field("", max_length=20)
    browser: str = Field("", max_length=300)


class NewParticipant(Strict):
    role: Literal["record", "match"]
    # "pilot" needs the pilot token (the preview link's), "simulated" the admin token
    source: Literal[SOURCES] = "participant"
    pilot_token: str | None = Field(None, max_length=64)
    platform_ids: dict[Annotated[str, Field(max_length=32)], PlatformValue] = Field(default_factory=dict,
                                                                                     max_length=8)
    client: ClientInfo | None = None


class Leave(Strict):
    """Leaving before the study could start: no consent, or no usable device."""
    outcome: Literal["declined", "no_device"]
    code: str | None = Field(None, max_length=64)


class Consent(Strict):
    agree: bool


class Survey(Strict):
    answers: dict[str, str | int | float] = Field(max_length=64)


class SoundAnswer(Strict):
    count: int = Field(ge=0, le=20)


class HeadphoneAnswer(Strict):
    interval: int = Field(ge=1, le=INTERVALS)  # which of the three noises held the tone


class Played(Strict):
    slot: Literal["query", "0", "1"]


class Answer(Strict):
    choice: Literal[0, 1]
    # from the end of playback (the choices opening) to the click, as the page measured it
    rt_ms: float | None = Field(default=None, ge=0, le=3_600_000)


class Exclusion(Strict):
    code: str = Field(max_length=64)
    reason: str = Field(min_length=1, max_length=200)
    by: str = Field("admin", min_length=1, max_length=64)  # who excludes (kept in the history)


def create_app(study: Study, store: Store, admin_token: str, pilot_only: bool = False) -> FastAPI:
    """The app. `pilot_only`: only the preview link (and simulated runs) may join, as when the
    consent fields a real run needs are missing."""
    participation = Participation(study, store, admin_token, pilot_only)
    app = FastAPI(title=f"facevoice study: {study.title}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.study, app.state.store, app.state.participation = study, store, participation
    app.state.people, app.state.pairs = participation.people, participation.pairs
    vendor = WEB / "node_modules"
    if vendor.is_dir():
        app.mount("/vendor", StaticFiles(directory=vendor), name="vendor")
    app.mount("/static", StaticFiles(directory=WEB, html=False), name="static")

    def page(name: str) -> HTMLResponse:
        """web/page.html with the page's title, its jsPsych plugins and its script (web/NAME.js)."""
        if not vendor.is_dir():
            raise NotOpen("the pages need jsPsych: run `npm ci --prefix study/web` (deploy/setup-debian.sh does)")
        title, plugins = PAGES[name]
        tags = "\n".join(f'<script src="/vendor/@jspsych/plugin-{p}/dist/index.browser.min.js"></script>'
                         for p in (*COMMON_PLUGINS, *plugins))
        html = (WEB / "page.html").read_text(encoding="utf-8").format(title=title, plugins=tags, name=name)
        return HTMLResponse(html, headers=NO_STORE)

    def admin(request: Request) -> None:
        participation.check_admin(request.headers.get("authorization", ""))

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: data:; "
            "style-src 'self' 'unsafe-inline'; font-src 'self' data:; script-src 'self'; "
            "form-action 'self' https:; frame-ancestors 'none'")
        return response

    @app.exception_handler(StudyError)
    async def refused(request: Request, e: StudyError):
        """Every refusal of the study's rules (and the store's Conflict): its status, `{"detail": message}`."""
        return await http_exception_handler(request, HTTPException(e.status, str(e), e.headers))

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)  # none: a 404 would be an error in every page's console

    @app.get("/", response_class=HTMLResponse)
    def index():
        """The study's front page: a link to each task it runs, and to the withdrawal page."""
        tasks = {"record": '<li><a href="/record">Record yourself</a>: read {n} short texts aloud and take one '
                           'photo.</li>',
                 "match": '<li><a href="/match">Match voices and faces</a>: {tasks} short tasks.</li>'}
        d = study.design
        n_tasks = 2 * d.pairs_per_gender + d.consistency_controls + d.correctness_controls
        items = "\n".join(tasks[r].format(n=len(study.scripts), tasks=n_tasks) for r in study.roles)
        return HTMLResponse((WEB / "index.html").read_text(encoding="utf-8").replace("<!-- tasks -->", items))

    @app.get("/record", response_class=HTMLResponse)
    def record_page():
        return page("record")

    @app.get("/match", response_class=HTMLResponse)
    def match_page():
        return page("match")

    @app.get("/withdraw", response_class=HTMLResponse)
    def withdraw_page():
        return page("withdraw")

    @app.get("/api/study")
    def about():
        return public(study)

    @app.post("/api/participants", status_code=201)
    def join(body: NewParticipant, request: Request):
        j = participation.join(body.role, body.source, pilot_token=body.pilot_token, platform_ids=body.platform_ids,
                               client=body.client.model_dump() if body.client else None,
                               address=request.client.host if request.client else "?",
                               forwarded_for=request.headers.get("x-forwarded-for"),
                               authorization=request.headers.get("authorization", ""))
        out = {"code": j.code, "role": j.role, "experiment": j.experiment, "source": j.source, "resumed": j.resumed}
        return out | ({"direction": EXPERIMENTS[j.experiment][0]} if j.experiment is not None else {})

    @app.post("/api/leave")
    def leave(body: Leave):
        """Declined, or no usable device: the participant's data (if they had joined) is deleted,
        and the page gets the outcome's code and redirect."""
        return participation.leave(body.outcome, body.code).json()

    @app.get("/api/participants/{code}")
    def state(code: str):
        """Where the participant stands (the page resumes from it): stage, answered tasks, and
        once finished the outcome with its code and redirect again."""
        p = participation.participant(code)
        out = {"code": code, "role": p.role, "experiment": p.experiment, "source": p.source,
               "stage": participation.stage(p)}
        if p.experiment is not None:
            out["direction"] = EXPERIMENTS[p.experiment][0]
        if p.finished_at is not None:
            out |= participation.finished_ending(p).json()
        return out

    @app.post("/api/participants/{code}/consent")
    def consent(code: str, body: Consent):
        declined = participation.consent(code, body.agree)  # declining deletes the join: nothing is kept
        return declined.json() if declined else {"ok": True}

    @app.post("/api/participants/{code}/survey")
    def survey(code: str, body: Survey):
        return {"ok": True, "trials": participation.survey(code, body.answers)}

    @app.post("/api/participants/{code}/sound-check/new")
    def sound_draw(code: str):
        """A new sound check clip: a count of beeps drawn now (each try hears another)."""
        participation.sound_draw(code)
        return {"ok": True}

    @app.get("/api/participants/{code}/sound-check.wav")
    def sound_clip(code: str):
        """The drawn clip, the same on every fetch (a browser may fetch it in parts)."""
        return Response(participation.sound_clip(code), media_type="audio/wav", headers=NO_STORE)

    @app.post("/api/participants/{code}/sound-check")
    def sound_answer(code: str, body: SoundAnswer):
        r = participation.sound_answer(code, body.count)
        return {"passed": r.passed, "tries_left": r.tries_left, **(r.ending.json() if r.ending else {})}

    @app.get("/api/participants/{code}/headphone-check")
    def headphone_state(code: str):
        """Which trial comes next (a reload goes on from there)."""
        trial, of = participation.headphone_state(code)
        return {"trial": trial, "of": of}

    @app.post("/api/participants/{code}/headphone-check/new")
    def headphone_draw(code: str):
        """The next trial's sound: which interval holds the Huggins pitch is drawn now."""
        trial, of = participation.headphone_draw(code)
        return {"trial": trial, "of": of}

    @app.get("/api/participants/{code}/headphone-check.wav")
    def headphone_clip(code: str):
        return Response(participation.headphone_clip(code), media_type="audio/wav", headers=NO_STORE)

    @app.post("/api/participants/{code}/headphone-check")
    def headphone_answer(code: str, body: HeadphoneAnswer):
        """One trial's answer. No answer is told right or wrong; after the last trial the check
        passes with `min_correct` right, or screens the participant out."""
        r = participation.headphone_answer(code, body.interval)
        return {"trials_left": r.trials_left, "passed": r.passed, **(r.ending.json() if r.ending else {})}

    @app.get("/api/participants/{code}/trials")
    def trials(code: str):
        p, ts = participation.plan(code)
        base = f"/api/participants/{code}/trials"
        return {"experiment": p.experiment, "direction": EXPERIMENTS[p.experiment][0],
                "finished": p.finished_at is not None, "clip_seconds": participation.clip_seconds(p),
                "trials": [{"index": t["idx"], "answered": t["chosen"] is not None,
                            "query": f"{base}/{t['idx']}/media/query",
                            "options": [f"{base}/{t['idx']}/media/0", f"{base}/{t['idx']}/media/1"]}
                           for t in ts]}

    @app.get("/api/participants/{code}/trials/{idx}/media/{slot}")
    def media(code: str, idx: int, slot: Literal["query", "0", "1"]):
        path = participation.stimulus(code, idx, slot)
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"),
                            headers=NO_STORE, filename=None)

    @app.post("/api/participants/{code}/trials/{idx}/played")
    def played(code: str, idx: int, body: Played):
        participation.played(code, idx, body.slot)
        return {"ok": True}

    @app.post("/api/participants/{code}/trials/{idx}/answer")
    def answer(code: str, idx: int, body: Answer):
        return {"ok": True, "repeated": not participation.answer(code, idx, body.choice, body.rt_ms)}

    @app.post("/api/participants/{code}/finish")
    def finish(code: str):
        return participation.finish(code).json()

    @app.post("/api/participants/{code}/recordings/{kind}/{script}")
    async def upload(code: str, kind: Literal["voice", "face"], script: int, request: Request):
        filmed = await run_in_threadpool(participation.upload_allowed, code, kind, script,
                                         request.headers.get("content-type", ""))
        data = await read_capped(request, study.recording.max_upload_bytes)
        seconds = await run_in_threadpool(participation.save_upload, code, kind, script, data, filmed)
        return {"accepted": True} | ({"speech_seconds": round(seconds, 2)} if seconds is not None else {})

    @app.delete("/api/participants/{code}")
    def withdraw(code: str):
        participation.withdraw(code)
        return {"deleted": True}

    @app.get("/api/admin/progress")
    def progress(request: Request):
        """Joins and finishes per role and experiment, for one source (default: real participants),
        how many joined of each source, and the outcomes."""
        admin(request)
        return participation.progress(request.query_params.get("source", "participant"))

    @app.get("/api/admin/export")
    def export(request: Request, code: str | None = None):
        """Everything stored but the media (or one participant's)."""
        admin(request)
        return participation.export(code)

    @app.post("/api/admin/exclusions")
    def exclude(request: Request, body: Exclusion):
        admin(request)
        participation.exclude(body.code, body.reason, body.by)
        return {"ok": True}

    return app


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` (never read in full first)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise TooLarge(f"the upload is larger than {limit} bytes")
        except ValueError:
            raise Invalid("bad Content-Length") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the upload is larger than {limit} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise Invalid("the upload is empty")
    return data
