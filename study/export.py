"""`facevoice study export --study STUDY_DIR --out DIR [--database URL]`: the study's tidy data.

- trials.csv / trials.json: one row per trial: the participant, source, platform id, experiment
  and direction; the trial's kind, its people (query, options, the correct option) and the
  stimulus files with their lengths; when it was served, when its last recording ended, when it
  was answered; the reaction time from the end of playback (the page's, and the server's from
  its own clock); the choice and whether it was right.
- participants.csv / participants.json: one row per participant: source, platform ids, outcome,
  the questionnaire (one column per question), the consent text's version and sha256, browser,
  screen and device class, the sound check, and the exclusions with their history.
- exclusions.csv: every exclusion as it was made (who, when, why).
- manifest.json (ExportManifest, its one reader and writer): its format version, the app version,
  study.toml's sha256, the consent's version and hash, when and from which database it was
  exported, the counts, and each file's sha256.

No media and no recordings' paths are exported; `study analyze --export DIR` reads this."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from facevoice.cli import options
from facevoice.service.checksums import ChecksumMismatch
from facevoice.service.errors import FormatError, UsageError
from facevoice.study.config import EXPERIMENTS, Study
from facevoice.study.store import Participant, Store, opened

TRIAL_FIELDS = ("participant", "source", "platform_id", "experiment", "direction", "trial", "kind", "query",
                "option0", "option1", "correct", "repeat_of", "query_stimulus", "option0_stimulus",
                "option1_stimulus", "clip_seconds", "served_at", "played_at", "answered_at", "rt_ms",
                "server_rt_ms", "choice", "right", "participant_excluded")
PARTICIPANT_FIELDS = ("participant", "role", "source", "experiment", "direction", "platform", "platform_id",
                      "platform_ids", "created_at", "consented_at", "finished_at", "outcome", "excluded",
                      "exclusion_history", "consent_version", "consent_hash", "device", "screen", "browser",
                      "sound_check_tries", "sound_check_passed")
EXPORT_FORMAT = 1  # the layout of an export's files; a reader refuses another
MANIFEST = "manifest.json"
DATA_FILES = ("trials.csv", "trials.json", "participants.csv", "participants.json", "exclusions.csv")
CSV_NOTE = "free text starting with = + - @ is prefixed with ' (no spreadsheet formulas); the JSON is as stored"


@dataclass(frozen=True, kw_only=True)
class ExportManifest:
    """An export's manifest.json, read and written here only."""

    format_version: int = EXPORT_FORMAT
    app: str = "facevoice"
    app_version: str
    study: str  # the study's title
    csv: str = CSV_NOTE
    study_toml_sha256: str
    consent_version: str
    consent_sha256: str
    database: str  # sqlite or postgresql
    exported_at: str  # UTC, ISO 8601
    participants: int
    trials: int
    exclusions: int
    by_source: dict[str, int] = field(default_factory=dict)  # participants per source
    files: dict[str, str] = field(default_factory=dict)  # each file of DATA_FILES -> its sha256

    def write(self, directory: Path) -> None:
        (Path(directory) / MANIFEST).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def read(cls, directory: Path) -> ExportManifest:
        """UsageError when `directory` holds no export; FormatError for a manifest of another format
        (an export written before the format version was recorded is format 1)."""
        path = Path(directory) / MANIFEST
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:  # pointed at a directory that holds no export
            raise UsageError(f"{directory}: not a study export ({e.strerror}: {path})") from e
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}: not a study export's manifest ({e})") from e
        if not isinstance(raw, dict):
            raise FormatError(f"{path}: not a study export's manifest (a JSON object)")
        found = raw.get("format_version", 1)
        if found != EXPORT_FORMAT:
            raise FormatError(f"{path}: export format {found!r}; this facevoice reads format {EXPORT_FORMAT}")
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in names} | {"format_version": found})
        except TypeError as e:
            raise FormatError(f"{path}: not a study export's manifest ({e})") from e


def app_version() -> str:
    try:
        return version("facevoice")
    except PackageNotFoundError:
        return "unknown"


def trial_rows(study: Study, participants: list[Participant], trials: list[dict]) -> list[dict]:
    from facevoice.study.design import stimulus_people

    people = stimulus_people(study)
    by_code = {p.code: p for p in participants}
    rows = []
    for t in trials:
        p = by_code.get(t["code"])
        if p is None:  # joined after the participants were read (a live study): in the next export
            continue
        direction = EXPERIMENTS[p.experiment][0]
        seconds = study.stimuli.seconds(p.experiment)

        def stimulus(identity: str, face: bool, seconds: float = seconds) -> str:
            return people[identity].face if face else f"stimuli/{seconds:g}s/{identity}.wav"

        q_face = direction == "F->V"
        server_rt = (t["answered_at"] - t["played_at"]) * 1000 if t["answered_at"] and t["played_at"] else None
        rows.append({
            "participant": p.code, "source": p.source, "platform_id": p.platform_id or "",
            "experiment": p.experiment, "direction": direction, "trial": t["idx"], "kind": t["kind"],
            "query": t["query"], "option0": t["option0"], "option1": t["option1"], "correct": t["correct"],
            "repeat_of": t["repeat_of"], "query_stimulus": stimulus(t["query"], q_face),
            "option0_stimulus": stimulus(t["option0"], not q_face),
            "option1_stimulus": stimulus(t["option1"], not q_face),
            "clip_seconds": seconds, "served_at": t["served_at"], "played_at": t["played_at"],
            "answered_at": t["answered_at"], "rt_ms": t["rt_ms"],
            "server_rt_ms": round(server_rt, 1) if server_rt is not None else None,
            "choice": t["chosen"], "right": None if t["chosen"] is None else int(t["chosen"] == t["correct"]),
            "participant_excluded": p.excluded or ""})
    return rows


def participant_rows(study: Study, participants: list[Participant], exclusions: list[dict]) -> list[dict]:
    history: dict[str, list[str]] = {}
    for x in exclusions:
        history.setdefault(x["code"], []).append(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(x['at']))} "
                                                 f"{x['by']}: {x['reason']}")
    questions = [q["name"] for q in study.survey]
    rows = []
    for p in participants:
        client, check = p.client or {}, p.sound_check or {}
        row = {"participant": p.code, "role": p.role, "source": p.source, "experiment": p.experiment,
               "direction": EXPERIMENTS[p.experiment][0] if p.experiment else "", "platform": p.platform or "",
               "platform_id": p.platform_id or "",
               "platform_ids": " ".join(f"{k}={v}" for k, v in (p.platform_ids or {}).items()),
               "created_at": p.created_at, "consented_at": p.consented_at, "finished_at": p.finished_at,
               "outcome": p.outcome or "", "excluded": p.excluded or "",
               "exclusion_history": " | ".join(history.get(p.code, [])),
               "consent_version": p.consent_version or "", "consent_hash": p.consent_hash or "",
               "device": client.get("device", ""), "screen": client.get("screen", ""),
               "browser": client.get("browser", ""), "sound_check_tries": check.get("tries", ""),
               "sound_check_passed": "" if "passed" not in check else int(check["passed"])}
        for q in questions:
            row[f"survey_{q}"] = (p.survey or {}).get(q, "")
        rows.append(row)
    return rows


def cell(value):
    """A CSV cell; a participant's text that a spreadsheet would run as a formula (=, +, -, @,
    a tab or a return first) is quoted with a leading apostrophe (OWASP's CSV injection advice)."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _write_csv(path: Path, rows: list[dict], fields: tuple[str, ...]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="raise")
        w.writeheader()
        for r in rows:
            w.writerow({k: cell(r.get(k)) for k in fields})


def export(study: Study, store: Store, out: Path) -> ExportManifest:
    """Writes the export to `out` -> its manifest."""
    out.mkdir(parents=True, exist_ok=True)
    participants, trials, exclusions = store.participants(), store.trials(), store.exclusions()
    known = {p.code for p in participants}
    exclusions = [x for x in exclusions if x["code"] in known]
    t_rows = trial_rows(study, participants, trials)
    p_rows = participant_rows(study, participants, exclusions)
    p_fields = (*PARTICIPANT_FIELDS, *(f"survey_{q['name']}" for q in study.survey))
    _write_csv(out / "trials.csv", t_rows, TRIAL_FIELDS)
    _write_csv(out / "participants.csv", p_rows, p_fields)
    _write_csv(out / "exclusions.csv", [{"participant": x["code"], **x} for x in exclusions],
               ("participant", "at", "by", "reason"))
    (out / "trials.json").write_text(json.dumps(t_rows, indent=1), encoding="utf-8")
    # the JSON keeps what analyze needs as it was stored (the survey as a mapping)
    (out / "participants.json").write_text(json.dumps([p.__dict__ for p in participants], indent=1), encoding="utf-8")
    manifest = ExportManifest(
        app_version=app_version(), study=study.title, study_toml_sha256=study.digest,
        consent_version=study.consent.version, consent_sha256=study.consent.digest(), database=store.kind,
        exported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        participants=len(participants), trials=len(t_rows), exclusions=len(exclusions),
        by_source={s: sum(p.source == s for p in participants) for s in sorted({p.source for p in participants})},
        files={name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in DATA_FILES})
    manifest.write(out)
    return manifest


class ExportReader:
    """An export read back, with the Store's read methods `analyze` uses."""

    def __init__(self, directory: Path):
        directory = Path(directory)
        self.manifest = ExportManifest.read(directory)
        try:
            people = json.loads((directory / "participants.json").read_text(encoding="utf-8"))
            rows = json.loads((directory / "trials.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:  # a manifest with its files missing or damaged
            raise FormatError(f"{directory}: a damaged study export ({e})") from e
        for name, digest in self.manifest.files.items():
            if name.endswith(".json") and hashlib.sha256((directory / name).read_bytes()).hexdigest() != digest:
                raise ChecksumMismatch(f"{directory / name}: changed since it was exported "
                                       "(its sha256 is not the manifest's)")
        self._participants = [Participant(**p) for p in people]
        self._trials = [{"code": r["participant"], "idx": r["trial"], "kind": r["kind"], "query": r["query"],
                         "option0": r["option0"], "option1": r["option1"], "correct": r["correct"],
                         "repeat_of": r["repeat_of"], "chosen": r["choice"], "rt_ms": r["rt_ms"],
                         "answered_at": r["answered_at"], "served_at": r["served_at"], "played_at": r["played_at"]}
                        for r in rows]

    def participants(self) -> list[Participant]:
        return list(self._participants)

    def trials(self, code: str | None = None) -> list[dict]:
        return [t for t in self._trials if code is None or t["code"] == code]


@dataclass(frozen=True)
class StudyExportOptions:
    study: Path
    out: Path  # the export directory
    database: str | None = None  # sqlite:///PATH (default: STUDY_DIR/study.sqlite3) or postgresql://...


@dataclass(frozen=True)
class StudyExportResult:
    study: Path
    out: Path
    manifest: ExportManifest

    def summary(self) -> str:
        m = self.manifest
        return "\n".join([
            f"exported {m.participants} participants ({', '.join(f'{k} {v}' for k, v in m.by_source.items())}), "
            f"{m.trials} trials, {m.exclusions} exclusions to {self.out} (trials.csv, participants.csv, "
            "exclusions.csv, the JSON and manifest.json)",
            f"next: facevoice study analyze --study {self.study} --export {self.out} --out REPORT_DIR"])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--database", help="sqlite:///PATH (default: STUDY_DIR/study.sqlite3) or postgresql://...")


def study_export(opts: StudyExportOptions) -> StudyExportResult:
    """`study export`: `export` of the study's database to `opts.out`."""
    with opened(opts.study, opts.database) as (study, store):
        manifest = export(study, store, opts.out)
    return StudyExportResult(opts.study, opts.out, manifest)


def run(args: argparse.Namespace) -> int:
    print(study_export(options(StudyExportOptions, args)).summary())
    return 0
