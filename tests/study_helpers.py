"""Shared by the study tests: a study directory on the session's synthetic corpus, an HTTP
client that returns (status, body) instead of raising."""

from __future__ import annotations

from pathlib import Path

from facevoice.study.simulate import Client

STUDY_TOML = """title = "test study"
corpus = "{corpus}"
splits = ["train", "val", "test"]
experiments = [1, 2, 3, 4]
seed = 3
completion_code = "TEST-CODE"
[recording]
min_speech_seconds = 1.0
max_upload_bytes = 2000000
"""


def make_study(directory: Path, corpus: Path, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "study.toml").write_text(STUDY_TOML.format(corpus=corpus) + extra)
    return directory


def http(base: str, method: str, path: str, body=None, raw: bytes | None = None,
         content_type: str = "application/json", token: str | None = None) -> tuple[int, dict | bytes]:
    """(status, JSON or bytes) of any answer, errors included."""
    return Client(base, token).send(method, path, body, token is not None, raw, content_type)


def answers() -> dict:
    return {"gender": "female", "ethnicity": "Other", "age": 31, "first_language": "English", "recorded": "no"}
