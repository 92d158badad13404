"""The study's database: SQLite in WAL mode by default (STUDY_DIR/study.sqlite3), PostgreSQL for
a deployment with several replicas. One schema and the same SQL for both (`?` placeholders are
turned into psycopg's `%s`). Every write is its own transaction, committed before the request
is answered, so a closed tab or a killed server loses at most the answer in flight.

Participants are known only by a random code. Nothing here holds a name, an e-mail or an IP
address; media lie in files under STUDY_DIR/recordings, named by the code, and go with it."""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from facevoice.service.errors import UsageError
from facevoice.study.errors import Conflict  # a write that would change something already stored: 409

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS participants (
        code TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        experiment INTEGER,
        seed BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        consented_at DOUBLE PRECISION,
        survey TEXT,
        finished_at DOUBLE PRECISION,
        excluded TEXT,
        source TEXT NOT NULL DEFAULT 'participant')""",
    """CREATE TABLE IF NOT EXISTS trials (
        code TEXT NOT NULL REFERENCES participants(code) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        kind TEXT NOT NULL,
        query TEXT NOT NULL,
        option0 TEXT NOT NULL,
        option1 TEXT NOT NULL,
        correct INTEGER NOT NULL,
        repeat_of INTEGER,
        played INTEGER NOT NULL DEFAULT 0,
        chosen INTEGER,
        rt_ms DOUBLE PRECISION,
        answered_at DOUBLE PRECISION,
        PRIMARY KEY (code, idx))""",
    """CREATE TABLE IF NOT EXISTS recordings (
        code TEXT NOT NULL REFERENCES participants(code) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        script INTEGER NOT NULL,
        path TEXT NOT NULL,
        box TEXT NOT NULL DEFAULT '',
        seconds DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (code, kind, script))""",
    # every exclusion as it was made: who, when, why (participants.excluded holds the latest)
    # a withdrawn participant's platform id, as a hash only: `[platform] once` still holds after
    # the withdrawal deleted everything else
    """CREATE TABLE IF NOT EXISTS withdrawn_ids (
        id_hash TEXT PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS exclusions (
        code TEXT NOT NULL REFERENCES participants(code) ON DELETE CASCADE,
        at DOUBLE PRECISION NOT NULL,
        by_whom TEXT NOT NULL,
        reason TEXT NOT NULL)""",
)
# columns added after the first release: a database made before gets them (NULL in old rows,
# `source` 'participant', as those rows were counted then)
ADDED_COLUMNS = (
    ("participants", "source", "TEXT NOT NULL DEFAULT 'participant'"),
    ("participants", "platform", "TEXT"),  # prolific, mturk, generic
    ("participants", "platform_id", "TEXT"),  # the platform's participant id (PROLIFIC_PID, workerId, ...)
    ("participants", "platform_ids", "TEXT"),  # JSON: every id the platform handed over
    ("participants", "outcome", "TEXT"),  # completed, screened_out, failed_checks (see config.OUTCOMES)
    ("participants", "client", "TEXT"),  # JSON: browser, screen, device class (no IP address)
    ("participants", "consent_version", "TEXT"),
    ("participants", "consent_hash", "TEXT"),  # sha256 of the consent text they agreed to
    ("participants", "sound_check", "TEXT"),  # JSON: the beeps and answers; the headphone check's
    ("trials", "served_at", "DOUBLE PRECISION"),  # the trial's stimuli first sent
    ("trials", "played_at", "DOUBLE PRECISION"),  # its last recording played to the end
    ("trials", "served", "INTEGER NOT NULL DEFAULT 0"),  # which slots' stimuli were sent (bits)
)
INDEXES = ("CREATE INDEX IF NOT EXISTS exclusions_code ON exclusions (code, at)",
           "CREATE INDEX IF NOT EXISTS participants_platform ON participants (platform_id, role)")
# who a participant is: a real one, a researcher trying the pilot (preview) link, or a script
SOURCES = ("participant", "pilot", "simulated")
# A participant types their code on the withdrawal page and a researcher reads it in a spreadsheet:
# letters and digits only (no 0/O, 1/l/I to misread), so no code starts like a formula and the
# CSV export never has to quote one. 22 characters of 57 carry 128 bits.
CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
CODE_LENGTH = 22

TRIAL_COLUMNS = ("code", "idx", "kind", "query", "option0", "option1", "correct", "repeat_of", "played", "chosen",
                 "rt_ms", "answered_at", "served_at", "played_at", "served")
PARTICIPANT_COLUMNS = ("code", "role", "experiment", "seed", "created_at", "consented_at", "survey", "finished_at",
                       "excluded", "source", "platform", "platform_id", "platform_ids", "outcome", "client",
                       "consent_version", "consent_hash", "sound_check")
JSON_COLUMNS = ("survey", "platform_ids", "client", "sound_check")


def platform_name(platform: str | None) -> str:
    """How a participant knows their recruitment platform."""
    return {"prolific": "Prolific", "mturk": "MTurk"}.get(platform or "", "participant")


def new_code() -> str:
    """A fresh participant code (CODE_ALPHABET, CODE_LENGTH): unguessable and safe to type."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


class TookPart(Conflict):
    """This platform id has taken part already (and `[platform] once` is set)."""


@dataclass
class Participant:
    code: str
    role: str
    experiment: int | None
    seed: int
    created_at: float
    consented_at: float | None
    survey: dict | None
    finished_at: float | None
    excluded: str | None
    source: str = "participant"
    platform: str | None = None
    platform_id: str | None = None
    platform_ids: dict | None = None
    outcome: str | None = None
    client: dict | None = None
    consent_version: str | None = None
    consent_hash: str | None = None
    sound_check: dict | None = None


class Store:
    """A connection per thread (the ASGI server's worker threads), opened on first use."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite:///"):
            self.kind, self._path = "sqlite", url[len("sqlite:///"):]
        elif url.startswith(("postgresql://", "postgres://")):
            self.kind = "postgresql"
            try:
                import psycopg  # noqa: F401
            except ImportError as e:
                raise UsageError("a PostgreSQL database needs psycopg (pip install 'psycopg[binary]')") from e
        else:
            raise UsageError(f"database {url!r}: expected sqlite:///PATH or postgresql://...")
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()
        with self.transaction() as cur:
            if self.kind == "postgresql":  # replicas starting together create and migrate one at a time
                cur.execute("SELECT pg_advisory_xact_lock(8600)")
            for statement in SCHEMA:
                cur.execute(statement)
            self._migrate(cur)
            for statement in INDEXES:
                cur.execute(statement)

    def _migrate(self, cur) -> None:
        """Adds the columns a database made by an older release lacks (ADDED_COLUMNS)."""
        for table in {t for t, _, _ in ADDED_COLUMNS}:
            if self.kind == "postgresql":
                cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                            "AND table_schema = current_schema()", (table,))
                have = {row[0] for row in cur.fetchall()}
            else:
                cur.execute(f"PRAGMA table_info({table})")
                have = {row[1] for row in cur.fetchall()}
            for t, column, decl in ADDED_COLUMNS:
                if t == table and column not in have:
                    cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def _connect(self):
        if self.kind == "sqlite":
            conn = sqlite3.connect(self._path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # an answered request survives power loss
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA secure_delete=ON")  # a withdrawal's rows are overwritten, not just unlinked
        else:
            import psycopg

            conn = psycopg.connect(self.url, autocommit=True)
        with self._lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[_Cursor]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        if self.kind == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _Cursor(conn.cursor(), "?")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        else:
            with conn.transaction(), conn.cursor() as cur:
                yield _Cursor(cur, "%s")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(Exception):  # closing what may already be gone
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    # --- participants -------------------------------------------------------------------

    def add_participant(self, code: str, role: str, experiments: tuple[int, ...], seed: int,
                        source: str = "participant", inactive_after_s: float | None = None, *,
                        platform: str | None = None, platform_ids: dict | None = None, once: bool = True,
                        client: dict | None = None) -> tuple[str, int | None, bool]:
        """A new participant -> (code, experiment, resumed). A matcher gets the experiment with the
        fewest matchers of its source so far (the server balances them, ties to the lowest
        number), so pilots and simulated runs neither skew the real participants' balance nor are
        skewed by it. With `inactive_after_s`, a matcher who has not finished and has done nothing
        for that long (no join, consent or answer) no longer counts: an abandoned join frees its
        place.

        With a platform id (the first of `platform_ids`) and `once`: a second join of the same id
        and role resumes the first participant while unfinished (resumed True, the old code), and
        raises TookPart once they have finished."""
        if source not in SOURCES:
            raise ValueError(f"source {source!r}: expected one of {', '.join(SOURCES)}")
        platform_id = next(iter((platform_ids or {}).values()), None)
        with self.transaction() as cur:
            if self.kind == "postgresql" and (role == "match" or platform_id):
                # replicas: one join counts (and checks the platform id) at a time, as BEGIN IMMEDIATE does
                cur.execute("LOCK TABLE participants IN SHARE ROW EXCLUSIVE MODE")
            if platform_id and once:
                cur.execute("SELECT 1 FROM withdrawn_ids WHERE id_hash = ?", (id_hash(platform, role, platform_id),))
                if cur.fetchone() is not None:
                    raise TookPart(f"This {platform_name(platform)} ID has taken part in this study already (and "
                                   "withdrawn, declined or left it)")
                cur.execute("SELECT code, experiment, finished_at, platform_ids FROM participants "
                            "WHERE platform_id = ? AND role = ? AND platform = ? ORDER BY created_at LIMIT 1",
                            (platform_id, role, platform))
                row = cur.fetchone()
                if row is not None:
                    # resumed only by the same session's link (all its ids), not by whoever knows the id;
                    # a finished one resumes to its ending (its code again, after a closed tab)
                    if json.loads(row[3] or "{}") == platform_ids:
                        return row[0], row[1], True
                    if row[2] is not None:
                        raise TookPart(f"This {platform_name(platform)} ID has taken part in this study already")
                    raise TookPart(f"This {platform_name(platform)} ID has a participation in progress in another "
                                   "session: go back to that tab, or open the study again from "
                                   f"{platform_name(platform)}")
            experiment = None
            if role == "match":
                cutoff = -1.0 if inactive_after_s is None else time.time() - inactive_after_s
                cur.execute("SELECT experiment, COUNT(*) FROM participants p WHERE role = 'match' AND source = ? "
                            "AND (finished_at IS NOT NULL OR created_at > ? OR consented_at > ? OR EXISTS "
                            "(SELECT 1 FROM trials t WHERE t.code = p.code AND t.answered_at > ?)) "
                            "GROUP BY experiment", (source, cutoff, cutoff, cutoff))
                counts = dict.fromkeys(experiments, 0) | {e: n for e, n in cur.fetchall() if e in experiments}
                experiment = min(experiments, key=lambda e: (counts[e], e))
            cur.execute("INSERT INTO participants (code, role, experiment, seed, created_at, source, platform, "
                        "platform_id, platform_ids, client) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (code, role, experiment, seed, time.time(), source, platform if platform_id else None,
                         platform_id, json.dumps(platform_ids, sort_keys=True) if platform_ids else None,
                         json.dumps(client, sort_keys=True) if client else None))
        return code, experiment, False

    def participant(self, code: str) -> Participant | None:
        found = self._participants("WHERE code = ?", (code,))
        return found[0] if found else None

    def participants(self) -> list[Participant]:
        return self._participants("ORDER BY created_at, code", ())

    def _participants(self, clause: str, args: tuple) -> list[Participant]:
        with self.transaction() as cur:
            cur.execute(f"SELECT {', '.join(PARTICIPANT_COLUMNS)} FROM participants {clause}", args)
            rows = cur.fetchall()
        out = []
        for row in rows:
            values = dict(zip(PARTICIPANT_COLUMNS, row, strict=True))
            for c in JSON_COLUMNS:
                values[c] = json.loads(values[c]) if values[c] else None
            out.append(Participant(**values))
        return out

    def consent(self, code: str, version: str = "", digest: str = "") -> None:
        """Consent given, with the version and hash of the text agreed to."""
        with self.transaction() as cur:
            cur.execute("UPDATE participants SET consented_at = ?, consent_version = ?, consent_hash = ? "
                        "WHERE code = ? AND consented_at IS NULL", (time.time(), version, digest, code))
            if cur.rowcount != 1:
                raise Conflict("consent was already given")

    def set_sound_check(self, code: str, state: dict) -> None:
        with self.transaction() as cur:
            cur.execute("UPDATE participants SET sound_check = ? WHERE code = ? AND finished_at IS NULL",
                        (json.dumps(state, sort_keys=True), code))

    def save_survey(self, code: str, answers: dict, trials: list | None) -> None:
        """The questionnaire, and for a matcher the trials they will see, in one transaction."""
        with self.transaction() as cur:
            cur.execute("UPDATE participants SET survey = ? "
                        "WHERE code = ? AND survey IS NULL AND consented_at IS NOT NULL",
                        (json.dumps(answers, sort_keys=True), code))
            if cur.rowcount != 1:
                raise Conflict("the questionnaire was already answered")
            for t in trials or ():
                cur.execute("INSERT INTO trials (code, idx, kind, query, option0, option1, correct, repeat_of) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (code, t.index, t.kind, t.query, t.options[0], t.options[1], t.correct, t.repeat_of))

    def finish(self, code: str, excluded: str | None, outcome: str = "completed") -> None:
        """The end of the study, with its outcome; `excluded`, the controls' verdict, is kept in
        the history too."""
        with self.transaction() as cur:
            now = time.time()
            # a researcher's exclusion made while they took part stands; the controls' verdict adds to it
            cur.execute("UPDATE participants SET finished_at = ?, excluded = COALESCE(excluded, ?), outcome = ? "
                        "WHERE code = ? AND finished_at IS NULL", (now, excluded, outcome, code))
            if cur.rowcount != 1:
                raise Conflict("this code has already finished the study")
            if excluded:
                cur.execute("INSERT INTO exclusions (code, at, by_whom, reason) VALUES (?, ?, ?, ?)",
                            (code, now, "the study's controls", excluded))

    def exclude(self, code: str, reason: str, by_whom: str = "admin") -> bool:
        """A researcher's exclusion: the participant's current reason, and one more row of history
        (an earlier reason is kept, not overwritten)."""
        with self.transaction() as cur:
            cur.execute("UPDATE participants SET excluded = ? WHERE code = ?", (reason, code))
            if cur.rowcount != 1:
                return False
            cur.execute("INSERT INTO exclusions (code, at, by_whom, reason) VALUES (?, ?, ?, ?)",
                        (code, time.time(), by_whom, reason))
            return True

    def exclusions(self, code: str | None = None) -> list[dict]:
        """The exclusion history, oldest first."""
        with self.transaction() as cur:
            where, args = ("WHERE code = ?", (code,)) if code else ("", ())
            cur.execute(f"SELECT code, at, by_whom, reason FROM exclusions {where} ORDER BY at, code, reason", args)
            rows = cur.fetchall()
        return [{"code": c, "at": at, "by": by, "reason": why} for c, at, by, why in rows]

    def delete(self, code: str, keep_id: bool = False) -> bool:
        """Withdrawal: the participant, their trials, exclusions and recordings' rows. With
        `keep_id`, a hash of their platform id stays, so the id cannot take part again."""
        with self.transaction() as cur:
            if keep_id:
                cur.execute("SELECT platform, role, platform_id FROM participants WHERE code = ?", (code,))
                row = cur.fetchone()
                if row is not None and row[2]:
                    cur.execute("DELETE FROM withdrawn_ids WHERE id_hash = ?", (id_hash(*row),))
                    cur.execute("INSERT INTO withdrawn_ids (id_hash, at) VALUES (?, ?)", (id_hash(*row), time.time()))
            cur.execute("DELETE FROM recordings WHERE code = ?", (code,))
            cur.execute("DELETE FROM exclusions WHERE code = ?", (code,))
            cur.execute("DELETE FROM trials WHERE code = ?", (code,))
            cur.execute("DELETE FROM participants WHERE code = ?", (code,))
            return cur.rowcount == 1

    # --- trials -------------------------------------------------------------------------

    def trials(self, code: str | None = None) -> list[dict]:
        with self.transaction() as cur:
            where, args = ("WHERE code = ?", (code,)) if code else ("", ())
            cur.execute(f"SELECT {', '.join(TRIAL_COLUMNS)} FROM trials {where} ORDER BY code, idx", args)
            return [dict(zip(TRIAL_COLUMNS, r, strict=True)) for r in cur.fetchall()]

    def served(self, code: str, idx: int, slot_bit: int) -> None:
        """A slot's stimulus was sent now; the first one sent starts the listening clock."""
        with self.transaction() as cur:
            cur.execute("UPDATE trials SET served_at = COALESCE(served_at, ?), served = served | ? "
                        "WHERE code = ? AND idx = ?", (time.time(), slot_bit, code, idx))

    def played(self, code: str, idx: int, slot_bit: int, seen: int) -> bool:
        """Marks the slot played, only if the trial's played bits are still `seen` (what the
        listening check was made on): two reports at once cannot both pass on one clip's time."""
        with self.transaction() as cur:
            cur.execute("UPDATE trials SET played = played | ?, played_at = ? WHERE code = ? AND idx = ? "
                        "AND chosen IS NULL AND played = ?", (slot_bit, time.time(), code, idx, seen))
            return cur.rowcount == 1

    def answer(self, code: str, idx: int, chosen: int, rt_ms: float | None, needs_played: int) -> bool:
        """Stores the answer once -> True; the same answer again (a retry after a lost
        connection) -> False, changing nothing. Conflict when the trial was answered otherwise
        already, or its recording(s) were not played (the page opens the choices only after)."""
        with self.transaction() as cur:
            cur.execute("UPDATE trials SET chosen = ?, rt_ms = ?, answered_at = ? WHERE code = ? AND idx = ? "
                        "AND chosen IS NULL AND (played & ?) = ?",
                        (chosen, rt_ms, time.time(), code, idx, needs_played, needs_played))
            if cur.rowcount == 1:
                return True
            cur.execute("SELECT chosen FROM trials WHERE code = ? AND idx = ?", (code, idx))
            row = cur.fetchone()
        if row is None:
            raise KeyError(idx)
        if row[0] == chosen:
            return False
        raise Conflict("this trial was already answered" if row[0] is not None else "play the recording first")

    # --- recordings ---------------------------------------------------------------------

    def save_recording(self, code: str, kind: str, script: int, path: str, box: str, seconds: float | None) -> None:
        """A recording's row; a retake replaces the earlier take's."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM recordings WHERE code = ? AND kind = ? AND script = ?", (code, kind, script))
            cur.execute("INSERT INTO recordings (code, kind, script, path, box, seconds, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", (code, kind, script, path, box, seconds, time.time()))

    def recordings(self, code: str | None = None) -> list[dict]:
        cols = ("code", "kind", "script", "path", "box", "seconds")
        with self.transaction() as cur:
            where, args = ("WHERE code = ?", (code,)) if code else ("", ())
            cur.execute(f"SELECT {', '.join(cols)} FROM recordings {where} ORDER BY code, kind, script", args)
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def id_hash(platform: str, role: str, platform_id: str) -> str:
    """What is kept of a withdrawn participant's platform id: a hash, never the id."""
    import hashlib

    return hashlib.sha256(f"{platform}\0{role}\0{platform_id}".encode()).hexdigest()


@contextmanager
def opened(study_dir, database: str | None = None) -> Iterator[tuple]:
    """(the Study, its Store) for a command, the store closed afterwards."""
    from facevoice.study.config import load_study

    study = load_study(study_dir)
    store = Store(database or study.database_url)
    try:
        yield study, store
    finally:
        store.close()


class _Cursor:
    """The DB-API cursor with one placeholder style for both databases."""

    def __init__(self, cur, mark: str):
        self._cur, self._mark = cur, mark

    def execute(self, sql: str, args: tuple = ()) -> None:
        self._cur.execute(sql if self._mark == "?" else sql.replace("?", "%s"), args)

    def fetchone(self):
        return self._cur.fetchone()

    def fetchall(self):
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount
