"""Shared by the study tests: a study directory on the session's synthetic corpus, an HTTP
client that returns (status, body) instead of raising."""

from __future__ import annotations

import json
from pathlib import Path

from facevoice.study.simulate import Client

STUDY_TOML = """title = "test study"
corpus = "{corpus}"
splits = ["train", "val", "test"]
experiments = [1, 2, 3, 4]
roles = {roles}
seed = 3
completion_code = "TEST-CODE"
[consent]
version = "test-1"
researcher = "Dr. T. Tester"
institution = "The Test Institute"
ethics_approval = "TEST-IRB-1"
contact = "tester@example.org"
payment = "none (a test)"
data_kept = "your answers"
retention = "until the test ends"
withdrawal = "at any time, on the withdrawal page"
[recording]
min_speech_seconds = 1.0
max_upload_bytes = {upload_bytes}
video = {video}
[stimuli]
clip_seconds = {clip_seconds}
[listening]
enforce = {enforce}
[joins]
per_minute = {per_minute}
burst = {burst}
"""


# a study on Prolific, each ending with its own code (the redirects are Prolific's, from the name)
PROLIFIC = """[platform]
name = "prolific"
[outcomes.completed]
code = "DONE-1"
[outcomes.failed_checks]
code = "CHECKS-2"
[outcomes.screened_out]
code = "SCREEN-3"
[outcomes.declined]
code = "NOCONSENT-4"
[outcomes.no_device]
code = "NODEVICE-5"
"""


def make_study(directory: Path, corpus: Path, extra: str = "", *, clip_seconds: float = 1.0,
               enforce: bool = False, per_minute: float = 6000, burst: int = 1000,
               roles: tuple[str, ...] = ("record", "match"), video: bool = False,
               upload_bytes: int = 2_000_000) -> Path:
    """A study directory on `corpus`; `extra` is more TOML (tables the template lacks). Listening
    is not enforced unless asked, so the API tests need not wait out each clip."""
    directory.mkdir(parents=True, exist_ok=True)
    text = STUDY_TOML.format(corpus=corpus, clip_seconds=clip_seconds, enforce=str(enforce).lower(),
                             per_minute=per_minute, burst=burst, roles=json.dumps(list(roles)),
                             video=str(video).lower(), upload_bytes=upload_bytes)
    (directory / "study.toml").write_text(text + extra)
    return directory


def http(base: str, method: str, path: str, body=None, raw: bytes | None = None,
         content_type: str = "application/json", token: str | None = None) -> tuple[int, dict | bytes]:
    """(status, JSON or bytes) of any answer, errors included."""
    return Client(base, token).send(method, path, body, token is not None, raw, content_type)


def answers() -> dict:
    return {"gender": "female", "ethnicity": "Other", "age": 31, "first_language": "English", "recorded": "no"}
