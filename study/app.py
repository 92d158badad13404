"""The study's web application (FastAPI): the jsPsych pages, the participants' API, the admin
API. `facevoice study serve` runs it under uvicorn; docs/study.md lists every endpoint.

Participants are identified by the random code the server gives them, which the page keeps; an
admin by a bearer token. No endpoint logs or echoes media, and no response tells a participant
which option is correct: stimuli are fetched by trial and slot, never by identity."""

from __future__ import annotations

import hmac
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from facevoice.service.media.errors import MediaError
from facevoice.study.checks import INTERVALS, beeps_wav, headphone_passed, huggins_wav
from facevoice.study.config import EXPERIMENTS, Study, public
from facevoice.study.design import experiment_pairs, participant_trials, stimulus_people
from facevoice.study.recording import check_face, check_video, check_voice
from facevoice.study.stimuli import build_all
from facevoice.study.store import SOURCES, Conflict, Store, TookPart, new_code

WEB = Path(__file__).parent / "web"
MEDIA_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg",
               ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
COMMON_PLUGINS = ("html-button-response", "call-function", "survey-html-form")
PAGES = {"record": ("Record yourself", ()), "match": ("Match voices and faces", ("instructions",)),
         "withdraw": ("Withdraw from the study", ())}
SCREENED_OUT = "took part in the recording"  # the reasons that screen out (the rest fail checks)
SOUND_CHECK_FAILED = "failed the sound check"
HEADPHONE_CHECK_FAILED = "failed the headphone check"
UPLOAD_TYPES = {"voice": ("audio/", "video/webm", "application/octet-stream"),
                "face": ("image/jpeg", "image/png", "image/webp")}


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


class JoinLimiter:
    """Joins per client address: a token bucket of `burst`, refilled at `per_minute`. Held in
    memory only, and only until the bucket is full again (an address is never stored); each
    replica limits its own share."""

    def __init__(self, per_minute: float, burst: int, size: int = 10_000):
        self.rate, self.burst, self.size = per_minute / 60.0, float(burst), size
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, address: str) -> float:
        """0 when a join may go ahead now, else the seconds until one may."""
        now = time.monotonic()
        with self._lock:
            # an address whose bucket has refilled is forgotten (the oldest are first: each take re-inserts)
            full = self.burst / self.rate
            while self._buckets and now - next(iter(self._buckets.values()))[1] > full:
                self._buckets.pop(next(iter(self._buckets)))
            tokens, last = self._buckets.pop(address, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[address] = (tokens - 1 if tokens >= 1 else tokens, now)
            while len(self._buckets) > self.size:  # the oldest address goes first
                self._buckets.pop(next(iter(self._buckets)))
        return wait


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


def outcome_of(excluded: str | None) -> str:
    """The outcome a finished participant is sent back with: screened out (took part in the
    recording; failed the sound or headphone check), failed checks (the controls), or completed."""
    if excluded in (SCREENED_OUT, SOUND_CHECK_FAILED, HEADPHONE_CHECK_FAILED):
        return "screened_out"
    return "failed_checks" if excluded else "completed"


def create_app(study: Study, store: Store, admin_token: str, pilot_only: bool = False) -> FastAPI:
    """The app. `pilot_only`: only the preview link (and simulated runs) may join, as when the
    consent fields a real run needs are missing."""
    people = stimulus_people(study)
    pairs = {e: experiment_pairs(study, people, e) for e in study.experiments}
    clips = build_all(study, people)  # every voice at its experiment's length (Kim et al. A.1.2)
    limiter = JoinLimiter(study.joins.per_minute, study.joins.burst)
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

    def ending(name: str, reason: str | None = None) -> dict:
        """An outcome's code and redirect; a screened-out participant is told why (which check)."""
        o = study.outcome(name)
        out = {"outcome": name, "completion_code": o.code, "redirect": o.url()}
        return out | ({"reason": reason} if name == "screened_out" and reason else {})

    def stage(p) -> str:
        """Where the participant is: the page resumes there after a reload or on the resume link."""
        if p.finished_at is not None:
            return "finished"
        if p.consented_at is None:
            return "consent"
        if p.survey is None:
            return "survey"
        if p.role == "match":
            check = p.sound_check or {}
            if study.sound_check.enabled and not check.get("passed"):
                return "sound_check"
            if study.headphone_check.enabled and not check.get("headphones", {}).get("passed"):
                return "headphone_check"
        return "tasks"

    def clip_seconds(p) -> float:
        return study.stimuli.seconds(p.experiment)

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

    @app.exception_handler(Conflict)
    async def conflict(request: Request, e: Conflict):
        return JSONResponse({"detail": str(e)}, status_code=409)

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
        if body.role not in study.roles:
            task = "recording" if body.role == "record" else "matching"
            raise HTTPException(403, f"This study does not run the {task} task: open the link the study's "
                                     "description gives")
        if body.source == "simulated":
            admin(request)  # only the researcher's scripts may add simulated data (and are not rate-limited)
        else:
            address = request.client.host if request.client else "?"
            if study.joins.trust_proxy:
                address = request.headers.get("x-forwarded-for", address).split(",")[0].strip()
            wait = limiter.take(address)
            if wait:
                raise HTTPException(429, "too many joins from here; try again in a minute",
                                    {"Retry-After": str(max(1, round(wait)))})
        if body.source == "pilot":
            if not hmac.compare_digest((body.pilot_token or "").encode(), pilot_token(admin_token).encode()):
                raise HTTPException(403, "a pilot join needs the study's preview link (its pilot token)")
        elif body.pilot_token is not None:
            raise HTTPException(400, "pilot_token is only for source \"pilot\"")
        if pilot_only and body.source == "participant":
            raise HTTPException(503, "the study is not open yet: it runs its pilot only (its consent page is "
                                     "not complete)")
        unknown = sorted(set(body.platform_ids) - set(study.platform.params))
        if unknown:
            raise HTTPException(400, f"unknown platform parameters {unknown} (this study takes "
                                     f"{list(study.platform.params)})")
        ids = {k: body.platform_ids[k] for k in study.platform.params if k in body.platform_ids}
        if ids and study.platform.params[0] not in ids:
            raise HTTPException(400, f"the platform ids need {study.platform.params[0]}")
        if study.platform.required and body.source == "participant" and not ids:
            raise HTTPException(400, f"open the study from {study.platform.name}: its link carries "
                                     f"{study.platform.params[0]}")
        if body.client is not None and body.client.device not in study.devices:
            raise HTTPException(403, f"this study cannot be taken on a {body.client.device} "
                                     f"(it takes {', '.join(study.devices)})")
        try:
            code, experiment, resumed = store.add_participant(
                new_code(), body.role, study.experiments, secrets.randbits(62), body.source,
                study.joins.inactive_after_s, platform=study.platform.name, platform_ids=ids,
                once=study.platform.once, client=body.client.model_dump() if body.client else None)
        except TookPart as e:
            raise HTTPException(409, f"{e}. Each person takes part once.") from None
        out = {"code": code, "role": body.role, "experiment": experiment, "source": body.source, "resumed": resumed}
        if experiment is not None:
            out["direction"] = EXPERIMENTS[experiment][0]
        return out

    @app.post("/api/leave")
    def leave(body: Leave):
        """Declined, or no usable device: the participant's data (if they had joined) is deleted,
        and the page gets the outcome's code and redirect."""
        if body.code is not None:
            p = participant(body.code)
            if p.finished_at is not None:
                raise HTTPException(409, "this code has already finished the study")
            # on a platform the id cannot start again: the platform has this ending's code now
            store.delete(body.code, keep_id=study.platform.once)
            shutil.rmtree(study.recordings_dir / body.code, ignore_errors=True)
        return ending(body.outcome)

    @app.get("/api/participants/{code}")
    def state(code: str):
        """Where the participant stands (the page resumes from it): stage, answered tasks, and
        once finished the outcome with its code and redirect again."""
        p = participant(code)
        out = {"code": code, "role": p.role, "experiment": p.experiment, "source": p.source, "stage": stage(p)}
        if p.experiment is not None:
            out["direction"] = EXPERIMENTS[p.experiment][0]
        if p.finished_at is not None:
            out |= ending(p.outcome or outcome_of(p.excluded), p.excluded)
        return out

    @app.post("/api/participants/{code}/consent")
    def consent(code: str, body: Consent):
        p = participant(code)
        if not body.agree:  # declining deletes the join: nothing of them is kept
            if p.finished_at is not None:
                raise HTTPException(409, "this code has already finished the study")
            store.delete(code, keep_id=study.platform.once)
            return ending("declined")
        store.consent(code, study.consent.version, study.consent.digest())
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

    @app.post("/api/participants/{code}/sound-check/new")
    def sound_draw(code: str):
        """A new sound check clip: a count of beeps drawn now (each try hears another)."""
        p = participant(code, "match")
        if stage(p) != "sound_check":
            raise HTTPException(409, "there is no sound check to take now")
        check = dict(p.sound_check or {"tries": 0, "answers": []})
        check["beeps"], check["seed"] = secrets.choice((3, 4, 5, 6)), secrets.randbits(32)
        store.set_sound_check(code, check)
        return {"ok": True}

    @app.get("/api/participants/{code}/sound-check.wav")
    def sound_clip(code: str):
        """The drawn clip, the same on every fetch (a browser may fetch it in parts)."""
        p = participant(code, "match")
        check = p.sound_check or {}
        if stage(p) != "sound_check" or "beeps" not in check:
            raise HTTPException(409, "draw a sound check first")
        return Response(beeps_wav(check["beeps"], check["seed"]), media_type="audio/wav",
                        headers={"Cache-Control": "no-store"})

    @app.post("/api/participants/{code}/sound-check")
    def sound_answer(code: str, body: SoundAnswer):
        p = participant(code, "match")
        check = dict(p.sound_check or {})
        if stage(p) != "sound_check" or "beeps" not in check:
            raise HTTPException(409, "play the sound check first")
        check["tries"] = check.get("tries", 0) + 1
        check["answers"] = [*check.get("answers", []), body.count]
        check["passed"] = body.count == check.pop("beeps")
        check.pop("seed", None)
        store.set_sound_check(code, check)
        left = study.sound_check.tries - check["tries"]
        if check["passed"] or left > 0:
            return {"passed": check["passed"], "tries_left": left}
        store.finish(code, SOUND_CHECK_FAILED, "screened_out")
        return {"passed": False, "tries_left": 0, **ending("screened_out", SOUND_CHECK_FAILED)}

    def headphones_of(code: str) -> tuple[dict, dict]:
        """The participant's check state and its headphone part, while the check is theirs to take."""
        p = participant(code, "match")
        if stage(p) != "headphone_check":
            raise HTTPException(409, "there is no headphone check to take now")
        check = dict(p.sound_check or {})
        return check, dict(check.get("headphones") or {"targets": [], "answers": []})

    @app.get("/api/participants/{code}/headphone-check")
    def headphone_state(code: str):
        """Which trial comes next (a reload goes on from there)."""
        _, hp = headphones_of(code)
        return {"trial": len(hp["answers"]) + 1, "of": study.headphone_check.trials}

    @app.post("/api/participants/{code}/headphone-check/new")
    def headphone_draw(code: str):
        """The next trial's sound: which interval holds the Huggins pitch is drawn now."""
        check, hp = headphones_of(code)
        if len(hp["targets"]) > len(hp["answers"]):  # drawn and not answered: the same trial again
            hp["targets"] = hp["targets"][:-1]
        hp["targets"] = [*hp["targets"], secrets.choice(range(1, INTERVALS + 1))]
        hp["seed"] = secrets.randbits(32)
        store.set_sound_check(code, {**check, "headphones": hp})
        return {"trial": len(hp["targets"]), "of": study.headphone_check.trials}

    @app.get("/api/participants/{code}/headphone-check.wav")
    def headphone_clip(code: str):
        _, hp = headphones_of(code)
        if len(hp["targets"]) <= len(hp["answers"]):
            raise HTTPException(409, "draw the next headphone check trial first")
        return Response(huggins_wav(hp["targets"][-1], hp["seed"]), media_type="audio/wav",
                        headers={"Cache-Control": "no-store"})

    @app.post("/api/participants/{code}/headphone-check")
    def headphone_answer(code: str, body: HeadphoneAnswer):
        """One trial's answer. No answer is told right or wrong; after the last trial the check
        passes with `min_correct` right, or screens the participant out."""
        check, hp = headphones_of(code)
        if len(hp["targets"]) <= len(hp["answers"]):
            raise HTTPException(409, "play the headphone check first")
        hp["answers"] = [*hp["answers"], body.interval]
        hp.pop("seed", None)
        left = study.headphone_check.trials - len(hp["answers"])
        if left == 0:
            hp["passed"] = headphone_passed(hp["answers"], hp["targets"], study.headphone_check.min_correct)
        store.set_sound_check(code, {**check, "headphones": hp})
        if left or hp["passed"]:
            return {"trials_left": left, "passed": hp.get("passed")}
        store.finish(code, HEADPHONE_CHECK_FAILED, "screened_out")
        return {"trials_left": 0, "passed": False, **ending("screened_out", HEADPHONE_CHECK_FAILED)}

    @app.get("/api/participants/{code}/trials")
    def trials(code: str):
        p = participant(code, "match")
        if p.survey is None:
            raise HTTPException(403, "answer the questionnaire first")
        if stage(p) in ("sound_check", "headphone_check"):
            raise HTTPException(403, f"take the {stage(p).replace('_', ' ')} first")
        direction = EXPERIMENTS[p.experiment][0]
        base = f"/api/participants/{code}/trials"
        return {"experiment": p.experiment, "direction": direction, "finished": p.finished_at is not None,
                "clip_seconds": clip_seconds(p),
                "trials": [{"index": t["idx"], "answered": t["chosen"] is not None,
                            "query": f"{base}/{t['idx']}/media/query",
                            "options": [f"{base}/{t['idx']}/media/0", f"{base}/{t['idx']}/media/1"]}
                           for t in store.trials(code)]}

    def trial_of(code: str, idx: int, current: bool = True) -> tuple[dict, object]:
        """The participant's trial `idx`; with `current`, only while it is the task they are on
        (the first unanswered one): stimuli are not handed out, nor playback taken, ahead."""
        p = participant(code, "match")
        if p.finished_at is not None:
            raise HTTPException(409, "this code has already finished the study")
        if stage(p) != "tasks":
            raise HTTPException(403, f"the tasks come after the {stage(p).replace('_', ' ')}")
        ts = store.trials(code)
        t = next((t for t in ts if t["idx"] == idx), None)
        if t is None:
            raise HTTPException(404, f"trial {idx} was not given to this participant")
        if current and t["chosen"] is None:
            on = min(x["idx"] for x in ts if x["chosen"] is None)
            if on != idx:
                raise HTTPException(409, f"this is not the current task (task {on + 1} is)")
        return t, p

    def audio_slots(p) -> tuple[str, ...]:
        return ("query",) if EXPERIMENTS[p.experiment][0] == "V->F" else ("0", "1")

    @app.get("/api/participants/{code}/trials/{idx}/media/{slot}")
    def media(code: str, idx: int, slot: Literal["query", "0", "1"]):
        t, p = trial_of(code, idx)
        if t["chosen"] is not None:
            raise HTTPException(409, "this trial was already answered")
        identity = t["query"] if slot == "query" else t[f"option{slot}"]
        if slot in audio_slots(p):
            store.served(code, idx, _bit(slot))  # the first clip sent starts the listening clock
            path = clips[p.experiment][identity].path
        else:
            path = study.corpus / people[identity].face
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"),
                            headers={"Cache-Control": "no-store"}, filename=None)

    @app.post("/api/participants/{code}/trials/{idx}/played")
    def played(code: str, idx: int, body: Played):
        t, p = trial_of(code, idx)
        audio = audio_slots(p)
        if body.slot not in audio:
            raise HTTPException(400, f"slot {body.slot} of this trial is not a recording")
        if t["chosen"] is not None:
            raise HTTPException(409, "this trial was already answered")
        if study.listening.enforce:
            # our player plays one clip at a time, from the start, at normal speed: the clips
            # played so far cannot have ended sooner than their lengths after the first was sent
            if not t["served"] & _bit(body.slot):
                raise HTTPException(409, "the recording cannot have been played: it was never sent")
            heard = {s for s in audio if t["played"] & _bit(s)} | {body.slot}
            needed = clip_seconds(p) * len(heard) - study.listening.slack_seconds
            elapsed = time.time() - t["served_at"] if t["served_at"] else 0.0
            if elapsed < needed:
                raise HTTPException(409, f"the recording cannot have been played to its end yet "
                                         f"({elapsed:.1f} s of {needed:.1f} s)")
        if not store.played(code, idx, _bit(body.slot), t["played"]):
            # another report changed the trial since it was read: checked again on its state
            return played(code, idx, body)
        return {"ok": True}

    @app.post("/api/participants/{code}/trials/{idx}/answer")
    def answer(code: str, idx: int, body: Answer):
        _, p = trial_of(code, idx)
        needs = sum(_bit(s) for s in audio_slots(p))
        try:
            stored = store.answer(code, idx, body.choice, body.rt_ms, needs)
        except KeyError:
            raise HTTPException(404, f"trial {idx} was not given to this participant") from None
        return {"ok": True, "repeated": not stored}

    @app.post("/api/participants/{code}/finish")
    def finish(code: str):
        p = participant(code)
        if p.finished_at is not None:  # a retry of a finish whose answer was lost: the same ending
            return ending(p.outcome or outcome_of(p.excluded), p.excluded)
        if p.survey is None:
            raise HTTPException(403, "answer the questionnaire first")
        if p.role == "match":
            ts = store.trials(code)
            left = sum(t["chosen"] is None for t in ts)
            if left:
                raise HTTPException(409, f"{left} trials are not answered yet")
            why = exclusion(study, p.survey, ts)
        else:
            have = {(r["kind"], r["script"]) for r in store.recordings(code)}
            missing = [f"text {k + 1}" for k in range(len(study.scripts)) if ("voice", k) not in have]
            if ("face", 0) not in have:
                missing.append("the photo")
            if missing:
                raise HTTPException(409, f"record every text and take a photo first (missing: {', '.join(missing)})")
            why = None
        outcome = outcome_of(why if p.excluded is None else p.excluded)
        store.finish(code, why, outcome)
        return ending(outcome, why)

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
        filmed = kind == "voice" and study.recording.video
        types = ("video/webm", "video/mp4") if filmed else UPLOAD_TYPES[kind]
        if not ctype.startswith(types):
            allowed = " or ".join(types)
            raise HTTPException(415, f"a {kind} upload must be {allowed}, not {ctype or 'untyped'}")
        data = await read_capped(request, study.recording.max_upload_bytes)
        try:
            if kind == "voice":
                kept, seconds = await run_in_threadpool(check_voice, data, study)
                box, film = "", await run_in_threadpool(check_video, data) if filmed else None
            else:
                kept, face_box = await run_in_threadpool(check_face, data, study)
                seconds, box, film = None, " ".join(f"{v:.1f}" for v in face_box), None
        except MediaError as e:
            raise HTTPException(422, str(e)) from None
        folder = study.recordings_dir / code
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"voice-{script}.wav" if kind == "voice" else "face-0.jpg"
        files = {name: kept} | ({f"video-{script}{film}": data} if film else {})
        for file, content in files.items():
            tmp = folder / f".{file}.part"
            tmp.write_bytes(content)
            tmp.replace(folder / file)
        try:
            if film:
                await run_in_threadpool(store.save_recording, code, "video", script, f"{code}/{next(reversed(files))}",
                                        "", seconds)
            await run_in_threadpool(store.save_recording, code, kind, script, f"{code}/{name}", box, seconds)
        except Exception:
            if await run_in_threadpool(store.participant, code) is None:  # withdrawn while it was checked
                shutil.rmtree(folder, ignore_errors=True)
                raise HTTPException(410, "this participation was withdrawn") from None
            raise
        if await run_in_threadpool(store.participant, code) is None:  # withdrawn as it was written
            shutil.rmtree(folder, ignore_errors=True)
            raise HTTPException(410, "this participation was withdrawn")
        out = {"accepted": True}
        if seconds is not None:
            out["speech_seconds"] = round(seconds, 2)
        return out

    @app.delete("/api/participants/{code}")
    def withdraw(code: str):
        participant(code)
        store.delete(code, keep_id=study.platform.once)
        shutil.rmtree(study.recordings_dir / code, ignore_errors=True)
        return {"deleted": True}

    @app.get("/api/admin/progress")
    def progress(request: Request):
        """Joins and finishes per role and experiment, for one source (default: real participants),
        how many joined of each source, and the outcomes."""
        admin(request)
        source = request.query_params.get("source", "participant")
        if source not in SOURCES:
            raise HTTPException(400, f"source must be one of {', '.join(SOURCES)}")
        out: dict = {"source": source, "record": {"joined": 0, "finished": 0},
                     "match": {str(e): {"joined": 0, "finished": 0, "excluded": 0} for e in study.experiments},
                     "sources": dict.fromkeys(SOURCES, 0), "outcomes": {}}
        for p in store.participants():
            out["sources"][p.source] += 1
            if p.source != source:
                continue
            row = out["record"] if p.role == "record" else out["match"][str(p.experiment)]
            row["joined"] += 1
            row["finished"] += p.finished_at is not None
            if p.role == "match":
                row["excluded"] += p.excluded is not None
            if p.outcome:
                out["outcomes"][p.outcome] = out["outcomes"].get(p.outcome, 0) + 1
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

