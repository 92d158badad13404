"""The study's rules without a server or a database (study/rules.py, study/checks.py' states,
the export's manifest): each with numbers a reader can check by hand. tests/test_study.py and
tests/test_study_platform.py test the same rules through the real HTTP API."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from facevoice.service.errors import FormatError, UsageError
from facevoice.study import rules
from facevoice.study.checks import answer_huggins, count_beeps, draw_beeps, draw_huggins
from facevoice.study.config import Listening, Outcome, Platform, Recording, SoundCheck, Study
from facevoice.study.errors import Conflict, Forbidden, Invalid, NotFound, NotOpen, StudyError, UnsupportedType
from facevoice.study.export import EXPORT_FORMAT, ExportManifest
from facevoice.study.store import Participant

STUDY = Study(directory=Path("/nonexistent"), title="rules", corpus=Path("/nonexistent"),
              outcomes={"completed": Outcome("DONE", "https://example.org/?cc={code}"),
                        "screened_out": Outcome("SCREEN"), "failed_checks": Outcome("CHECKS")},
              listening=Listening(enforce=True, slack_seconds=0.3))


def person(**kw) -> Participant:
    values = dict(code="c", role="match", experiment=1, seed=1, created_at=0.0, consented_at=None, survey=None,
                  finished_at=None, excluded=None)
    return Participant(**values | kw)


def trial(idx: int, kind: str = "match", chosen: int | None = None, correct: int = 0, options=("a", "b"),
          repeat_of: int | None = None, **kw) -> dict:
    return {"idx": idx, "kind": kind, "chosen": chosen, "correct": correct, "option0": options[0],
            "option1": options[1], "repeat_of": repeat_of, "served": 0, "played": 0, "served_at": None} | kw


def test_each_refusal_carries_its_http_status():
    assert [e.status for e in (Invalid("x"), Forbidden("x"), NotFound("x"), Conflict("x"), NotOpen("x"))] \
        == [400, 403, 404, 409, 503]
    assert issubclass(UnsupportedType, StudyError) and UnsupportedType.status == 415


def test_a_participant_goes_through_the_stages_in_order():
    study = replace(STUDY, sound_check=SoundCheck(enabled=True))
    p = person()
    assert rules.stage(study, p) == "consent"
    p = replace(p, consented_at=1.0)
    assert rules.stage(study, p) == "survey"
    p = replace(p, survey={"gender": "female"})
    assert rules.stage(study, p) == "sound_check"
    assert rules.stage(study, replace(p, role="record")) == "tasks"  # a recorder takes no check
    assert rules.stage(study, replace(p, sound_check={"passed": True})) == "tasks"
    assert rules.stage(study, replace(p, finished_at=2.0)) == "finished"


def test_the_listening_clock_counts_each_clip_played_since_the_first_was_sent():
    # 10 s clips, 0.3 s slack: the first clip sent at t = 100 can be reported played from t = 109.7
    t = trial(0, served=1, served_at=100.0)
    with pytest.raises(Conflict, match=r"\(9\.6 s of 9\.7 s\)"):
        rules.check_listened(STUDY, t, "query", ("query",), 10.0, now=109.6)
    rules.check_listened(STUDY, t, "query", ("query",), 10.0, now=109.7)
    # an F->V task's second voice, the first played: two clips' time, 19.7 s
    t = trial(0, served=2 | 4, played=2, served_at=100.0)
    with pytest.raises(Conflict, match=r"\(15\.0 s of 19\.7 s\)"):
        rules.check_listened(STUDY, t, "1", ("0", "1"), 10.0, now=115.0)
    rules.check_listened(STUDY, t, "1", ("0", "1"), 10.0, now=119.7)
    with pytest.raises(Conflict, match="never sent"):
        rules.check_listened(STUDY, trial(0), "query", ("query",), 10.0, now=1e9)
    rules.check_listened(replace(STUDY, listening=Listening(enforce=False)), trial(0), "query", ("query",), 10.0, 0.0)


def test_only_the_first_unanswered_trial_is_current():
    ts = [trial(0, chosen=1), trial(1), trial(2)]
    assert rules.current_trial(ts, 1)["idx"] == 1
    assert rules.current_trial(ts, 0)["idx"] == 0  # an answered one is given (its repeat is told apart later)
    with pytest.raises(Conflict, match=r"task 2 is"):
        rules.current_trial(ts, 2)
    with pytest.raises(NotFound, match="trial 5 was not given"):
        rules.current_trial(ts, 5)


def test_two_failed_controls_exclude_and_the_outcome_follows_the_reason():
    trials = [trial(0, chosen=0),  # picked a
              trial(1, "consistency", chosen=1, repeat_of=0),  # picked b this time: failed
              trial(2, "correctness", chosen=0, correct=1),  # failed
              trial(3, "correctness", chosen=0, correct=0),
              trial(4, "consistency", chosen=None, repeat_of=0)]  # not answered: not counted
    assert rules.failed_controls(trials) == 2
    assert rules.exclusion(STUDY, {"recorded": "no"}, trials) == "failed 2 control tasks"  # more than 1
    assert rules.exclusion(STUDY, {"recorded": "no"}, trials[:3]) == "failed 2 control tasks"
    assert rules.exclusion(STUDY, {"recorded": "no"}, trials[:2]) is None  # one failed is allowed
    assert rules.exclusion(STUDY, {"recorded": "Yes"}, []) == rules.SCREENED_OUT
    assert [rules.outcome_of(r) for r in (None, "failed 2 control tasks", rules.SCREENED_OUT,
                                          rules.SOUND_CHECK_FAILED, rules.HEADPHONE_CHECK_FAILED)] \
        == ["completed", "failed_checks", "screened_out", "screened_out", "screened_out"]
    assert rules.ending(STUDY, "completed", "ignored").json() == {
        "outcome": "completed", "completion_code": "DONE", "redirect": "https://example.org/?cc=DONE"}
    assert rules.ending(STUDY, "screened_out", rules.SOUND_CHECK_FAILED).json() == {
        "outcome": "screened_out", "completion_code": "SCREEN", "redirect": "", "reason": "failed the sound check"}


def test_a_recorder_finishes_with_every_text_and_the_photo():
    assert rules.missing_recordings(STUDY, []) == ["text 1", "text 2", "the photo"]
    got = [{"kind": "voice", "script": 1}, {"kind": "face", "script": 0}, {"kind": "video", "script": 0}]
    assert rules.missing_recordings(STUDY, got) == ["text 1"]


def test_joins_refill_at_the_rate_per_address():
    now = [0.0]
    limiter = rules.JoinLimiter(per_minute=6, burst=3, clock=lambda: now[0])  # one join per 10 s, 3 at once
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(10.0)
    assert limiter.take("b") == 0.0  # each address its own bucket
    now[0] = 10.0
    assert limiter.take("a") == 0.0 and limiter.take("a") == pytest.approx(10.0)


def test_who_may_join():
    token = "admin-token-0123456789"
    rules.check_source("pilot", rules.pilot_token(token), token, pilot_only=True)
    with pytest.raises(Forbidden, match="preview link"):
        rules.check_source("pilot", "x" * 32, token, pilot_only=False)
    with pytest.raises(Invalid, match="only for source"):
        rules.check_source("participant", rules.pilot_token(token), token, pilot_only=False)
    with pytest.raises(NotOpen, match="pilot only"):
        rules.check_source("participant", None, token, pilot_only=True)
    with pytest.raises(StudyError) as e:
        rules.check_admin("Bearer wrong", token)
    assert e.value.status == 401 and e.value.headers == {"WWW-Authenticate": "Bearer"}
    rules.check_admin(f"Bearer {token}", token)
    prolific = replace(STUDY, platform=Platform("prolific", ("PROLIFIC_PID", "STUDY_ID"), required=True))
    assert list(rules.platform_ids(prolific, {"STUDY_ID": "s", "PROLIFIC_PID": "p"}, "participant")) \
        == ["PROLIFIC_PID", "STUDY_ID"]  # the study's order
    for given, words in (({"workerId": "w"}, "unknown platform parameters"), ({"STUDY_ID": "s"}, "need PROLIFIC_PID"),
                         ({}, "open the study from prolific")):
        with pytest.raises(Invalid, match=words):
            rules.platform_ids(prolific, given, "participant")
    assert rules.platform_ids(prolific, {}, "pilot") == {}  # a pilot needs no id
    proxied = replace(STUDY, joins=replace(STUDY.joins, trust_proxy=True))
    assert rules.join_address(proxied, "10.0.0.1", "203.0.113.5, 10.0.0.2") == "203.0.113.5"
    assert rules.join_address(STUDY, "10.0.0.1", "203.0.113.5") == "10.0.0.1"


def test_the_questionnaire_is_checked_question_by_question():
    answers = {"gender": "female", "ethnicity": "Other", "age": "31", "first_language": "  English ", "recorded": "no"}
    assert rules.check_survey(STUDY, answers) == answers | {"age": 31, "first_language": "English"}
    assert rules.check_survey(STUDY, answers | {"age": 30.5})["age"] == 30.5
    for bad, words in (({"age": 17}, "17 is out of range"), ({"age": "old"}, "needs a number"),
                       ({"gender": "robot"}, "choose one of"), ({"extra": "x"}, "unknown questions"),
                       ({"age": ""}, "'age' is not answered")):
        with pytest.raises(Invalid, match=words):
            rules.check_survey(STUDY, answers | bad)


def test_an_upload_is_checked_before_it_is_read():
    p = person(role="record", consented_at=1.0, survey={})
    assert rules.check_upload(STUDY, p, "voice", 1, "audio/webm; codecs=opus") is False
    assert rules.check_upload(replace(STUDY, recording=Recording(video=True)), p, "voice", 0, "video/mp4") is True
    for study, who, kind, script, ctype, error, words in (
            (STUDY, replace(p, survey=None), "voice", 0, "audio/wav", Forbidden, "questionnaire first"),
            (STUDY, replace(p, finished_at=2.0), "voice", 0, "audio/wav", Conflict, "already finished"),
            (STUDY, p, "voice", 2, "audio/wav", NotFound, "no voice recording 2"),  # two scripts: 0 and 1
            (STUDY, p, "face", 1, "image/png", NotFound, "no face recording 1"),
            (STUDY, p, "face", 0, "", UnsupportedType, "not untyped"),
            (replace(STUDY, recording=Recording(video=True)), p, "voice", 0, "audio/webm", UnsupportedType,
             "video/webm or video/mp4, not audio/webm")):
        with pytest.raises(error, match=words):
            rules.check_upload(study, who, kind, script, ctype)


def test_the_sound_check_state_two_tries():
    state = draw_beeps(None, beeps=4, seed=7)
    assert state == {"tries": 0, "answers": [], "beeps": 4, "seed": 7}
    state, left = count_beeps(state, 3, tries=2)
    assert (state, left) == ({"tries": 1, "answers": [3], "passed": False}, 1)
    with pytest.raises(Conflict, match="play the sound check first"):  # the clip is used up
        count_beeps(state, 5, tries=2)
    state, left = count_beeps(draw_beeps(state, beeps=5, seed=8), 5, tries=2)
    assert (state, left) == ({"tries": 2, "answers": [3, 5], "passed": True}, 0)


def test_the_headphone_check_state_three_of_four():
    hp = {"targets": [], "answers": []}
    with pytest.raises(Conflict, match="play the headphone check first"):
        answer_huggins(hp, 1, trials=4, min_correct=3)
    for target, answer in ((1, 1), (2, 3), (3, 3), (2, 2)):  # the second answered wrong
        hp = draw_huggins(hp, 3, seed=0)
        hp = draw_huggins(hp, target, seed=1)  # drawn again before answering: the same trial, redrawn
        hp, left = answer_huggins(hp, answer, trials=4, min_correct=3)
    assert hp == {"targets": [1, 2, 3, 2], "answers": [1, 3, 3, 2], "passed": True} and left == 0
    hp, left = answer_huggins(draw_huggins({"targets": [1, 2, 3], "answers": [2, 3, 3]}, 2, seed=0), 2, 4, 3)
    assert hp["passed"] is False and left == 0  # two of four right


def test_the_export_manifest_is_read_back_as_written_and_another_format_refused(tmp_path):
    m = ExportManifest(app_version="1.0", study="rules", study_toml_sha256="a" * 64, consent_version="1",
                       consent_sha256="b" * 64, database="sqlite", exported_at="2026-01-01T00:00:00Z",
                       participants=3, trials=60, exclusions=1, by_source={"participant": 3},
                       files={"trials.json": "c" * 64})
    m.write(tmp_path)
    assert ExportManifest.read(tmp_path) == m and m.format_version == EXPORT_FORMAT == 1
    raw = (tmp_path / "manifest.json").read_text()
    (tmp_path / "manifest.json").write_text(raw.replace('"format_version": 1', '"format_version": 2'))
    with pytest.raises(FormatError, match="export format 2"):
        ExportManifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text(raw.replace('"format_version": 1,', ""))  # written before the field
    assert ExportManifest.read(tmp_path) == m
    with pytest.raises(UsageError, match="not a study export"):
        ExportManifest.read(tmp_path / "nothing")
