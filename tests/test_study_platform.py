"""The study run on real participants, through its real HTTP API (a `facevoice study serve`
process): the recruitment hand-off (platform ids, one take each, an outcome code and redirect
per ending), rate-limited joins, resuming, the listening check against the server's clock, the
sound check, consent from study.toml, the stimuli cut to one length, and the tidy export that
`study analyze` reads."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

from devtools.local_servers import LocalStudy
from devtools.study_helpers import PROLIFIC, answers, http, make_study
from facevoice.service.checksums import ChecksumMismatch
from facevoice.service.errors import UsageError
from facevoice.study.analyze import accuracy, analyze, collect
from facevoice.study.config import load_study
from facevoice.study.design import stimulus_people
from facevoice.study.export import ExportReader, export
from facevoice.study.serve import StudyServeOptions, study_serve
from facevoice.study.stimuli import RATE, TARGET_RMS_DB, build_all
from facevoice.study.store import CODE_ALPHABET, Store, new_code

TOKEN = LocalStudy.ADMIN_TOKEN


def served(tmp_path, corpus, extra: str = "", **kw) -> LocalStudy:
    if "[platform]" in extra:
        kw.setdefault("roles", ("match",))  # a study on a platform runs one task
    return LocalStudy(make_study(tmp_path / "study", corpus[0], extra, **kw))


def consent_survey(base: str, code: str, survey: dict | None = None) -> None:
    assert http(base, "POST", f"/api/participants/{code}/consent", {"agree": True})[0] == 200
    assert http(base, "POST", f"/api/participants/{code}/survey", {"answers": survey or answers()})[0] == 200


def answer_all(base: str, code: str, direction: str, choose) -> None:
    """Every task: fetch its clips (as the page does), play them, answer choose(trial)."""
    truth = {t["idx"]: t for t in http(base, "GET", f"/api/admin/export?code={code}", token=TOKEN)[1]["trials"]}
    for t in http(base, "GET", f"/api/participants/{code}/trials")[1]["trials"]:
        slots = ("query",) if direction == "V->F" else ("0", "1")
        for slot in slots:
            assert http(base, "GET", f"/api/participants/{code}/trials/{t['index']}/media/{slot}")[0] == 200
            assert http(base, "POST", f"/api/participants/{code}/trials/{t['index']}/played", {"slot": slot})[0] == 200
        choice = choose(truth[t["index"]])
        assert http(base, "POST", f"/api/participants/{code}/trials/{t['index']}/answer",
                    {"choice": choice, "rt_ms": 800})[0] == 200


def test_prolific_ids_are_kept_one_take_each_and_every_outcome_has_its_code_and_redirect(tmp_path, corpus):
    with served(tmp_path, corpus, PROLIFIC) as s:
        base = s.url
        ids = {"PROLIFIC_PID": "5f1a2b3c4d5e6f7a8b9c0d1e", "STUDY_ID": "study42", "SESSION_ID": "sess-1"}
        client = {"device": "desktop", "screen": "1280x800", "browser": "test"}
        status, p = http(base, "POST", "/api/participants", {"role": "match", "platform_ids": ids, "client": client})
        assert status == 201 and not p["resumed"]
        # the same Prolific id again (a new tab, the link opened twice) resumes the same participation
        status, again = http(base, "POST", "/api/participants", {"role": "match", "platform_ids": ids})
        assert status == 201 and again["resumed"] and again["code"] == p["code"]
        # but not by whoever knows the id: another session's link is refused
        status, reply = http(base, "POST", "/api/participants",
                             {"role": "match", "platform_ids": {**ids, "SESSION_ID": "someone-else"}})
        assert status == 409 and "another session" in reply["detail"] and "code" not in reply
        consent_survey(base, p["code"])
        state = http(base, "GET", f"/api/participants/{p['code']}")[1]
        assert state["stage"] == "tasks" and "completion_code" not in state  # no code before the end
        answer_all(base, p["code"], p["direction"], lambda t: t["correct"])
        status, done = http(base, "POST", f"/api/participants/{p['code']}/finish")
        assert done == {"outcome": "completed", "completion_code": "DONE-1",
                        "redirect": "https://app.prolific.com/submissions/complete?cc=DONE-1"}
        # a reload after finishing gets the same ending, and so does the same session's link in a
        # new tab (a closed tab); another session of the same id cannot take part again
        assert http(base, "GET", f"/api/participants/{p['code']}")[1] == {**state, "stage": "finished", **done}
        status, again = http(base, "POST", "/api/participants", {"role": "match", "platform_ids": ids})
        assert status == 201 and again["resumed"] and again["code"] == p["code"]
        assert http(base, "GET", f"/api/participants/{again['code']}")[1]["completion_code"] == "DONE-1"
        status, reply = http(base, "POST", "/api/participants",
                             {"role": "match", "platform_ids": {**ids, "SESSION_ID": "sess-2"}})
        assert status == 409 and "taken part in this study already" in reply["detail"] and "code" not in reply
        # the recording task is another study (roles = ["match"] here)
        status, reply = http(base, "POST", "/api/participants", {"role": "record", "platform_ids": ids})
        assert status == 403 and "recording task" in reply["detail"]
        stored = http(base, "GET", f"/api/admin/export?code={p['code']}", token=TOKEN)[1]["participants"][0]
        assert (stored["platform"], stored["platform_id"]) == ("prolific", ids["PROLIFIC_PID"])
        assert stored["platform_ids"] == ids
        assert stored["client"] == client and stored["outcome"] == "completed"
        assert stored["consent_version"] == "test-1" and len(stored["consent_hash"]) == 64

        # failed checks: answering every control wrong
        q = http(base, "POST", "/api/participants", {"role": "match", "platform_ids": {"PROLIFIC_PID": "p2"}})[1]
        consent_survey(base, q["code"])
        answer_all(base, q["code"], q["direction"], lambda t: 1 - t["correct"])
        assert http(base, "POST", f"/api/participants/{q['code']}/finish")[1]["completion_code"] == "CHECKS-2"
        # screened out: took part in the recording
        r = http(base, "POST", "/api/participants", {"role": "match", "platform_ids": {"PROLIFIC_PID": "p3"}})[1]
        consent_survey(base, r["code"], {**answers(), "recorded": "yes"})
        answer_all(base, r["code"], r["direction"], lambda t: t["correct"])
        assert http(base, "POST", f"/api/participants/{r['code']}/finish")[1] == {
            "outcome": "screened_out", "completion_code": "SCREEN-3", "reason": "took part in the recording",
            "redirect": "https://app.prolific.com/submissions/complete?cc=SCREEN-3"}
        # declined: nothing is kept
        d = http(base, "POST", "/api/participants", {"role": "match", "platform_ids": {"PROLIFIC_PID": "p4"}})[1]
        status, ending = http(base, "POST", f"/api/participants/{d['code']}/consent", {"agree": False})
        assert status == 200 and ending["completion_code"] == "NOCONSENT-4" and "cc=NOCONSENT-4" in ending["redirect"]
        assert http(base, "GET", f"/api/participants/{d['code']}")[0] == 404
        # the platform has the declined code now: the id cannot start again (only a hash of it is kept)
        status, reply = http(base, "POST", "/api/participants",
                             {"role": "match", "platform_ids": {"PROLIFIC_PID": "p4"}})
        assert status == 409 and "declined" in reply["detail"]
        # no device: with or without a join
        n = http(base, "POST", "/api/participants", {"role": "match", "platform_ids": {"PROLIFIC_PID": "p5"}})[1]
        assert http(base, "POST", "/api/leave", {"outcome": "no_device", "code": n["code"]})[1]["completion_code"] \
            == "NODEVICE-5"
        assert http(base, "GET", f"/api/participants/{n['code']}")[0] == 404
        assert http(base, "POST", "/api/participants", {"role": "match", "platform_ids": {"PROLIFIC_PID": "p5"}})[0] \
            == 409
        assert http(base, "POST", "/api/leave", {"outcome": "no_device"})[1]["outcome"] == "no_device"
        # a withdrawal deletes everything but a hash of the id: the id cannot take part again
        w = http(base, "POST", "/api/participants", {"role": "match", "platform_ids": {"PROLIFIC_PID": "p6"}})[1]
        assert http(base, "DELETE", f"/api/participants/{w['code']}")[0] == 200
        status, reply = http(base, "POST", "/api/participants",
                             {"role": "match", "platform_ids": {"PROLIFIC_PID": "p6"}})
        assert status == 409 and "withdrawn" in reply["detail"]
        # the completed code is never given for the asking
        assert http(base, "POST", "/api/leave", {"outcome": "completed"})[0] == 422
        assert "DONE-1" not in json.dumps(http(base, "GET", "/api/study")[1])
        outcomes = http(base, "GET", "/api/admin/progress", token=TOKEN)[1]["outcomes"]
        assert outcomes == {"completed": 1, "failed_checks": 1, "screened_out": 1}
        # bad platform input: an unknown parameter, an id without the participant id, odd characters, a phone
        for body, want in (({"role": "match", "platform_ids": {"workerId": "x"}}, 400),
                           ({"role": "match", "platform_ids": {"STUDY_ID": "x"}}, 400),
                           ({"role": "match", "platform_ids": {"PROLIFIC_PID": "<script>"}}, 422),
                           ({"role": "match", "platform_ids": {"PROLIFIC_PID": "x" * 65}}, 422),
                           ({"role": "match", "client": {"device": "fridge"}}, 422)):
            assert http(base, "POST", "/api/participants", body)[0] == want, body


def test_a_required_platform_id_a_device_policy_and_a_second_take_allowed(tmp_path, corpus):
    extra = '[platform]\nname = "mturk"\nonce = false\nrequired = true\n[devices]\nallowed = ["desktop"]\n'
    with served(tmp_path, corpus, extra) as s:
        status, reply = http(s.url, "POST", "/api/participants", {"role": "match"})
        assert status == 400 and "workerId" in reply["detail"]
        ids = {"workerId": "A1B2C3", "assignmentId": "as1", "hitId": "h1"}
        first = http(s.url, "POST", "/api/participants", {"role": "match", "platform_ids": ids})[1]
        second = http(s.url, "POST", "/api/participants", {"role": "match", "platform_ids": ids})[1]
        assert first["code"] != second["code"] and not second["resumed"]  # once = false
        status, reply = http(s.url, "POST", "/api/participants",
                             {"role": "match", "platform_ids": ids, "client": {"device": "phone"}})
        assert status == 403 and "phone" in reply["detail"]
        # a pilot needs no platform id
        from facevoice.study.app import pilot_token

        pilot = {"role": "match", "source": "pilot", "pilot_token": pilot_token(TOKEN)}
        assert http(s.url, "POST", "/api/participants", pilot)[0] == 201


def test_joins_are_rate_limited_per_address(tmp_path, corpus):
    with served(tmp_path, corpus, per_minute=6, burst=3) as s:
        statuses = [http(s.url, "POST", "/api/participants", {"role": "match"})[0] for _ in range(4)]
        assert statuses == [201, 201, 201, 429]
        status, reply = http(s.url, "POST", "/api/participants", {"role": "record"})
        assert status == 429 and "too many joins" in reply["detail"]
        # the researcher's simulated runs are not limited
        assert http(s.url, "POST", "/api/participants", {"role": "match", "source": "simulated"}, token=TOKEN)[0] == 201
        time.sleep(10.5)  # 6 a minute: one more after 10 s
        assert http(s.url, "POST", "/api/participants", {"role": "match"})[0] == 201


def test_listening_is_checked_against_the_servers_clock_and_a_retried_answer_counts_once(tmp_path, corpus):
    with served(tmp_path, corpus, clip_seconds=1.0, enforce=True) as s:
        base = s.url
        seen = set()
        while seen != {"V->F", "F->V"}:  # experiments 1 and 4
            p = http(base, "POST", "/api/participants", {"role": "match"})[1]
            if p["direction"] in seen:
                continue
            seen.add(p["direction"])
            consent_survey(base, p["code"])
            plan = http(base, "GET", f"/api/participants/{p['code']}/trials")[1]
            assert plan["clip_seconds"] == 1.0
            t = plan["trials"][0]["index"]
            slots = ("query",) if p["direction"] == "V->F" else ("0", "1")
            path = f"/api/participants/{p['code']}/trials/{t}"
            # the next task's stimuli are not handed out ahead, nor its playback taken
            later = f"/api/participants/{p['code']}/trials/{plan['trials'][1]['index']}"
            for method, tail, body in (("GET", f"/media/{slots[0]}", None), ("POST", "/played", {"slot": slots[0]})):
                status, reply = http(base, method, later + tail, body)
                assert status == 409 and "not the current task" in reply["detail"], reply
            # "played" before the clip was even sent, and right after it was: both refused
            status, reply = http(base, "POST", f"{path}/played", {"slot": slots[0]})
            assert status == 409 and "cannot have been played" in reply["detail"]
            started = time.time()
            for slot in slots:
                status, clip = http(base, "GET", f"{path}/media/{slot}")
                info = sf.info(io.BytesIO(clip))
                assert abs(info.duration - 1.0) < 1e-3  # every clip of the experiment is its length
            assert http(base, "POST", f"{path}/played", {"slot": slots[0]})[0] == 409
            assert http(base, "POST", f"{path}/answer", {"choice": 0})[0] == 409
            time.sleep(max(0.0, started + 1.0 - time.time()))
            assert http(base, "POST", f"{path}/played", {"slot": slots[0]})[0] == 200
            if len(slots) == 2:  # the second voice of an F->V task: two clips' time in all
                assert http(base, "POST", f"{path}/played", {"slot": "1"})[0] == 409
                time.sleep(max(0.0, started + 2.0 - time.time()))
                assert http(base, "POST", f"{path}/played", {"slot": "1"})[0] == 200
            # the answer sent twice (the first reply lost): stored once; a different one refused
            once = {"choice": 1, "rt_ms": 700}
            assert http(base, "POST", f"{path}/answer", once)[1] == {"ok": True, "repeated": False}
            assert http(base, "POST", f"{path}/answer", once)[1] == {"ok": True, "repeated": True}
            assert http(base, "POST", f"{path}/answer", {"choice": 0})[0] == 409
            (row,) = [r for r in http(base, "GET", f"/api/admin/export?code={p['code']}", token=TOKEN)[1]["trials"]
                      if r["idx"] == t]
            assert row["chosen"] == 1 and row["served_at"] <= row["played_at"] <= row["answered_at"]
            assert row["played_at"] - row["served_at"] >= len(slots) * 1.0 - 0.3
            if len(slots) == 2:  # both voices reported at once after one clip's time: only one passes
                nxt = f"/api/participants/{p['code']}/trials/{plan['trials'][1]['index']}"
                for slot in slots:
                    assert http(base, "GET", f"{nxt}/media/{slot}")[0] == 200
                time.sleep(1.05)
                with ThreadPoolExecutor(2) as pool:
                    got = sorted(pool.map(lambda slot, nxt=nxt: http(base, "POST", f"{nxt}/played", {"slot": slot})[0],
                                          slots))
                assert got == [200, 409], got


def test_the_sound_check_screens_out_who_cannot_hear(tmp_path, corpus):
    with served(tmp_path, corpus, "[sound_check]\nenabled = true\ntries = 2\n") as s:
        base = s.url
        p = http(base, "POST", "/api/participants", {"role": "match"})[1]
        consent_survey(base, p["code"])
        assert http(base, "GET", f"/api/participants/{p['code']}")[1]["stage"] == "sound_check"
        assert http(base, "GET", f"/api/participants/{p['code']}/trials")[0] == 403
        assert http(base, "POST", f"/api/participants/{p['code']}/sound-check", {"count": 3})[0] == 409  # not played
        assert http(base, "GET", f"/api/participants/{p['code']}/sound-check.wav")[0] == 409  # not drawn
        assert http(base, "POST", f"/api/participants/{p['code']}/sound-check/new")[0] == 200
        status, wav = http(base, "GET", f"/api/participants/{p['code']}/sound-check.wav")
        assert http(base, "GET", f"/api/participants/{p['code']}/sound-check.wav")[1] == wav  # the same clip again
        assert status == 200
        x, _ = sf.read(io.BytesIO(wav))
        frames = x[: len(x) // 160 * 160].reshape(-1, 160)  # 10 ms
        loud = np.sqrt((frames ** 2).mean(axis=1)) > 0.02
        beeps = int(np.sum(loud[1:] & ~loud[:-1]) + loud[0])  # the beeps' onsets, counted as a listener would
        assert 3 <= beeps <= 6
        assert http(base, "POST", f"/api/participants/{p['code']}/sound-check", {"count": beeps})[1]["passed"]
        assert http(base, "GET", f"/api/participants/{p['code']}")[1]["stage"] == "tasks"
        # one who miscounts every time is screened out, with that outcome's code
        q = http(base, "POST", "/api/participants", {"role": "match"})[1]
        consent_survey(base, q["code"])
        for tries_left in (1, 0):
            http(base, "POST", f"/api/participants/{q['code']}/sound-check/new")
            reply = http(base, "POST", f"/api/participants/{q['code']}/sound-check", {"count": 0})[1]
            assert not reply["passed"] and reply["tries_left"] == tries_left
        assert reply["outcome"] == "screened_out" and reply["completion_code"] == "TEST-CODE-SCREENED-OUT"
        stored = http(base, "GET", f"/api/admin/export?code={q['code']}", token=TOKEN)[1]
        assert stored["participants"][0]["excluded"] == "failed the sound check"
        assert stored["participants"][0]["sound_check"]["answers"] == [0, 0]


def test_the_headphone_check_is_huggins_pitch_and_screens_out_who_cannot_hear_it(tmp_path, corpus):
    extra = "[sound_check]\nenabled = true\n[headphone_check]\nenabled = true\ntrials = 4\nmin_correct = 3\n"
    with served(tmp_path, corpus, extra) as s:
        base = s.url

        def targets(code):
            return http(base, "GET", f"/api/admin/export?code={code}", token=TOKEN)[1]["participants"][0][
                "sound_check"]["headphones"]["targets"]

        p = http(base, "POST", "/api/participants", {"role": "match"})[1]
        code = p["code"]
        consent_survey(base, code)
        hp = f"/api/participants/{code}/headphone-check"
        assert http(base, "POST", f"{hp}/new")[0] == 409  # the sound check comes first
        http(base, "POST", f"/api/participants/{code}/sound-check/new")
        beeps = http(base, "GET", f"/api/admin/export?code={code}", token=TOKEN)[1]["participants"][0][
            "sound_check"]["beeps"]
        assert http(base, "POST", f"/api/participants/{code}/sound-check", {"count": beeps})[1]["passed"]
        assert http(base, "GET", f"/api/participants/{code}")[1]["stage"] == "headphone_check"
        assert http(base, "GET", f"/api/participants/{code}/trials")[0] == 403
        assert http(base, "POST", hp, {"interval": 1})[0] == 409  # nothing drawn yet
        assert http(base, "GET", f"{hp}.wav")[0] == 409
        for bad in ({"interval": 0}, {"interval": 4}, {"interval": "1"}, {"interval": 1, "x": 1}, {}):
            assert http(base, "POST", hp, bad)[0] == 422, bad
        for k in range(4):
            assert http(base, "POST", f"{hp}/new")[1] == {"trial": k + 1, "of": 4}
            status, wav = http(base, "GET", f"{hp}.wav")
            x, sr = sf.read(io.BytesIO(wav))
            assert status == 200 and x.shape == (int(4.0 * sr), 2)  # three 1 s noises, two 0.5 s gaps
            target = targets(code)[-1]
            right = target if k != 1 else target % 3 + 1  # one wrong of four: 3 right pass
            reply = http(base, "POST", hp, {"interval": right})[1]
            assert reply == {"trials_left": 3 - k, "passed": True if k == 3 else None}  # never told right or wrong
        assert http(base, "GET", f"/api/participants/{code}")[1]["stage"] == "tasks"
        assert http(base, "POST", f"{hp}/new")[0] == 409  # taken
        # two wrong of four fail: screened out with that outcome's code and the reason kept
        q = http(base, "POST", "/api/participants", {"role": "match"})[1]["code"]
        consent_survey(base, q)
        http(base, "POST", f"/api/participants/{q}/sound-check/new")
        beeps = http(base, "GET", f"/api/admin/export?code={q}", token=TOKEN)[1]["participants"][0][
            "sound_check"]["beeps"]
        http(base, "POST", f"/api/participants/{q}/sound-check", {"count": beeps})
        for k in range(4):
            http(base, "POST", f"/api/participants/{q}/headphone-check/new")
            http(base, "POST", f"/api/participants/{q}/headphone-check/new")  # drawn again: still one trial
            target = targets(q)[-1]
            reply = http(base, "POST", f"/api/participants/{q}/headphone-check",
                         {"interval": target if k < 2 else target % 3 + 1})[1]
        assert reply["passed"] is False and reply["outcome"] == "screened_out"
        assert reply["completion_code"] == "TEST-CODE-SCREENED-OUT"
        stored = http(base, "GET", f"/api/admin/export?code={q}", token=TOKEN)[1]["participants"][0]
        assert stored["excluded"] == "failed the headphone check" and len(stored["sound_check"]["headphones"]
                                                                           ["answers"]) == 4


def test_huggins_pitch_is_in_the_difference_of_the_ears_and_not_in_their_sum():
    from facevoice.study.checks import CHECK_RATE, huggins_band, huggins_wav

    x, sr = sf.read(io.BytesIO(huggins_wav(2, seed=5)), dtype="int16")
    assert sr == CHECK_RATE and x.shape == (4 * sr, 2)
    n = sr  # each noise 1 s, starting every 1.5 s
    first, second, third = (x[int(1.5 * sr * k):int(1.5 * sr * k) + n].astype(float) for k in range(3))
    assert np.array_equal(first[:, 0], first[:, 1]) and np.array_equal(third[:, 0], third[:, 1])  # diotic
    assert not np.array_equal(first[:, 0], third[:, 0])  # fresh noise each time
    band = huggins_band(n, sr)
    assert 560 < np.fft.rfftfreq(n, 1 / sr)[band].min() < np.fft.rfftfreq(n, 1 / sr)[band].max() < 640

    def corr(a, b, mask):
        fa, fb = np.fft.rfft(a), np.fft.rfft(b)
        return float(np.real(np.sum(fa[mask] * np.conj(fb[mask]))) / np.sqrt(np.sum(abs(fa[mask]) ** 2)
                                                                              * np.sum(abs(fb[mask]) ** 2)))

    inner = huggins_band(n, sr) & (abs(np.fft.rfftfreq(n, 1 / sr) - 600) < 30)  # away from the band's edges
    outside = (np.fft.rfftfreq(n, 1 / sr) > 1000) & (np.fft.rfftfreq(n, 1 / sr) < 4000)
    left, right = second[:, 0], second[:, 1]
    assert corr(left, right, inner) < -0.95 and corr(left, right, outside) > 0.99  # the band inverted in one ear
    mixed = np.fft.rfft(left + right)  # what loudspeakers give both ears: the band cancels
    assert np.sum(abs(mixed[inner]) ** 2) < 0.02 * np.sum(abs(np.fft.rfft(left)[inner]) ** 2)
    with pytest.raises(ValueError):
        huggins_wav(4, seed=5)


def test_a_headphone_check_passes_with_min_correct_right_of_its_trials():
    from facevoice.study.checks import headphone_passed

    assert headphone_passed([1, 2, 3, 1, 2, 3], [1, 2, 3, 1, 2, 1], 5)
    assert not headphone_passed([1, 2, 3, 1, 2, 3], [1, 2, 3, 1, 3, 1], 5)
    assert headphone_passed([2], [2], 1) and not headphone_passed([2], [3], 1)


def test_serve_refuses_a_real_run_without_the_consent_fields(tmp_path, corpus):
    study = make_study(tmp_path / "study", corpus[0])
    toml = (study / "study.toml").read_text()
    for line in ('ethics_approval = "TEST-IRB-1"\n', 'payment = "none (a test)"\n'):
        toml = toml.replace(line, "")
    (study / "study.toml").write_text(toml)
    with pytest.raises(UsageError, match="ethics_approval, payment"):
        study_serve(StudyServeOptions(study, port=1))
    # --pilot serves the preview link only
    with LocalStudy(study, extra_args=("--pilot",)) as s:
        status, reply = http(s.url, "POST", "/api/participants", {"role": "match"})
        assert status == 503 and "pilot" in reply["detail"]
        from facevoice.study.app import pilot_token

        body = {"role": "match", "source": "pilot", "pilot_token": pilot_token(TOKEN)}
        assert http(s.url, "POST", "/api/participants", body)[0] == 201
        assert "Ethics approval" not in http(s.url, "GET", "/api/study")[1]["consent"]


def test_study_toml_is_checked(tmp_path, corpus):
    for extra, words in (('[platform]\nname = "myspace"\n', "platform"),
                         ('[outcomes.completed]\ncode = "A"\n[outcomes.declined]\ncode = "A"\n', "its own code"),
                         ('[outcomes.completed]\ncode = "A"\nredirect = "javascript:alert(1)"\n', "http"),
                         ('[outcomes.finished]\ncode = "A"\n', "unknown outcomes"),
                         ('[devices]\nallowed = ["watch"]\n', "devices"),
                         ('[sound_check]\nenabled = true\ntries = 0\n', "tries"),
                         ('[sound_check]\nenabled = "yes"\n', "sound_check.enabled"),
                         ('[headphone_check]\nenabled = true\ntrials = 6\nmin_correct = 7\n', "min_correct"),
                         ('[headphone_check]\ntrials = 2.5\n', "trials"),
                         ('[headphone_check]\nenabled = 1\n', "headphone_check.enabled")):
        directory = make_study(tmp_path / str(abs(hash(extra))), corpus[0], extra)
        with pytest.raises(UsageError, match=words):
            load_study(directory)
    for key, value in (("clip_seconds", "0"), ("enforce", "true\nslack_seconds = -1")):
        directory = make_study(tmp_path / key, corpus[0])
        text = (directory / "study.toml").read_text()
        old = "clip_seconds = 1.0" if key == "clip_seconds" else "enforce = false"
        (directory / "study.toml").write_text(text.replace(old, f"{key} = {value}"))
        with pytest.raises(UsageError):
            load_study(directory)
    directory = make_study(tmp_path / "bool", corpus[0])
    text = (directory / "study.toml").read_text()
    (directory / "study.toml").write_text(text.replace("per_minute =", "inactive_after_s = true\nper_minute ="))
    with pytest.raises(UsageError, match="inactive_after_s"):
        load_study(directory)


def test_the_stimuli_are_cut_from_the_speech_to_one_length_and_one_loudness(tmp_path, corpus):
    study = load_study(make_study(tmp_path / "study", corpus[0], clip_seconds=2.5))
    people = stimulus_people(study)
    built = build_all(study, people)
    lengths, levels, filled = [], [], 0
    for b in built[1].values():
        x, sr = sf.read(b.path)
        assert sr == RATE
        lengths.append(len(x) / sr)
        levels.append(20 * np.log10(np.sqrt(np.mean(x ** 2)) + 1e-12))
        filled += b.filled
    assert set(lengths) == {2.5} and len(lengths) == len(people)
    assert max(abs(v - TARGET_RMS_DB) for v in levels) < 1.5  # within the peak limit's reach
    # a clip is filled exactly when the speech the VAD found was shorter than the length
    assert all(b.filled == (b.source_seconds < 2.5) for b in built[1].values())
    assert any(not b.filled for b in built[1].values())  # the corpus's voices are longer: cut
    again = build_all(study, people)  # built once: a restart finds them
    assert all(again[1][i].source_seconds == 0.0 for i in again[1])


def test_a_participant_code_is_letters_and_digits_that_no_spreadsheet_reads_as_a_formula():
    codes = [new_code() for _ in range(2000)]
    assert len(set(codes)) == 2000 and {len(c) for c in codes} == {22}
    assert set("".join(codes)) <= set(CODE_ALPHABET) and not set("=+-@_0O1lI") & set(CODE_ALPHABET)


def test_the_tidy_export_holds_every_trial_and_analyze_reads_it(tmp_path, corpus):
    with served(tmp_path, corpus, PROLIFIC) as s:
        base = s.url
        codes = []
        for k in range(8):
            p = http(base, "POST", "/api/participants", {"role": "match", "platform_ids": {"PROLIFIC_PID": f"pid{k}"},
                                                          "client": {"device": "desktop", "screen": "1280x800"}})[1]
            # one participant's free text is a spreadsheet formula
            consent_survey(base, p["code"], {**answers(), "first_language": "=HYPERLINK(1)"} if k == 1 else None)
            rng = np.random.default_rng(k)
            answer_all(base, p["code"], p["direction"],
                       lambda t, rng=rng: t["correct"] if rng.random() < 0.8 else 1 - t["correct"])
            http(base, "POST", f"/api/participants/{p['code']}/finish")
            codes.append(p["code"])
        http(base, "POST", "/api/admin/exclusions", {"code": codes[0], "reason": "duplicate", "by": "rs"}, token=TOKEN)
        study = load_study(s.study_dir)
        store = Store(study.database_url)
        try:
            manifest = export(study, store, tmp_path / "export")
            from_db = collect(study, store)
        finally:
            store.close()
    out = tmp_path / "export"
    trials = list(csv.DictReader((out / "trials.csv").open()))
    people = list(csv.DictReader((out / "participants.csv").open()))
    assert len(trials) == manifest.trials == sum(1 for _ in json.loads((out / "trials.json").read_text()))
    assert {r["participant"] for r in trials} == set(codes) and len(people) == 8
    row = trials[0]
    for column in ("platform_id", "experiment", "query_stimulus", "option0_stimulus", "clip_seconds", "served_at",
                   "played_at", "answered_at", "rt_ms", "server_rt_ms", "choice", "right"):
        assert row[column] != "", column
    assert float(row["server_rt_ms"]) >= 0 and row["rt_ms"] == "800.0"
    first = next(r for r in people if r["participant"] == codes[0])
    assert "rs: duplicate" in first["exclusion_history"] and first["survey_age"] == "31"
    assert first["consent_version"] == "test-1" and first["device"] == "desktop" and first["outcome"]
    assert first["platform_ids"] == "PROLIFIC_PID=pid0"
    second = next(r for r in people if r["participant"] == codes[1])
    assert second["survey_first_language"] == "'=HYPERLINK(1)"  # quoted in the CSV, as stored in the JSON
    assert {p_["survey"]["first_language"] for p_ in json.loads((out / "participants.json").read_text())} \
        >= {"=HYPERLINK(1)"}
    for name, digest in manifest.files.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert manifest.study_toml_sha256 == study.digest and manifest.app_version
    # analyze reads the export and gets what it gets from the database
    reader = ExportReader(out)
    def accuracies(data):
        return {e: {c: accuracy(ts) for c, ts in by.items()} for e, by in data["included"].items()}

    assert accuracies(collect(study, reader)) == accuracies(from_db) and accuracies(from_db)
    report = analyze(study, reader, tmp_path / "report")
    assert sum(r["n"] for r in report["table1"].values()) == sum(len(v) for v in from_db["included"].values())
    # a changed export is refused
    (out / "trials.json").write_text((out / "trials.json").read_text().replace('"choice": 0', '"choice": 1', 1))
    with pytest.raises(ChecksumMismatch, match="changed since"):
        ExportReader(out)
