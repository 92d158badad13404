"""`facevoice study serve --study STUDY_DIR [--database URL | --database-file FILE] [--pilot]`: the
study's web application.

Loopback by default. The admin token comes from --admin-token-file, or
$FACEVOICE_STUDY_ADMIN_TOKEN, or is made once and kept in STUDY_DIR/admin-token (0600)."""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from facevoice.service.errors import UsageError
from facevoice.study.design import pool_summary

TASKS = {"record": "recording", "match": "matching"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", type=Path, required=True, help="the study directory (with study.toml)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--database", help="sqlite:///PATH (default: STUDY_DIR/study.sqlite3) or postgresql://...")
    g.add_argument("--database-file", type=Path,
                   help="a file holding the database URL (a secret: its password stays off the command line)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    p.add_argument("--port", type=int, default=8600)
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


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from facevoice.study.app import create_app, pilot_token
    from facevoice.study.store import opened

    database = args.database
    if args.database_file is not None:
        try:
            database = args.database_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise UsageError(f"--database-file {args.database_file}: {e.strerror}") from e
    with opened(args.study, database) as (study, store):
        missing = study.consent.missing()
        if missing and not args.pilot:
            raise UsageError(f"{study.directory / 'study.toml'}: [consent] lacks {', '.join(missing)}; real "
                             "participants are not asked without them (--pilot serves the preview link only)")
        token, source = admin_token(study.directory, args.admin_token_file)
        app = create_app(study, store, token, pilot_only=args.pilot)
        people = app.state.people
        where = "PostgreSQL" if store.kind == "postgresql" else store.url
        print(f"study {study.title!r}: {len(people)} stimulus people from {study.corpus}")
        for e, counts in pool_summary(people, app.state.pairs).items():
            print(f"  experiment {e}: {counts['male']} pairs of men, {counts['female']} of women")
        print(f"database: {where}; admin token in {source}")
        if args.pilot:
            print("pilot only: real participants' joins are refused until the study is served without --pilot")
        else:
            links = " and ".join(f"http://{args.host}:{args.port}/{role} ({TASKS[role]})" for role in study.roles)
            print(f"participants: {links}" + (f", opened from {study.platform.name} with "
                                               f"{', '.join(study.platform.params)}"
                                               if study.platform.name != "none" else ""))
        print(f"withdrawal page: http://{args.host}:{args.port}/withdraw; outcomes: "
              + ", ".join(f"{name} {o.code}" for name, o in study.outcomes.items()))
        print("pilot (preview) links, left out of the analysis by default: "
              + " and ".join(f"/{role}?pilot={pilot_token(token)}" for role in study.roles))
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
