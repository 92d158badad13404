"""`facevoice study corpus --study STUDY_DIR --out CORPUS`: the recorded people as a corpus in
the manifest format (Kim et al. sec. 3.1's dataset), ready for `train`, `eval`, `index build`
and the matching experiments.

One identity per finished recorder with an accepted voice and photo. Each accepted script is a
voice item, the photo a face item with its detected box (the media pipeline crops it enlarged
1.5x). identities.csv carries the questionnaire's answers (all but `recorded`); the manifest
carries gender, age_group (from the age), first_language and the other answers as attributes."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

from facevoice.cli import options
from facevoice.service.corpus import CorpusInfo, Item, write_csv, write_manifest
from facevoice.service.errors import UsageError
from facevoice.study.config import Study
from facevoice.study.store import Store, opened


@dataclass(frozen=True)
class StudyCorpusOptions:
    study: Path
    out: Path  # the corpus directory
    database: str | None = None  # default STUDY_DIR's SQLite
    split: str = "test"  # the split of every recorded identity
    force: bool = False  # replace a non-empty `out`


@dataclass(frozen=True)
class StudyCorpusResult:
    out: Path
    identities: int  # finished recorders with an accepted voice and photo
    items: int
    skipped_participants: int  # recorders without them, left out

    def summary(self) -> str:
        return (f"corpus {self.out}: {self.identities} people, {self.items} items ({self.skipped_participants} "
                "recorders without a finished, accepted voice and photo left out)")


def age_group(age) -> str:
    from facevoice.training.corpus.people import age_group as group

    try:
        return group(int(float(age)))
    except (TypeError, ValueError):
        return ""


def write_corpus(study: Study, store: Store, out: Path, split: str = "test", force: bool = False) -> StudyCorpusResult:
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UsageError(f"{out} is not empty (--force replaces it)")
        shutil.rmtree(out)
    recordings: dict[str, list[dict]] = {}
    for r in store.recordings():
        recordings.setdefault(r["code"], []).append(r)
    items, identities, skipped = [], [], 0
    # only real participants' recordings become stimuli: a pilot's (the preview link) or a script's do not
    for n, p in enumerate(p for p in store.participants() if p.role == "record" and p.source == "participant"):
        have = recordings.get(p.code, [])
        kinds = {r["kind"] for r in have}
        if p.finished_at is None or not {"face", "voice"} <= kinds:
            skipped += 1
            continue
        identity = f"rec{n:05d}"
        answers = {k: v for k, v in (p.survey or {}).items() if k != "recorded"}
        attrs = {"gender": str(answers.get("gender", "")), "age_group": age_group(answers.get("age")),
                 "first_language": str(answers.get("first_language", ""))}
        extra = {k: str(v) for k, v in answers.items() if k not in ("gender", "age", "first_language")}
        # a reading's video ([recording] video) stays with the study: the corpus format has faces and voices
        for r in (r for r in have if r["kind"] != "video"):
            src = study.recordings_dir / r["path"]
            rel = Path("media") / identity / Path(r["path"]).name
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out / rel)
            kind = r["kind"]
            item_id = f"{identity}-{kind}-{r['script']}"
            items.append(Item(item_id, identity, kind, rel.as_posix(), split, box=r["box"] if kind == "face" else "",
                              extra=dict(extra), **attrs))
        identities.append({"identity": identity, "split": split, **attrs, **{k: str(v) for k, v in answers.items()}})
    if not identities:
        raise UsageError("no finished recorder with an accepted voice and photo yet")
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, items)
    columns = tuple(dict.fromkeys(k for row in identities for k in row))
    write_csv(out / "identities.csv", [{c: row.get(c, "") for c in columns} for row in identities], columns)
    info = CorpusInfo(generator="facevoice study corpus",
                      counts={"identities": {split: len(identities)},
                              "items": {m: sum(i.modality == m for i in items) for m in ("face", "voice")}},
                      details={"source": f"facevoice study {study.title!r}", "skipped_participants": skipped})
    info.write(out)
    return StudyCorpusResult(out, len(identities), len(items), skipped)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--database")
    p.add_argument("--split", default=StudyCorpusOptions.split,
                   help="the split of every recorded identity (default test)")
    p.add_argument("--force", action="store_true")


def study_corpus(opts: StudyCorpusOptions) -> StudyCorpusResult:
    """`study corpus`: `write_corpus` from the study's database."""
    with opened(opts.study, opts.database) as (study, store):
        return write_corpus(study, store, opts.out, opts.split, opts.force)


def run(args: argparse.Namespace) -> int:
    print(study_corpus(options(StudyCorpusOptions, args)).summary())
    return 0
