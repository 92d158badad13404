"""The released demo models (`models/demo/`): the `small` recipes of docs/results.md, trained on
the demo corpus and exported as a Triton model repository, with `release.json` beside them.

`release.json` records what made them and what they measure: the exact commands, the corpus (its
generator settings and the SHA-256 of its manifest and identities, so a corpus built again can be
checked to be the one they were trained on), the commit, each stage's time, the evaluation
figures with their 95% intervals, and a SHA-256 for every file. `make demo` checks those digests
before it serves anything, and the service and `index build` check the repository's
`checksums.sha256` whenever they open it (facevoice.service.repository.open_repository).

Only `facevoice demo --retrain --release DIR` writes a release; the tests never read this one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from facevoice.service import checksums
from facevoice.service.corpus import CorpusInfo
from facevoice.service.errors import FormatError
from facevoice.service.repository import open_repository, read_repository_manifest, write_repository_manifest

RELEASE = "release.json"
FORMAT = 1
DEFAULT = Path(__file__).resolve().parents[1] / "models" / "demo"  # beside the package in a checkout
CONTROLS = ("-", "G", "E", "G/E", "G/E/F/A")


@dataclass(frozen=True)
class Release:
    """release.json, read and written only here. `details` holds what a reader needs by no name
    (the commit it was released at, the training corpus, each stage's seconds, the machine); in
    the file they sit at the top level beside the named fields."""

    created: str
    commit: str  # the commit the models were trained at
    corpus: dict  # the demo corpus: generator settings and the SHA-256 of its two tables (corpus_record)
    commands: list[str]  # every command that made it, as a reader types them under `demo/`
    figures: dict[str, dict]  # name -> {value, interval, what} (figures())
    files: dict[str, str]  # every file of the release -> SHA-256
    details: dict = field(default_factory=dict)
    format: int = FORMAT

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "details"}, **self.details}

    @classmethod
    def from_dict(cls, d: dict) -> Release:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            found = d.get("format") if isinstance(d, dict) else None
            raise ValueError(f"format {found!r}, this version reads {FORMAT}")
        named = {f.name for f in fields(cls)} - {"details"}
        missing = sorted(named - {"format"} - set(d))
        if missing:
            raise KeyError(", ".join(missing))
        return cls(**{k: d[k] for k in named}, details={k: v for k, v in d.items() if k not in named})

    @classmethod
    def read(cls, dest: Path) -> Release:
        """FormatError that says how to make one when DEST holds no release of this format."""
        path = Path(dest) / RELEASE
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise FormatError(f"{path}: not a facevoice release ({type(e).__name__}: {e}); "
                              "make one with `facevoice demo --retrain --release DIR`") from e

    def write(self, dest: Path) -> Path:
        path = Path(dest) / RELEASE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def machine() -> str:
    """This machine in one line, for a recorded result: CPU, cores, Python, OS, and the GPU when
    torch is loaded and sees one (nothing here imports torch)."""
    import os
    import platform
    import sys

    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
    except OSError:
        cpu = platform.processor() or platform.machine()
    torch = sys.modules.get("torch")
    gpu = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}, {gpu}"


def git_commit(where: Path | None = None) -> str:
    """HEAD, with `+dirty` when the tree has changes; `unknown` outside a checkout."""
    cwd = where or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def corpus_record(corpus: Path, seed: int, identities: int) -> dict:
    """What identifies a demo corpus: its generator settings and the digests of its two tables."""
    info = CorpusInfo.read(corpus)
    return {"generator": info.generator, "format_version": info.format_version, "seed": seed,
            "identities": identities, "espeak_ng": info.details.get("espeak_ng"),
            "guarded": info.config.get("guarded", False), "face_render": info.face_render,
            "sha256": {name: checksums.sha256(Path(corpus) / name) for name in ("manifest.csv", "identities.csv")}}


def same_corpus(corpus: Path, record: dict) -> list[str]:
    """The tables of CORPUS whose digest differs from the release's record (empty: the same corpus)."""
    return [name for name, digest in record["sha256"].items()
            if not (Path(corpus) / name).is_file() or checksums.sha256(Path(corpus) / name) != digest]


def figures(association: dict, s2f: dict) -> dict[str, dict]:
    """The release's evaluation figures from the two reports' metrics.json, each {value, interval
    (95%, or None where the report gives none), what}. Names are stable: a rerun is compared by them."""
    out: dict[str, dict] = {}
    for d, arrow in (("v2f", "V->F"), ("f2v", "F->V")):
        for c in CONTROLS:
            cell = association["matching"][d].get(c)
            if cell:
                out[f"association {arrow} 1:2 {c}"] = {
                    "value": cell["accuracy"], "interval": cell["ci95_identity_bootstrap"],
                    "what": f"1:2 matching accuracy under control {c} (Kim et al. Table 3's protocol), "
                            f"{cell['trials']} trials; 95% identity bootstrap"}
        size = str(association["retrieval"]["sizes"][0])
        out[f"association {arrow} recall@10"] = {
            "value": association["retrieval"][d][size]["10"], "interval": None,
            "what": f"recall@10 in a gallery of {size} (random {association['retrieval']['random'][size]['10']:.3f})"}
    r = s2f["retrieval"]
    out["s2f R@10"] = {"value": r["cosine"]["10"], "interval": r["cosine_ci"]["10"],
                       "what": f"S2F -> face retrieval R@10, cosine, one photo per person ({r['gallery']}; random "
                               f"{r['random']['10']:.3f}); 95% interval resampling speakers (Oh et al. Table 3)"}
    out["s2f gender agreement"] = {"value": s2f["attributes"]["gender"]["agreement"], "interval": None,
                                   "what": "gender read off the photo and off the S2F reconstruction agree (Fig. 4)"}
    via = s2f["cross_check"]["via_reconstruction"]
    out["s2f 1:2 via reconstruction"] = {"value": via["accuracy"], "interval": via["ci95"],
                                         "what": f"1:2 V->F through the reconstruction, {via['trials']} trials; "
                                                 "95% Wilson interval"}
    for who in ("s2f", "f2f"):
        for space in ("pixel", "feature"):
            v = s2f.get("variation", {}).get(who, {}).get(space)
            if v:
                out[f"{who} variation ({space})"] = {
                    "value": v["ratio"], "interval": None,
                    "what": "different people of a gender / the same person, between reconstructions (about 1: "
                            "one face per gender)"}
    return out


def compare(recorded: dict[str, dict], measured: dict[str, dict]) -> list[dict]:
    """Each recorded figure beside a rerun's: inside its interval, or not (None: no interval)."""
    rows = []
    for name, rec in recorded.items():
        new = measured.get(name)
        value = None if new is None else new["value"]
        lo_hi = rec.get("interval")
        inside = None if value is None or not lo_hi else bool(lo_hi[0] <= value <= lo_hi[1])
        rows.append({"figure": name, "released": rec["value"], "interval": lo_hi, "rerun": value, "inside": inside})
    return rows


def format_comparison(rows: list[dict]) -> str:
    lines = [f"  {'figure':<38} {'released':>9} {'95% interval':>15} {'this run':>9}  inside"]
    for r in rows:
        iv = f"{r['interval'][0]:.3f}-{r['interval'][1]:.3f}" if r["interval"] else "-"
        new = "-" if r["rerun"] is None else f"{r['rerun']:.3f}"
        mark = {True: "yes", False: "NO", None: "(no interval)"}[r["inside"]]
        lines.append(f"  {r['figure']:<38} {r['released']:>9.3f} {iv:>15} {new:>9}  {mark}")
    checked = [r for r in rows if r["inside"] is not None]
    lines.append(f"  {sum(r['inside'] for r in checked)}/{len(checked)} figures with an interval land inside it")
    return "\n".join(lines)


def write_release(repo: Path, dest: Path, *, runs: dict[str, str], commit: str, corpus: dict, commands: list[str],
                  figures: dict[str, dict], details: dict) -> Release:
    """Copies the exported repository REPO to DEST (replacing it), records each model group's run
    as RUNS names it (relative to the demo directory, not this machine's), writes the repository's
    checksums and then DEST/release.json with the SHA-256 of every file. Returns the release."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(repo, tmp, ignore=shutil.ignore_patterns(".*", "__pycache__", checksums.NAME, RELEASE))
    manifest = read_repository_manifest(tmp)
    groups = {n: replace(g, run=runs.get(n, g.run)) for n, g in manifest.groups.items()}
    for old in tmp.glob("facevoice.v*.json"):
        old.unlink()  # the earlier exports' manifests name this machine's paths
    write_repository_manifest(tmp, replace(manifest, groups=groups))
    files = checksums.write(tmp)
    release = Release(created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), commit=commit, corpus=corpus,
                      commands=commands, figures=figures,
                      files={**files, checksums.NAME: checksums.sha256(tmp / checksums.NAME)}, details=details)
    release.write(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return release


def verify_release(dest: Path, progress=None) -> tuple[Release, object]:
    """The release and its manifest, after checking every file it lists and that the repository's
    own checksums are the ones it lists (so the service's check is this one). ChecksumMismatch
    names the first file that differs."""
    release = Release.read(dest)
    listed = {f: d for f, d in release.files.items() if f != checksums.NAME}
    checksums.verify(dest, {checksums.NAME: release.files[checksums.NAME]}, progress)
    if checksums.read(dest) != listed:
        raise checksums.ChecksumMismatch(f"{dest}: {checksums.NAME} and {RELEASE} list different files")
    unlisted = sorted(set(checksums.tree(dest)) - set(listed) - {RELEASE})
    if unlisted:
        raise checksums.ChecksumMismatch(f"{dest}: files the release does not list: {unlisted[:5]}")
    return release, open_repository(dest, progress)


def markdown(release: Release, rows: list[dict] | None = None) -> str:
    """The release's figures as docs/results.md shows them; with ROWS (compare's, a rerun's) a
    column for the rerun and whether it lands inside the interval."""
    head = "| figure | released | 95% interval |" + (" rerun | inside |" if rows else "") + " what |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    rerun = {r["figure"]: r for r in rows or []}
    for name, f in release.figures.items():
        iv = f"{f['interval'][0]:.3f}-{f['interval'][1]:.3f}" if f.get("interval") else "-"
        cells = [name, f"{f['value']:.3f}", iv]
        if rows:
            r = rerun.get(name, {})
            cells += ["-" if r.get("rerun") is None else f"{r['rerun']:.3f}",
                      {True: "yes", False: "**no**", None: "(no interval)"}[r.get("inside")]]
        lines.append("| " + " | ".join([*cells, f["what"]]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m facevoice.release [DIR] [--against RUN/against_release.json]
    import argparse

    p = argparse.ArgumentParser(description="print a release's figures as a Markdown table")
    p.add_argument("release", type=Path, nargs="?", default=DEFAULT)
    p.add_argument("--against", type=Path, help="a rerun's against_release.json (facevoice demo --retrain)")
    a = p.parse_args()
    print(markdown(Release.read(a.release), json.loads(a.against.read_text()) if a.against else None))
