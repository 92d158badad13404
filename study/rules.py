"""The study's rules as plain functions of its settings and a participant's stored state, with no
server and no database: who may join, which stage a participant is at, which task is theirs now,
the listening clock, the controls and the outcome a participant ends with, the questionnaire's
and the uploads' checks. Each refusal is a StudyError (study/errors.py) carrying its HTTP status;
study/participation.py applies these rules to the store, study/app.py routes requests to it."""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass

from facevoice.study.config import EXPERIMENTS, Study
from facevoice.study.errors import Conflict, Forbidden, Invalid, NotFound, NotOpen, Unauthorized, UnsupportedType

SCREENED_OUT = "took part in the recording"  # the reasons that screen out (the rest fail checks)
SOUND_CHECK_FAILED = "failed the sound check"
HEADPHONE_CHECK_FAILED = "failed the headphone check"
UPLOAD_TYPES = {"voice": ("audio/", "video/webm", "application/octet-stream"),
                "face": ("image/jpeg", "image/png", "image/webp")}
FILMED_TYPES = ("video/webm", "video/mp4")
SLOT_BITS = {"query": 1, "0": 2, "1": 4}  # a trial's slots, as bits of its `served` and `played`


# --- who may join -------------------------------------------------------------------------

def pilot_token(admin_token: str) -> str:
    """The preview link's token: derived from the admin token, so it needs no storage, and it
    grants nothing but joining as a pilot (whose data `analyze` leaves out by default)."""
    return hmac.new(admin_token.encode(), b"facevoice study pilot", "sha256").hexdigest()[:32]


def check_admin(authorization: str, admin_token: str) -> None:
    """An Authorization header that is not `Bearer ADMIN_TOKEN`: Unauthorized."""
    if not hmac.compare_digest(authorization.encode(), f"Bearer {admin_token}".encode()):
        raise Unauthorized("admin endpoints need the study's admin token", {"WWW-Authenticate": "Bearer"})


def check_role(study: Study, role: str) -> None:
    if role not in study.roles:
        task = "recording" if role == "record" else "matching"
        raise Forbidden(f"This study does not run the {task} task: open the link the study's description gives")


def check_source(source: str, given_pilot_token: str | None, admin_token: str, pilot_only: bool) -> None:
    """A pilot needs the preview link's token (and only a pilot carries one); while the study runs
    its pilot only, real participants wait."""
    if source == "pilot":
        if not hmac.compare_digest((given_pilot_token or "").encode(), pilot_token(admin_token).encode()):
            raise Forbidden("a pilot join needs the study's preview link (its pilot token)")
    elif given_pilot_token is not None:
        raise Invalid("pilot_token is only for source \"pilot\"")
    if pilot_only and source == "participant":
        raise NotOpen("the study is not open yet: it runs its pilot only (its consent page is not complete)")


def platform_ids(study: Study, given: dict[str, str], source: str) -> dict[str, str]:
    """The platform ids a join keeps, in the study's order of its parameters: only the study's
    parameters, its first (the participant's id) among them; a real participant must bring it
    when the study says `required`."""
    params = study.platform.params
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise Invalid(f"unknown platform parameters {unknown} (this study takes {list(params)})")
    ids = {k: given[k] for k in params if k in given}
    if ids and params[0] not in ids:
        raise Invalid(f"the platform ids need {params[0]}")
    if study.platform.required and source == "participant" and not ids:
        raise Invalid(f"open the study from {study.platform.name}: its link carries {params[0]}")
    return ids


def check_device(study: Study, device: str | None) -> None:
    if device is not None and device not in study.devices:
        raise Forbidden(f"this study cannot be taken on a {device} (it takes {', '.join(study.devices)})")


def join_address(study: Study, client_host: str, forwarded_for: str | None) -> str:
    """The address a join is counted against: the client's, or behind the study's TLS proxy
    (`[joins] trust_proxy`) the first of X-Forwarded-For."""
    if study.joins.trust_proxy:
        return (forwarded_for if forwarded_for is not None else client_host).split(",")[0].strip()
    return client_host


class JoinLimiter:
    """Joins per client address: a token bucket of `burst`, refilled at `per_minute`. Held in
    memory only, and only until the bucket is full again (an address is never stored); each
    replica limits its own share."""

    def __init__(self, per_minute: float, burst: int, size: int = 10_000, clock=time.monotonic):
        self.rate, self.burst, self.size, self.clock = per_minute / 60.0, float(burst), size, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, address: str) -> float:
        """0 when a join may go ahead now, else the seconds until one may."""
        now = self.clock()
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


# --- where a participant is ---------------------------------------------------------------

def stage(study: Study, p) -> str:
    """Where the participant is: the page resumes there after a reload or on the resume link.
    consent, survey, (a matcher's) sound_check and headphone_check, tasks, finished."""
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


def audio_slots(experiment: int) -> tuple[str, ...]:
    """The slots of a trial that are recordings: the query of a V->F task, the options of an F->V one."""
    return ("query",) if EXPERIMENTS[experiment][0] == "V->F" else ("0", "1")


def current_trial(trials: list[dict], idx: int, current: bool = True) -> dict:
    """The participant's trial `idx`; with `current`, only while it is the task they are on (the
    first unanswered one): stimuli are not handed out, nor playback taken, ahead."""
    t = next((t for t in trials if t["idx"] == idx), None)
    if t is None:
        raise NotFound(f"trial {idx} was not given to this participant")
    if current and t["chosen"] is None:
        on = min(x["idx"] for x in trials if x["chosen"] is None)
        if on != idx:
            raise Conflict(f"this is not the current task (task {on + 1} is)")
    return t


def check_listened(study: Study, trial: dict, slot: str, audio: tuple[str, ...], clip_seconds: float,
                   now: float) -> None:
    """The listening clock (`[listening] enforce`): our player plays one clip at a time, from the
    start, at normal speed, so the clips played so far, this one included, cannot have ended
    sooner than their lengths (less `slack_seconds`) after the trial's first clip was sent."""
    if not study.listening.enforce:
        return
    if not trial["served"] & SLOT_BITS[slot]:
        raise Conflict("the recording cannot have been played: it was never sent")
    heard = {s for s in audio if trial["played"] & SLOT_BITS[s]} | {slot}
    needed = clip_seconds * len(heard) - study.listening.slack_seconds
    elapsed = now - trial["served_at"] if trial["served_at"] else 0.0
    if elapsed < needed:
        raise Conflict(f"the recording cannot have been played to its end yet ({elapsed:.1f} s of {needed:.1f} s)")


# --- how a participant ends ---------------------------------------------------------------

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
        return SCREENED_OUT
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


@dataclass(frozen=True)
class Ending:
    """An outcome as the participant is sent back with it: its code and redirect; a screened-out
    participant is told why (which check)."""

    outcome: str
    completion_code: str
    redirect: str
    reason: str | None = None

    def json(self) -> dict:
        out = {"outcome": self.outcome, "completion_code": self.completion_code, "redirect": self.redirect}
        return out | ({"reason": self.reason} if self.reason else {})


def ending(study: Study, name: str, reason: str | None = None) -> Ending:
    o = study.outcome(name)
    return Ending(name, o.code, o.url(), reason if name == "screened_out" and reason else None)


def missing_recordings(study: Study, recordings: list[dict]) -> list[str]:
    """What a recorder has still to record before finishing: each text read aloud, the photo."""
    have = {(r["kind"], r["script"]) for r in recordings}
    missing = [f"text {k + 1}" for k in range(len(study.scripts)) if ("voice", k) not in have]
    if ("face", 0) not in have:
        missing.append("the photo")
    return missing


# --- what a participant sends -------------------------------------------------------------

def check_survey(study: Study, answers: dict) -> dict:
    """The answers, checked against the study's questions: every question answered, from its
    options where it has them, numbers in range; Invalid naming the question otherwise."""
    questions = {q["name"]: q for q in study.survey}
    unknown = sorted(set(answers) - set(questions))
    if unknown:
        raise Invalid(f"unknown questions {unknown}")
    out = {}
    for name, q in questions.items():
        if name not in answers or answers[name] in ("", None):
            raise Invalid(f"question {name!r} is not answered")
        value = answers[name]
        if q.get("type") == "number":
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise Invalid(f"question {name!r} needs a number") from None
            if not q.get("min", float("-inf")) <= value <= q.get("max", float("inf")):
                raise Invalid(f"question {name!r}: {value:g} is out of range")
            value = int(value) if value.is_integer() else value
        elif "options" in q:
            if value not in q["options"]:
                raise Invalid(f"question {name!r}: choose one of {q['options']}")
        else:
            value = str(value).strip()[:200]
        out[name] = value
    return out


def check_upload(study: Study, p, kind: str, script: int, content_type: str) -> bool:
    """Whether a recorder may upload recording `script` of `kind` (voice or face) now, with this
    content type -> whether it is filmed (a voice of a study with `[recording] video`)."""
    if p.survey is None:
        raise Forbidden("answer the questionnaire first")
    if p.finished_at is not None:
        raise Conflict("this code has already finished the study")
    if not 0 <= script < (len(study.scripts) if kind == "voice" else 1):
        raise NotFound(f"there is no {kind} recording {script}")
    ctype = content_type.split(";")[0].strip().lower()
    filmed = kind == "voice" and study.recording.video
    types = FILMED_TYPES if filmed else UPLOAD_TYPES[kind]
    if not ctype.startswith(types):
        raise UnsupportedType(f"a {kind} upload must be {' or '.join(types)}, not {ctype or 'untyped'}")
    return filmed
