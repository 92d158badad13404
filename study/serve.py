"""`facevoice study serve --study STUDY_DIR [--database URL | --database-file FILE] [--pilot]`: the
study's web application.

Loopback by default. The admin token comes from --admin-token-file, or
$FACEVOICE_STUDY_ADMIN_TOKEN, or is made once and kept in STUDY_DIR/admin-token (0600).
`study_serve(StudyServeOptions(...))` serves until uvicorn stops (SIGINT or SIGTERM)."""

from __future__ import annotations

import argparse
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from facevoice.cli import options
from facevoice.service.errors import UsageError
from facevoice.study.design import pool_summary

TASKS = {"record": "recording", "match": "matching"}


@dataclass(frozen=True)
class StudyServeOptions:
    study: Path  # the study directory (with study.toml)
    database: str | None = None  # sqlite:///PATH (default: STUDY_DIR/study.sqlite3) or postgresql://...
    database_file: Path | None = None  # a file holding the database URL
    host: str = "127.0.0.1"
    port: int = 8600
    admin_token_file: Path | None = None
    pilot: bool = False  # the preview (pilot) link only


@dataclass(frozen=True)
class StudyServeResult:
    url: str  # where it served
    pilot: bool
    seconds: float  # from start-up to the server's stop

    def summary(self) -> str:
        return f"study serve: stopped after {self.seconds:.0f} s serving {self.url}" + (" (pilot only)" * self.pilot)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", type=Path, required=True, help="the study directory (with study.toml)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--database", help="sqlite:///PATH (default: STUDY_DIR/study.sqlite3) or postgresql://...")
    g.add_argument("--database-file", type=Path,
                   help="a file holding the database URL (a secret: its password stays off the command line)")
    p.add_argument("--host", default=StudyServeOptions.host, help="listen address (default loopback)")
    p.add_argument("--port", type=int, default=StudyServeOptions.port)
    p.add_argument("--admin-token-file", type=Path, help="a file holding the admin bearer token")
    p.add_argument("--pilot", action="store_true",
                   help="serve the preview (pilot) link only: for trying a study whose consent page is not complete")


def admin_token(study_dir: Path, token_file: Path | None) -> tuple[str, str]:
    """(token, where it came from)."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise UsageError(f"--admin-token-file {token_file}: {e.strerror}") from e
        if len(token) < 16:
            raise UsageError(f"--admin-token-file {token_file}: a token needs at least 16 characters")
        return token, str(token_file)
    if os.environ.get("FACEVOICE_STUDY_ADMIN_TOKEN"):
        token = os.environ["FACEVOICE_STUDY_ADMIN_TOKEN"].strip()
        if len(token) < 16:  # the pilot link's token is derived from it: a short one could be guessed back
            raise UsageError("$FACEVOICE_STUDY_ADMIN_TOKEN: a token needs at least 16 characters")
        return token, "$FACEVOICE_STUDY_ADMIN_TOKEN"
    path = study_dir / "admin-token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    return path.read_text(encoding="utf-8").strip(), str(path)


def database_url(database: str | None, database_file: Path | None) -> str | None:
    """--database, or the URL --database-file holds (None: the study directory's SQLite)."""
    if database_file is None:
        return database
    try:
        return database_file.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise UsageError(f"--database-file {database_file}: {e.strerror}") from e


def banner(study, store, app, token_source: str, token: str, opts: StudyServeOptions) -> str:
    """What `study serve` prints once the study is loaded: its stimuli, database, links and outcomes."""
    from facevoice.study.app import pilot_token

    where = "PostgreSQL" if store.kind == "postgresql" else store.url
    lines = [f"study {study.title!r}: {len(app.state.people)} stimulus people from {study.corpus}"]
    lines += [f"  experiment {e}: {counts['male']} pairs of men, {counts['female']} of women"
              for e, counts in pool_summary(app.state.people, app.state.pairs).items()]
    lines.append(f"database: {where}; admin token in {token_source}")
    if opts.pilot:
        lines.append("pilot only: real participants' joins are refused until the study is served without --pilot")
    else:
        links = " and ".join(f"http://{opts.host}:{opts.port}/{role} ({TASKS[role]})" for role in study.roles)
        lines.append(f"participants: {links}" + (f", opened from {study.platform.name} with "
                                                  f"{', '.join(study.platform.params)}"
                                                  if study.platform.name != "none" else ""))
    lines.append(f"withdrawal page: http://{opts.host}:{opts.port}/withdraw; outcomes: "
                 + ", ".join(f"{name} {o.code}" for name, o in study.outcomes.items()))
    lines.append("pilot (preview) links, left out of the analysis by default: "
                 + " and ".join(f"/{role}?pilot={pilot_token(token)}" for role in study.roles))
    return "\n".join(lines)


def study_serve(opts: StudyServeOptions) -> StudyServeResult:
    """`study serve`: the study's app under uvicorn until it stops. Prints its banner once the
    study is loaded (the stimuli built), before it serves."""
    import uvicorn

    from facevoice.study.app import create_app
    from facevoice.study.store import opened

    database = database_url(opts.database, opts.database_file)
    with opened(opts.study, database) as (study, store):
        missing = study.consent.missing()
        if missing and not opts.pilot:
            raise UsageError(f"{study.directory / 'study.toml'}: [consent] lacks {', '.join(missing)}; real "
                             "participants are not asked without them (--pilot serves the preview link only)")
        token, source = admin_token(study.directory, opts.admin_token_file)
        app = create_app(study, store, token, pilot_only=opts.pilot)
        print(banner(study, store, app, source, token, opts), flush=True)
        t0 = time.monotonic()
        uvicorn.run(app, host=opts.host, port=opts.port, log_level="warning", access_log=False)
    return StudyServeResult(f"http://{opts.host}:{opts.port}", opts.pilot, time.monotonic() - t0)


def run(args: argparse.Namespace) -> int:
    print(study_serve(options(StudyServeOptions, args)).summary())
    return 0
