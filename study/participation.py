"""A study's participants going through it: the rules of study/rules.py and study/checks.py
applied to the store, one method per thing a participant (or the researcher) does. Each method
takes plain values and returns what happened (an Ending, a Joined, the sound to play, ...), or
raises a StudyError carrying its HTTP status; study/app.py only routes requests here.

Randomness (a participant's seed, the checks' draws) comes from `secrets`; time from `time.time`."""

from __future__ import annotations

import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from facevoice.service.media.errors import MediaError
from facevoice.study import rules
from facevoice.study.checks import (
    INTERVALS,
    answer_huggins,
    beeps_wav,
    count_beeps,
    draw_beeps,
    draw_huggins,
    huggins_wav,
)
from facevoice.study.config import Study
from facevoice.study.design import experiment_pairs, participant_trials, stimulus_people
from facevoice.study.errors import Conflict, Forbidden, Gone, Invalid, NotFound, TooMany, Unusable
from facevoice.study.recording import check_face, check_video, check_voice
from facevoice.study.rules import HEADPHONE_CHECK_FAILED, SLOT_BITS, SOUND_CHECK_FAILED, Ending
from facevoice.study.stimuli import build_all
from facevoice.study.store import SOURCES, Participant, Store, TookPart, new_code


@dataclass(frozen=True)
class Joined:
    code: str
    role: str
    experiment: int | None  # a matcher's, balanced across the study's experiments
    source: str
    resumed: bool  # the same platform link again: the participation it started


@dataclass(frozen=True)
class SoundChecked:
    passed: bool
    tries_left: int
    ending: Ending | None  # screened out: no try left


@dataclass(frozen=True)
class HeadphonesChecked:
    trials_left: int
    passed: bool | None  # None until the last trial is answered
    ending: Ending | None  # screened out


class Participation:
    """The study run on `store`. Builds the stimulus people, each experiment's pairs and every
    voice clip at its experiment's length (Kim et al. A.1.2) once. `pilot_only`: only the preview
    link (and simulated runs) may join, as when the consent fields a real run needs are missing."""

    def __init__(self, study: Study, store: Store, admin_token: str, pilot_only: bool = False):
        self.study, self.store, self.admin_token, self.pilot_only = study, store, admin_token, pilot_only
        self.people = stimulus_people(study)
        self.pairs = {e: experiment_pairs(study, self.people, e) for e in study.experiments}
        self.clips = build_all(study, self.people)
        self.limiter = rules.JoinLimiter(study.joins.per_minute, study.joins.burst)

    def participant(self, code: str, role: str | None = None) -> Participant:
        if len(code) > 64:
            raise NotFound("unknown participant code")
        p = self.store.participant(code)
        if p is None:
            raise NotFound("unknown participant code")
        if role and p.role != role:
            raise Forbidden(f"this code is for the {p.role} task")
        return p

    def check_admin(self, authorization: str) -> None:
        rules.check_admin(authorization, self.admin_token)

    def ending(self, name: str, reason: str | None = None) -> Ending:
        return rules.ending(self.study, name, reason)

    def stage(self, p: Participant) -> str:
        return rules.stage(self.study, p)

    # --- joining and leaving ------------------------------------------------------------

    def join(self, role: str, source: str = "participant", *, pilot_token: str | None = None,
             platform_ids: dict[str, str] | None = None, client: dict | None = None, address: str = "?",
             forwarded_for: str | None = None, authorization: str = "") -> Joined:
        """A new participant (or, by the same platform link again, the one it started)."""
        study = self.study
        rules.check_role(study, role)
        if source == "simulated":
            self.check_admin(authorization)  # only the researcher's scripts add simulated data (not rate-limited)
        else:
            wait = self.limiter.take(rules.join_address(study, address, forwarded_for))
            if wait:
                raise TooMany("too many joins from here; try again in a minute",
                              {"Retry-After": str(max(1, round(wait)))})
        rules.check_source(source, pilot_token, self.admin_token, self.pilot_only)
        ids = rules.platform_ids(study, platform_ids or {}, source)
        rules.check_device(study, client["device"] if client else None)
        try:
            code, experiment, resumed = self.store.add_participant(
                new_code(), role, study.experiments, secrets.randbits(62), source, study.joins.inactive_after_s,
                platform=study.platform.name, platform_ids=ids, once=study.platform.once, client=client)
        except TookPart as e:
            raise Conflict(f"{e}. Each person takes part once.") from None
        return Joined(code, role, experiment, source, resumed)

    def _delete(self, code: str) -> None:
        # on a platform the id cannot start again: the platform has this ending's code now
        self.store.delete(code, keep_id=self.study.platform.once)
        shutil.rmtree(self.study.recordings_dir / code, ignore_errors=True)

    def leave(self, outcome: str, code: str | None = None) -> Ending:
        """Declined, or no usable device: the participant's data (if they had joined) is deleted,
        and the page gets the outcome's code and redirect."""
        if code is not None:
            if self.participant(code).finished_at is not None:
                raise Conflict("this code has already finished the study")
            self._delete(code)
        return self.ending(outcome)

    def withdraw(self, code: str) -> None:
        """Everything of the participant is deleted (on a platform, a hash of their id stays)."""
        self.participant(code)
        self._delete(code)

    def finished_ending(self, p: Participant) -> Ending:
        return self.ending(p.outcome or rules.outcome_of(p.excluded), p.excluded)

    # --- consent and the questionnaire --------------------------------------------------

    def consent(self, code: str, agree: bool) -> Ending | None:
        """Consent given -> None; declined -> the declined ending, and nothing of them is kept."""
        p = self.participant(code)
        if not agree:
            if p.finished_at is not None:
                raise Conflict("this code has already finished the study")
            self.store.delete(code, keep_id=self.study.platform.once)
            return self.ending("declined")
        self.store.consent(code, self.study.consent.version, self.study.consent.digest())
        return None

    def survey(self, code: str, answers: dict) -> int:
        """The questionnaire's answers, checked -> the number of trials drawn (a matcher's, now)."""
        p = self.participant(code)
        if p.consented_at is None:
            raise Forbidden("consent first")
        checked = rules.check_survey(self.study, answers)
        trials = None
        if p.role == "match":
            trials = participant_trials(self.study, self.people, self.pairs[p.experiment], p.seed)
        self.store.save_survey(code, checked, trials)
        return len(trials or ())

    # --- the sound and headphone checks -------------------------------------------------

    def _sound_check(self, code: str, refusal: str) -> tuple[Participant, dict]:
        p = self.participant(code, "match")
        if self.stage(p) != "sound_check":
            raise Conflict(refusal)
        return p, dict(p.sound_check or {})

    def sound_draw(self, code: str) -> None:
        """A new sound check clip: a count of beeps drawn now (each try hears another)."""
        p, _ = self._sound_check(code, "there is no sound check to take now")
        self.store.set_sound_check(code, draw_beeps(p.sound_check, secrets.choice((3, 4, 5, 6)), secrets.randbits(32)))

    def sound_clip(self, code: str) -> bytes:
        """The drawn clip, the same on every fetch (a browser may fetch it in parts)."""
        _, check = self._sound_check(code, "draw a sound check first")
        if "beeps" not in check:
            raise Conflict("draw a sound check first")
        return beeps_wav(check["beeps"], check["seed"])

    def sound_answer(self, code: str, count: int) -> SoundChecked:
        _, check = self._sound_check(code, "play the sound check first")
        check, left = count_beeps(check, count, self.study.sound_check.tries)
        self.store.set_sound_check(code, check)
        if check["passed"] or left > 0:
            return SoundChecked(check["passed"], left, None)
        self.store.finish(code, SOUND_CHECK_FAILED, "screened_out")
        return SoundChecked(False, 0, self.ending("screened_out", SOUND_CHECK_FAILED))

    def _headphones(self, code: str) -> tuple[dict, dict]:
        """The participant's check state and its headphone part, while the check is theirs to take."""
        p = self.participant(code, "match")
        if self.stage(p) != "headphone_check":
            raise Conflict("there is no headphone check to take now")
        check = dict(p.sound_check or {})
        return check, dict(check.get("headphones") or {"targets": [], "answers": []})

    def headphone_state(self, code: str) -> tuple[int, int]:
        """(the trial that comes next, of how many): a reload goes on from there."""
        _, hp = self._headphones(code)
        return len(hp["answers"]) + 1, self.study.headphone_check.trials

    def headphone_draw(self, code: str) -> tuple[int, int]:
        """The next trial's sound: which interval holds the Huggins pitch is drawn now -> (its
        trial, of how many)."""
        check, hp = self._headphones(code)
        hp = draw_huggins(hp, secrets.choice(range(1, INTERVALS + 1)), secrets.randbits(32))
        self.store.set_sound_check(code, {**check, "headphones": hp})
        return len(hp["targets"]), self.study.headphone_check.trials

    def headphone_clip(self, code: str) -> bytes:
        _, hp = self._headphones(code)
        if len(hp["targets"]) <= len(hp["answers"]):
            raise Conflict("draw the next headphone check trial first")
        return huggins_wav(hp["targets"][-1], hp["seed"])

    def headphone_answer(self, code: str, interval: int) -> HeadphonesChecked:
        """One trial's answer. No answer is told right or wrong; after the last trial the check
        passes with `min_correct` right, or screens the participant out."""
        check, hp = self._headphones(code)
        hc = self.study.headphone_check
        hp, left = answer_huggins(hp, interval, hc.trials, hc.min_correct)
        self.store.set_sound_check(code, {**check, "headphones": hp})
        if left or hp["passed"]:
            return HeadphonesChecked(left, hp.get("passed"), None)
        self.store.finish(code, HEADPHONE_CHECK_FAILED, "screened_out")
        return HeadphonesChecked(0, False, self.ending("screened_out", HEADPHONE_CHECK_FAILED))

    # --- the tasks ----------------------------------------------------------------------

    def plan(self, code: str) -> tuple[Participant, list[dict]]:
        """A matcher's trials, once the questionnaire (and the checks) are done."""
        p = self.participant(code, "match")
        if p.survey is None:
            raise Forbidden("answer the questionnaire first")
        if self.stage(p) in ("sound_check", "headphone_check"):
            raise Forbidden(f"take the {self.stage(p).replace('_', ' ')} first")
        return p, self.store.trials(code)

    def clip_seconds(self, p: Participant) -> float:
        return self.study.stimuli.seconds(p.experiment)

    def _trial(self, code: str, idx: int) -> tuple[dict, Participant]:
        """The participant's trial `idx`, while it is the task they are on (rules.current_trial)."""
        p = self.participant(code, "match")
        if p.finished_at is not None:
            raise Conflict("this code has already finished the study")
        if self.stage(p) != "tasks":
            raise Forbidden(f"the tasks come after the {self.stage(p).replace('_', ' ')}")
        return rules.current_trial(self.store.trials(code), idx), p

    def stimulus(self, code: str, idx: int, slot: str) -> Path:
        """The file of the current trial's `slot` (query, 0 or 1); the first recording sent starts
        the trial's listening clock."""
        t, p = self._trial(code, idx)
        if t["chosen"] is not None:
            raise Conflict("this trial was already answered")
        identity = t["query"] if slot == "query" else t[f"option{slot}"]
        if slot in rules.audio_slots(p.experiment):
            self.store.served(code, idx, SLOT_BITS[slot])
            return self.clips[p.experiment][identity].path
        return self.study.corpus / self.people[identity].face

    def played(self, code: str, idx: int, slot: str) -> None:
        """The page reports a recording of the current trial played to its end (rules.check_listened)."""
        while True:
            t, p = self._trial(code, idx)
            audio = rules.audio_slots(p.experiment)
            if slot not in audio:
                raise Invalid(f"slot {slot} of this trial is not a recording")
            if t["chosen"] is not None:
                raise Conflict("this trial was already answered")
            rules.check_listened(self.study, t, slot, audio, self.clip_seconds(p), time.time())
            if self.store.played(code, idx, SLOT_BITS[slot], t["played"]):
                return
            # another report changed the trial since it was read: checked again on its state

    def answer(self, code: str, idx: int, choice: int, rt_ms: float | None) -> bool:
        """The answer to a trial whose recordings were played -> stored (False: the same answer
        again, a retry after a lost reply, changing nothing)."""
        _, p = self._trial(code, idx)
        needs = sum(SLOT_BITS[s] for s in rules.audio_slots(p.experiment))
        try:
            return self.store.answer(code, idx, choice, rt_ms, needs)
        except KeyError:
            raise NotFound(f"trial {idx} was not given to this participant") from None

    def finish(self, code: str) -> Ending:
        """The end: a matcher's controls decide their outcome; a recorder needs every recording."""
        p = self.participant(code)
        if p.finished_at is not None:  # a retry of a finish whose answer was lost: the same ending
            return self.finished_ending(p)
        if p.survey is None:
            raise Forbidden("answer the questionnaire first")
        if p.role == "match":
            ts = self.store.trials(code)
            left = sum(t["chosen"] is None for t in ts)
            if left:
                raise Conflict(f"{left} trials are not answered yet")
            why = rules.exclusion(self.study, p.survey, ts)
        else:
            missing = rules.missing_recordings(self.study, self.store.recordings(code))
            if missing:
                raise Conflict(f"record every text and take a photo first (missing: {', '.join(missing)})")
            why = None
        outcome = rules.outcome_of(why if p.excluded is None else p.excluded)
        self.store.finish(code, why, outcome)
        return self.ending(outcome, why)

    # --- recordings ---------------------------------------------------------------------

    def upload_allowed(self, code: str, kind: str, script: int, content_type: str) -> bool:
        """Checked before the upload is read (rules.check_upload) -> whether it is filmed."""
        return rules.check_upload(self.study, self.participant(code, "record"), kind, script, content_type)

    def save_upload(self, code: str, kind: str, script: int, data: bytes, filmed: bool) -> float | None:
        """An upload through the media pipeline; what it keeps is written under the participant's
        folder and recorded -> the seconds of speech of a voice (None for a photo)."""
        study = self.study
        try:
            if kind == "voice":
                kept, seconds = check_voice(data, study)
                box, film = "", check_video(data) if filmed else None
            else:
                kept, face_box = check_face(data, study)
                seconds, box, film = None, " ".join(f"{v:.1f}" for v in face_box), None
        except MediaError as e:
            raise Unusable(str(e)) from None
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
                self.store.save_recording(code, "video", script, f"{code}/{next(reversed(files))}", "", seconds)
            self.store.save_recording(code, kind, script, f"{code}/{name}", box, seconds)
        except Exception:
            if self.store.participant(code) is None:  # withdrawn while it was checked
                shutil.rmtree(folder, ignore_errors=True)
                raise Gone("this participation was withdrawn") from None
            raise
        if self.store.participant(code) is None:  # withdrawn as it was written
            shutil.rmtree(folder, ignore_errors=True)
            raise Gone("this participation was withdrawn")
        return seconds

    # --- the researcher's -------------------------------------------------------------------

    def progress(self, source: str = "participant") -> dict:
        """Joins and finishes per role and experiment, for one source (default: real participants),
        how many joined of each source, and the outcomes."""
        if source not in SOURCES:
            raise Invalid(f"source must be one of {', '.join(SOURCES)}")
        out: dict = {"source": source, "record": {"joined": 0, "finished": 0},
                     "match": {str(e): {"joined": 0, "finished": 0, "excluded": 0} for e in self.study.experiments},
                     "sources": dict.fromkeys(SOURCES, 0), "outcomes": {}}
        for p in self.store.participants():
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

    def export(self, code: str | None = None) -> dict:
        """Everything stored but the media (or one participant's): participants, trials with
        their people and answers, recordings' rows, the exclusion history."""
        store = self.store
        ps = store.participants() if code is None else [p for p in [store.participant(code)] if p]
        return {"participants": [p.__dict__ for p in ps], "trials": store.trials(code),
                "recordings": store.recordings(code), "exclusions": store.exclusions(code)}

    def exclude(self, code: str, reason: str, by: str) -> None:
        if not self.store.exclude(code, reason, by):
            raise NotFound("unknown participant code")
