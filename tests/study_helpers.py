"""Shared by the study tests: a study directory on the session's synthetic corpus, an HTTP
client that returns (status, body) instead of raising."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

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
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, payload, ctype = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, payload, ctype = e.code, e.read(), e.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        return status, json.loads(payload)
    return status, payload


def answers() -> dict:
    return {"gender": "female", "ethnicity": "Other", "age": 31, "first_language": "English", "recorded": "no"}
