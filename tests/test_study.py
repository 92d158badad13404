"""The human study's server (Kim et al. sec. 3) through its real HTTP API: the trial design of
sec. 3.2, balanced assignment, one participant end to end, bad input, durability across a
killed server, recordings into a corpus, and simulated participants through the analysis. The
server runs as a real `facevoice study serve` process on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from matplotlib import cbook

from devtools.local_servers import LocalPostgres, LocalStudy
from devtools.media_samples import encode, speech
from devtools.study_helpers import answers, http, make_study
from facevoice.service.corpus import read_identities, read_manifest
from facevoice.service.errors import UsageError
from facevoice.service.media.image import FaceImage, face_input_used
from facevoice.study.analyze import MIN_N_INTERVAL, analyze, collect, participants_needed, table1
from facevoice.study.config import load_study
from facevoice.study.corpus import StudyCorpusOptions, study_corpus
from facevoice.study.design import experiment_pairs, participant_trials, stimulus_people
from facevoice.study.simulate import StudySimulateOptions, study_simulate
from facevoice.study.store import Store

TOKEN = LocalStudy.ADMIN_TOKEN
HOPPER = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()
LOGO = Path(cbook.get_sample_data("logo2.png", asfileobj=False)).read_bytes()


@pytest.fixture(scope="module")
def postgres():
    with LocalPostgres() as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request, tmp_path, corpus):
    """A study on the session's corpus, served by a real process on the given database."""
    database = None
    if request.param == "postgresql":
        pg = request.getfixturevalue("postgres")
        pg.reset()
        database = pg.url
    with LocalStudy(make_study(tmp_path / "study", corpus[0]), database) as s:
        yield s


def store_of(server: LocalStudy) -> Store:
    return Store(server.database or load_study(server.study_dir).database_url)


def join(base: str, role: str = "match", survey: bool = True) -> dict:
    status, p = http(base, "POST", "/api/participants", {"role": role})
    assert status == 201, p
    if survey:
        assert http(base, "POST", f"/api/participants/{p['code']}/consent", {"agree": True})[0] == 200
        assert http(base, "POST", f"/api/participants/{p['code']}/survey", {"answers": answers()})[0] == 200
    return p


def play_and_answer(base: str, p: dict, idx: int, choice: int) -> int:
    slots = ("query",) if p["direction"] == "V->F" else ("0", "1")
    for slot in slots:
        assert http(base, "POST", f"/api/participants/{p['code']}/trials/{idx}/played", {"slot": slot})[0] == 200
    return http(base, "POST", f"/api/participants/{p['code']}/trials/{idx}/answer", {"choice": choice, "rt_ms": 900})[0]


def test_the_trials_follow_sec_3_2(tmp_path, corpus):
    study = load_study(make_study(tmp_path, corpus[0]))
    people = stimulus_people(study)
    for e, letters in ((1, ("gender",)), (2, ("gender", "appearance_group")),
                       (3, ("gender", "appearance_group", "first_language", "age_group"))):
        pairs = experiment_pairs(study, people, e)
        assert pairs and all(tuple(people[a].attributes[k] for k in letters)
                             == tuple(people[b].attributes[k] for k in letters) for a, b in pairs)
        partners = Counter(x for pair in pairs for x in pair)
        assert max(partners.values()) <= 2 * study.design.partners  # 8 drawn by each, some drawn back
    trials = participant_trials(study, people, experiment_pairs(study, people, 1), seed=11)
    kinds = Counter(t.kind for t in trials)
    assert kinds == {"match": 16, "consistency": 2, "correctness": 2} and len(trials) == 20
    matching = [t for t in trials if t.kind == "match"]
    assert Counter(people[t.query].attributes["gender"] for t in matching) == {"male": 8, "female": 8}
    assert len({frozenset(t.options) for t in matching}) == 16  # 16 different pairs
    for t in trials:
        assert t.options[t.correct] == t.query and t.options[0] != t.options[1]
        if t.kind == "consistency":
            first = trials[t.repeat_of]
            assert first.kind == "match" and (first.query, first.options) == (t.query, t.options)
        if t.kind == "correctness":
            assert {people[o].attributes["gender"] for o in t.options} == {"male", "female"}
    assert [t.index for t in trials] == list(range(20))
    assert trials != participant_trials(study, people, experiment_pairs(study, people, 1), seed=12)


def test_matchers_are_balanced_across_the_experiments(server):
    got = [http(server.url, "POST", "/api/participants", {"role": "match"})[1]["experiment"] for _ in range(10)]
    assert Counter(got) == {1: 3, 2: 3, 3: 2, 4: 2}
    assert http(server.url, "POST", "/api/participants", {"role": "record"})[1]["experiment"] is None


def test_a_participant_end_to_end_and_every_answer_is_stored(server, tmp_path):
    base = server.url
    p = join(base)
    status, plan = http(base, "GET", f"/api/participants/{p['code']}/trials")
    assert status == 200 and plan["experiment"] == p["experiment"] and len(plan["trials"]) >= 18
    assert not any("id0" in json.dumps(t) for t in plan["trials"])  # nothing names a person
    first = plan["trials"][0]
    status, body = http(base, "GET", first["query"].replace(base, ""))
    assert status == 200 and isinstance(body, bytes) and len(body) > 1000
    for k, t in enumerate(plan["trials"]):
        assert play_and_answer(base, p, t["index"], k % 2) == 200
    status, done = http(base, "POST", f"/api/participants/{p['code']}/finish")
    store = store_of(server)
    try:
        # answering 0, 1, 0, ... fails controls or not, by the draw: the outcome says which, with its own code
        excluded = store.participant(p["code"]).excluded
        want = ("failed_checks", "TEST-CODE-FAILED-CHECKS") if excluded else ("completed", "TEST-CODE")
        assert status == 200 and (done["outcome"], done["completion_code"]) == want, (done, excluded)
        stored = store.trials(p["code"])
        assert [t["chosen"] for t in stored] == [k % 2 for k in range(len(plan["trials"]))]
        assert all(t["answered_at"] and t["rt_ms"] == 900 for t in stored)
        data = collect(load_study(server.study_dir), store)
        counted = sum(len(by) for by in data["included"].values()) + sum(data["excluded"].values())
        assert counted == 1
    finally:
        store.close()


def test_bad_input_gets_a_clear_4xx_and_changes_nothing(server):
    base = server.url
    p = join(base)
    code = p["code"]
    idx = http(base, "GET", f"/api/participants/{code}/trials")[1]["trials"][0]["index"]
    assert play_and_answer(base, p, idx, 1) == 200
    before = http(base, "GET", "/api/admin/export", token=TOKEN)[1]
    fresh = http(base, "POST", "/api/participants", {"role": "match"})[1]["code"]
    cases = [
        # forged and replayed answers
        ("POST", f"/api/participants/{code}/trials/99/answer", {"choice": 0}, 404, "not given"),
        ("POST", f"/api/participants/{code}/trials/-1/played", {"slot": "query"}, 404, "not given"),
        ("POST", f"/api/participants/{code}/trials/{idx}/answer", {"choice": 0}, 409, "already answered"),
        ("POST", f"/api/participants/{code}/trials/{idx + 1}/answer", {"choice": 0}, 409, "play the recording"),
        ("POST", "/api/participants/nosuchcode/trials/0/answer", {"choice": 0}, 404, "unknown participant"),
        ("POST", f"/api/participants/{'x' * 5000}/consent", {"agree": True}, 404, "unknown participant"),
        # wrong types and values
        ("POST", f"/api/participants/{code}/trials/{idx + 1}/answer", {"choice": 2}, 422, ""),
        ("POST", f"/api/participants/{code}/trials/{idx + 1}/answer", {"choice": "0"}, 422, ""),
        ("POST", f"/api/participants/{code}/trials/{idx + 1}/answer", {"choice": 0, "rt_ms": -5}, 422, ""),
        ("POST", f"/api/participants/{code}/trials/{idx + 1}/answer", {"choice": 0, "correct": 1}, 422, ""),
        ("POST", f"/api/participants/{code}/trials/{idx + 1}/answer", [], 422, ""),
        ("POST", "/api/participants", {"role": "admin"}, 422, ""),
        # a source other than a real participant needs its token; an unknown one is refused
        ("POST", "/api/participants", {"role": "match", "source": "simulated"}, 401, "admin token"),
        ("POST", "/api/participants", {"role": "match", "source": "pilot"}, 403, "preview link"),
        ("POST", "/api/participants", {"role": "match", "source": "pilot", "pilot_token": "x" * 32}, 403, "preview"),
        ("POST", "/api/participants", {"role": "match", "pilot_token": "x" * 32}, 400, "only for source"),
        ("POST", "/api/participants", {"role": "match", "source": "real"}, 422, ""),
        ("GET", "/api/admin/progress?source=real", None, 401, "admin token"),
        ("POST", f"/api/participants/{code}/trials/{idx}/played", {"slot": "2"}, 422, ""),
        # order and repeats
        ("POST", f"/api/participants/{fresh}/survey", {"answers": answers()}, 403, "consent first"),
        ("GET", f"/api/participants/{fresh}/trials", None, 403, "questionnaire first"),
        ("POST", f"/api/participants/{code}/survey", {"answers": answers()}, 409, "already answered"),
        ("POST", f"/api/participants/{code}/consent", {"agree": True}, 409, "already given"),
        ("POST", f"/api/participants/{code}/finish", None, 409, "not answered yet"),
        ("POST", f"/api/participants/{code}/recordings/voice/0", None, 403, "for the match task"),
        # the admin API
        ("GET", "/api/admin/export", None, 401, "admin token"),
        ("GET", "/api/admin/progress", None, 401, "admin token"),
    ]
    for method, path, body, want, words in cases:
        status, reply = http(base, method, path, body)
        assert status == want, (path, body, status, reply)
        assert words in json.dumps(reply), (path, reply)
    assert http(base, "GET", "/api/admin/export", token="wrong-token")[0] == 401
    bad_survey = [{**answers(), "age": "old"}, {**answers(), "gender": "robot"}, {**answers(), "extra": "x"},
                  {k: v for k, v in answers().items() if k != "age"}, {**answers(), "age": 5}]
    second = join(base, survey=False)["code"]
    http(base, "POST", f"/api/participants/{second}/consent", {"agree": True})
    for survey in bad_survey:
        status, reply = http(base, "POST", f"/api/participants/{second}/survey", {"answers": survey})
        assert status == 400 and "question" in reply["detail"], (survey, reply)
    after = http(base, "GET", "/api/admin/export", token=TOKEN)[1]
    mine = [t for t in after["trials"] if t["code"] == code]
    assert mine == [t for t in before["trials"] if t["code"] == code]  # nothing stored was changed
    # a second finish with the same code
    for t in http(base, "GET", f"/api/participants/{code}/trials")[1]["trials"][1:]:
        play_and_answer(base, p, t["index"], 0)
    status, first = http(base, "POST", f"/api/participants/{code}/finish")
    finished = http(base, "GET", f"/api/admin/export?code={code}", token=TOKEN)[1]["participants"][0]["finished_at"]
    # a second finish (a retry whose answer was lost) gets the same ending and changes nothing
    status2, again = http(base, "POST", f"/api/participants/{code}/finish")
    assert status == status2 == 200 and again == first
    assert http(base, "GET", f"/api/admin/export?code={code}", token=TOKEN)[1]["participants"][0]["finished_at"] \
        == finished
    assert http(base, "POST", f"/api/participants/{code}/trials/{idx}/answer", {"choice": 0})[0] == 409


def test_a_filmed_reading_is_kept_only_when_the_study_asks_and_goes_with_a_withdrawal(tmp_path, corpus):
    x, sr = speech("Forty four Americans have now taken the presidential oath, and the words have been spoken.")
    film, audio_only = encode(x, sr, "webm-video"), encode(x, sr, "webm-opus")
    with LocalStudy(make_study(tmp_path / "filmed", corpus[0], video=True)) as s:
        assert http(s.url, "GET", "/api/study")[1]["video"] is True
        code = join(s.url, "record")["code"]
        up = f"/api/participants/{code}/recordings/voice"
        for data, ctype, want, words in ((audio_only, "audio/webm", 415, "video/webm"),  # the page films
                                         (audio_only, "video/webm", 422, "no picture"),
                                         (film[:400], "video/webm", 422, ""),
                                         (b"\x1a\x45\xdf\xa3" + b"\0" * 600, "video/webm", 422, ""),
                                         (HOPPER, "video/mp4", 422, "")):
            status, reply = http(s.url, "POST", f"{up}/0", raw=data, content_type=ctype)
            assert status == want and words in json.dumps(reply), (ctype, status, reply)
        status, reply = http(s.url, "POST", f"{up}/0", raw=film, content_type="video/webm")
        assert status == 200 and reply["speech_seconds"] > 1.0, reply
        folder = s.study_dir / "recordings" / code
        assert sorted(f.name for f in folder.iterdir()) == ["video-0.webm", "voice-0.wav"]
        assert (folder / "video-0.webm").read_bytes() == film
        kinds = [(r["kind"], r["script"]) for r in http(s.url, "GET", f"/api/admin/export?code={code}",
                                                         token=TOKEN)[1]["recordings"]]
        assert sorted(kinds) == [("video", 0), ("voice", 0)]
        assert http(s.url, "DELETE", f"/api/participants/{code}")[0] == 200
        assert not folder.exists()
    # without the switch, a filmed upload is taken for its audio and no video is kept
    with LocalStudy(make_study(tmp_path / "unfilmed", corpus[0])) as s:
        code = join(s.url, "record")["code"]
        assert http(s.url, "POST", f"/api/participants/{code}/recordings/voice/0", raw=film,
                    content_type="video/webm")[0] == 200
        assert [f.name for f in (s.study_dir / "recordings" / code).iterdir()] == ["voice-0.wav"]


def test_uploads_are_checked_by_the_media_pipeline_and_become_a_corpus(server, tmp_path):
    base = server.url
    p = join(base, "record")
    code = p["code"]
    x, sr = speech("Forty four Americans have now taken the presidential oath, and the words have been spoken.")
    webm = encode(x, sr, "webm-opus")
    up = f"/api/participants/{code}/recordings"
    status, reply = http(base, "POST", f"{up}/voice/0", raw=webm, content_type="audio/webm")
    assert status == 200 and reply["accepted"] and reply["speech_seconds"] > 1.0, reply
    buf = io.BytesIO()
    sf.write(buf, np.zeros(16000 * 3, np.float32) + 1e-3 * np.random.default_rng(0).standard_normal(48000),
             16000, format="WAV")
    bad = [
        (f"{up}/voice/1", buf.getvalue(), "audio/wav", 422, "no speech found"),
        (f"{up}/voice/1", b"", "audio/wav", 400, "empty"),
        (f"{up}/voice/1", webm[:300], "audio/webm", 422, "audio"),  # cut inside its header
        (f"{up}/voice/1", b"<html>not audio</html>" * 10, "audio/wav", 422, "audio"),
        (f"{up}/voice/1", HOPPER, "image/jpeg", 415, "must be"),
        (f"{up}/voice/1", b"\0" * 2_000_001, "audio/wav", 413, "larger than"),
        (f"{up}/voice/7", webm, "audio/webm", 404, "no voice recording 7"),
        (f"{up}/face/0", LOGO, "image/png", 422, "no face found"),
        (f"{up}/face/0", HOPPER[:2000], "image/jpeg", 422, "image"),
        (f"{up}/face/0", webm, "audio/webm", 415, "must be"),
        (f"{up}/video/0", webm, "audio/webm", 422, ""),
    ]
    for path, data, ctype, want, words in bad:
        status, reply = http(base, "POST", path, raw=data, content_type=ctype)
        assert status == want and words in json.dumps(reply), (path, ctype, status, reply)
    assert http(base, "POST", f"/api/participants/{code}/finish")[0] == 409  # no photo yet
    status, reply = http(base, "POST", f"{up}/face/0", raw=HOPPER, content_type="image/jpeg")
    assert status == 200 and reply["accepted"], reply
    status, reply = http(base, "POST", f"/api/participants/{code}/finish")  # one text of two is not enough
    assert status == 409 and "missing: text 2" in reply["detail"], reply
    wav = io.BytesIO()
    sf.write(wav, x, sr, format="WAV")
    assert http(base, "POST", f"{up}/voice/1", raw=wav.getvalue(), content_type="audio/wav")[0] == 200
    assert http(base, "POST", f"/api/participants/{code}/finish")[0] == 200
    kept = sorted(f.name for f in (server.study_dir / "recordings" / code).iterdir())
    assert kept == ["face-0.jpg", "voice-0.wav", "voice-1.wav"]  # the uploads themselves are not kept
    study_corpus(StudyCorpusOptions(server.study_dir, tmp_path / "rec", database=server.database))
    items = read_manifest(tmp_path / "rec")
    assert Counter(i.modality for i in items) == {"voice": 2, "face": 1}
    (ident,) = read_identities(tmp_path / "rec")
    assert ident["gender"] == "female" and ident["age"] == "31" and "recorded" not in ident
    face = next(i for i in items if i.modality == "face")
    assert face.gender == "female" and face.age_group == "30s" and face.box
    _, used = face_input_used((tmp_path / "rec" / face.path).read_bytes(), FaceImage(size=64), face.face_box())
    assert used.source == "client"
    # withdrawal deletes the rows and the files
    assert http(base, "DELETE", f"/api/participants/{code}")[1] == {"deleted": True}
    assert not (server.study_dir / "recordings" / code).exists()
    assert http(base, "POST", f"/api/participants/{code}/finish")[0] == 404
    store = store_of(server)
    try:
        assert store.recordings(code) == [] and store.participant(code) is None
    finally:
        store.close()


def test_a_killed_server_keeps_every_acknowledged_answer(tmp_path, corpus):
    server = LocalStudy(make_study(tmp_path / "study", corpus[0])).start()
    try:
        p = join(server.url)
        plan = http(server.url, "GET", f"/api/participants/{p['code']}/trials")[1]["trials"]
        for t in plan[:5]:
            assert play_and_answer(server.url, p, t["index"], 1) == 200
        server.kill()  # SIGKILL: no shutdown, no flush
        server.start()
        mine = http(server.url, "GET", f"/api/admin/export?code={p['code']}", token=TOKEN)[1]["trials"]
        assert [t["chosen"] for t in mine[:5]] == [1] * 5 and all(t["chosen"] is None for t in mine[5:])
        for t in plan[5:]:
            assert play_and_answer(server.url, p, t["index"], 0) == 200
        assert http(server.url, "POST", f"/api/participants/{p['code']}/finish")[0] == 200
    finally:
        server.stop()


def test_simulated_participants_give_back_their_accuracy(tmp_path, corpus, stack):
    """The analysis recovers the rate the participants were given, excludes the careless ones,
    and our model answers the very trials they saw (through the service's Match)."""
    study_dir = make_study(tmp_path / "study", corpus[0])
    study_simulate(StudySimulateOptions(study_dir, participants=80, skill="0.75", spread=0.05, careless=0, seed=4,
                                        no_progress=True))
    study = load_study(study_dir)
    store = Store(study.database_url)
    try:
        with pytest.raises(UsageError, match="left out: 80 simulated matchers"):
            analyze(study, store, tmp_path / "report")  # real participants only, by default: none yet
        result = analyze(study, store, tmp_path / "report", model_repo=stack.repo, sources=("simulated",))
        shown = {str(e): sum(len(ts) for ts in by.values())
                 for e, by in collect(study, store, ("simulated",))["included"].items()}
    finally:
        store.close()
    t1 = result["table1"]
    n = sum(r["n"] for r in t1.values())
    assert n + sum(result["excluded"].values()) == 80 and result["excluded"]
    pooled = sum(r["mean"] * r["n"] for r in t1.values()) / n
    assert 68 < pooled < 82, t1  # given 75%
    for e, r in t1.items():
        assert 55 < r["mean"] < 95 and (r["n"] < 6 or r["p"] < 0.05), (e, r)
        assert result["machine"][e]["trials"] == shown[e] >= 5 * r["n"]  # every task they answered
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Table 1" in report and "Tukey" in report and (tmp_path / "report" / "table1.png").stat().st_size > 5000
    # and chance gives chance
    study_dir2 = make_study(tmp_path / "chance", corpus[0])
    study_simulate(StudySimulateOptions(study_dir2, participants=24, skill="0.5", careless=0, seed=5, no_progress=True))
    store = Store(load_study(study_dir2).database_url)
    try:
        chance = analyze(load_study(study_dir2), store, tmp_path / "report2", sources=("simulated",))["table1"]
    finally:
        store.close()
    pooled = sum(r["mean"] * r["n"] for r in chance.values()) / sum(r["n"] for r in chance.values())
    assert 30 < pooled < 70, chance  # guessing: most fail the controls, the rest are at chance


def test_power_matches_the_normal_approximation():
    # n ~ ((z_.975 + z_.8) * sd / 5)^2 + a little for the t distribution
    for sd in (10.0, 13.0):
        approx = ((1.959964 + 0.841621) * sd / 5.0) ** 2
        assert approx < participants_needed(sd) < approx + 4


def test_pilots_and_simulated_runs_are_kept_apart_from_participants(server, tmp_path, capsys):
    """Each participant has a source; the balancing counts within a source, the progress and the
    analysis count real participants unless told otherwise, and say what they left out."""
    from facevoice.study.app import pilot_token

    base = server.url
    real = [http(base, "POST", "/api/participants", {"role": "match"})[1] for _ in range(4)]
    pilots = [http(base, "POST", "/api/participants", {"role": "match", "source": "pilot",
                                                       "pilot_token": pilot_token(TOKEN)}) for _ in range(2)]
    simulated = [http(base, "POST", "/api/participants", {"role": "match", "source": "simulated"}, token=TOKEN)
                 for _ in range(3)]
    assert [p["source"] for p in real] == ["participant"] * 4
    assert [s for s, _ in pilots + simulated] == [201] * 5
    # the balancing starts over per source: experiments 1, 2 for the pilots, 1, 2, 3 for the script
    assert [p["experiment"] for p in real] == [1, 2, 3, 4]
    assert [b["experiment"] for _, b in pilots] == [1, 2] and [b["experiment"] for _, b in simulated] == [1, 2, 3]
    progress = http(base, "GET", "/api/admin/progress", token=TOKEN)[1]
    assert progress["sources"] == {"participant": 4, "pilot": 2, "simulated": 3}
    assert sum(row["joined"] for row in progress["match"].values()) == 4
    assert http(base, "GET", "/api/admin/progress?source=pilot", token=TOKEN)[1]["match"]["1"]["joined"] == 1
    exported = {p["code"]: p["source"] for p in http(base, "GET", "/api/admin/export", token=TOKEN)[1]["participants"]}
    assert sorted(exported.values()) == ["participant"] * 4 + ["pilot"] * 2 + ["simulated"] * 3
    store = store_of(server)
    try:
        data = collect(load_study(server.study_dir), store)
        assert data["left_out"] == {"pilot": 2, "simulated": 3} and data["unfinished"] == 4
        assert collect(load_study(server.study_dir), store, ("pilot", "simulated"))["left_out"] == {"participant": 4}
    finally:
        store.close()


def test_a_database_from_before_sources_reads_as_participants(tmp_path):
    """A SQLite file made before the source column: opened, it gains the column, its rows real."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE participants (code TEXT PRIMARY KEY, role TEXT NOT NULL, experiment INTEGER, "
                 "seed BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL, consented_at DOUBLE PRECISION, "
                 "survey TEXT, finished_at DOUBLE PRECISION, excluded TEXT)")
    conn.execute("INSERT INTO participants VALUES ('old', 'match', 1, 7, 1.0, NULL, NULL, NULL, NULL)")
    conn.commit()
    conn.close()
    store = Store(f"sqlite:///{path}")
    try:
        assert [(p.code, p.source) for p in store.participants()] == [("old", "participant")]
        store.add_participant("new", "match", (1, 2), 8, "simulated")
        assert {p.code: p.source for p in store.participants()} == {"old": "participant", "new": "simulated"}
    finally:
        store.close()
    again = Store(f"sqlite:///{path}")  # opened again: the column is there, and not added twice
    try:
        assert [p.source for p in again.participants()] == ["participant", "simulated"]
    finally:
        again.close()


def test_small_n_gets_no_interval_and_none_leaves_0_to_100():
    """Table 1 at n = 2 gives t and p but no interval (a t interval there spans -182% to 294%);
    from MIN_N_INTERVAL on it gives one, inside 0-100%."""
    def people(scores):  # one participant per score: that many of 16 matching tasks right
        return {f"p{i}": [{"kind": "match", "chosen": int(j < k), "correct": 1} for j in range(16)]
                for i, k in enumerate(scores)}

    small = table1({1: people([16, 4])})[1]
    assert small["n"] == 2 and "t" in small and "ci" not in small
    big = table1({1: people([16, 16, 15, 16, 2][:MIN_N_INTERVAL])})[1]
    assert big["n"] == MIN_N_INTERVAL and 0.0 <= big["ci"][0] < big["mean"] < big["ci"][1] <= 100.0


def test_exclusions_keep_their_history_and_go_with_a_withdrawal(server):
    base = server.url
    p = join(base)
    for reason, by in (("failed the sound check", "rater A"), ("duplicate participant", "rater B")):
        assert http(base, "POST", "/api/admin/exclusions", {"code": p["code"], "reason": reason, "by": by},
                    token=TOKEN)[0] == 200
    assert http(base, "POST", "/api/admin/exclusions", {"code": p["code"], "reason": "x", "by": ""},
                token=TOKEN)[0] == 422
    assert http(base, "POST", "/api/admin/exclusions", {"code": "nosuchcode", "reason": "x"}, token=TOKEN)[0] == 404
    exported = http(base, "GET", f"/api/admin/export?code={p['code']}", token=TOKEN)[1]
    history = exported["exclusions"]
    assert [(h["by"], h["reason"]) for h in history] == [("rater A", "failed the sound check"),
                                                         ("rater B", "duplicate participant")]
    assert history[0]["at"] <= history[1]["at"]
    assert exported["participants"][0]["excluded"] == "duplicate participant"  # the latest counts
    plan = http(base, "GET", f"/api/participants/{p['code']}/trials")[1]["trials"]
    for t in plan:
        assert play_and_answer(base, p, t["index"], t["index"] % 2) == 200
    assert http(base, "POST", f"/api/participants/{p['code']}/finish")[0] == 200  # finishing keeps the exclusion
    after = http(base, "GET", f"/api/admin/export?code={p['code']}", token=TOKEN)[1]
    assert after["participants"][0]["excluded"] == "duplicate participant"
    assert http(base, "DELETE", f"/api/participants/{p['code']}")[0] == 200
    assert http(base, "GET", "/api/admin/export", token=TOKEN)[1]["exclusions"] == []


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_an_abandoned_join_stops_counting_for_the_balancing(tmp_path, request, database):
    """A matcher idle past joins.inactive_after_s frees its experiment's place; one who finished
    still counts, however long ago, and so does one who consented or answered within it."""
    if database == "postgresql":
        pg = request.getfixturevalue("postgres")
        pg.reset()
        url = pg.url
    else:
        url = f"sqlite:///{tmp_path / 'joins.sqlite'}"
    store = Store(url)
    try:
        assert [store.add_participant(c, "match", (1, 2, 3), 1, inactive_after_s=1800)[1] for c in "abc"] == [1, 2, 3]
        with store.transaction() as cur:  # b joined an hour ago and did nothing; c finished an hour ago
            cur.execute("UPDATE participants SET created_at = created_at - 3600 WHERE code IN ('b', 'c')")
            cur.execute("UPDATE participants SET finished_at = created_at + 60 WHERE code = 'c'")
        assert store.add_participant("d", "match", (1, 2, 3), 1, inactive_after_s=1800)[1] == 2  # b's place
        # one each now (a, d, c): c still counts, else e would go to 3
        assert store.add_participant("e", "match", (1, 2, 3), 1, inactive_after_s=1800)[1] == 1
        assert store.add_participant("f", "match", (1, 2, 3), 1)[1] == 3  # without a timeout b counts: 2, 2, 1
        assert store.add_participant("g", "match", (1, 2, 3), 1, inactive_after_s=1800)[1] == 2  # with it: 2, 1, 2
        # every one joined an hour ago: a consent (h) or an answer (i) within the timeout keeps one
        # counting; the rest are idle
        assert [store.add_participant(c, "match", (1, 2, 3), 1)[1] for c in "hi"] == [1, 3]  # 2, 3, 2 before
        store.consent("h")
        store.consent("i")
        store.save_survey("i", {"gender": "female"}, [SimpleNamespace(index=0, kind="match", query="q",
                                                                      options=("x", "y"), correct=0, repeat_of=None)])
        with store.transaction() as cur:
            cur.execute("UPDATE participants SET created_at = created_at - 3600, "
                        "consented_at = consented_at - 3600 WHERE code <> 'h'")
            cur.execute("UPDATE participants SET created_at = created_at - 3600 WHERE code = 'h'")
            cur.execute("UPDATE participants SET finished_at = NULL WHERE code = 'c'")
            cur.execute("UPDATE trials SET answered_at = ? WHERE code = 'i'", (time.time() - 60,))
        # counting h (3) and i (1) only: 2 has no one
        assert store.add_participant("j", "match", (1, 2, 3), 1, inactive_after_s=1800)[1] == 2
        assert store.add_participant("k", "match", (1, 2, 3), 1, inactive_after_s=1800)[1] == 1  # 1, 1, 1: ties low
    finally:
        store.close()
    with pytest.raises(UsageError, match="inactive_after_s"):
        bad = make_study(tmp_path / "bad", tmp_path)
        toml = (bad / "study.toml").read_text()
        (bad / "study.toml").write_text(toml.replace("per_minute =", "inactive_after_s = 0\nper_minute ="))
        load_study(bad)
