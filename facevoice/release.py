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

import shutil
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from facevoice.service import checksums
from facevoice.service.corpus import CorpusInfo
from facevoice.service.records import JsonRecord
from facevoice.service.repository import open_repository, read_repository_manifest, write_repository_manifest

RELEASE = "release.json"
FORMAT = 1
DEFAULT = Path(__file__).resolve().parents[1] / "models" / "demo"  # beside the package in a checkout
CONTROLS = ("-", "G", "E", "G/E", "G/E/F/A")


@dataclass(frozen=True)
class Release(JsonRecord):
    """release.json, read and written only here. `details` holds what a reader needs by no name
    (the commit it was released at, the training corpus, the recipe, each stage's seconds, the
    machine)."""

    FILE: ClassVar[str] = RELEASE
    WHAT: ClassVar[str] = "a facevoice release"
    VERSION_KEY: ClassVar[str] = "format"
    VERSION: ClassVar[int] = FORMAT
    HINT: ClassVar[str] = "; make one with `facevoice demo --retrain --release DIR`"

    created: str
    commit: str  # the commit the models were trained at
    corpus: dict  # the demo corpus: generator settings and the SHA-256 of its two tables (corpus_record)
    commands: list[str]  # every command that made it, as a reader types them under `demo/`
    figures: dict[str, dict]  # name -> {value, interval, what} (figures())
    files: dict[str, str]  # every file of the release -> SHA-256
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison(JsonRecord):
    """against_release.json: a rerun's figures beside a release's (compare()), what
    `demo --retrain` writes and `python -m facevoice.release --against` reads."""

    FILE: ClassVar[str] = "against_release.json"
    WHAT: ClassVar[str] = "a rerun's comparison with a release"

    release: str  # the release compared with
    rows: list[dict]  # compare()'s
    details: dict = field(default_factory=dict)


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
    return {"generator": info.generator, "format_version": CorpusInfo.VERSION, "seed": seed,
            "identities": identities, "espeak_ng": info.details.get("espeak_ng"),
            "guarded": info.config.get("guarded", False), "face_render": info.face_render,
            "sha256": {name: checksums.sha256(Path(corpus) / name) for name in ("manifest.csv", "identities.csv")}}


def corpus_differences(corpus: Path, record: dict) -> list[str]:
    """The tables of CORPUS whose digest differs from the release's record (empty: the same corpus)."""
    return [name for name, digest in record["sha256"].items()
            if not (Path(corpus) / name).is_file() or checksums.sha256(Path(corpus) / name) != digest]


def control_label(control: str) -> str:
    """Which row of Kim et al.'s Table 3 a control's 1:2 cell measures the same thing as."""
    if control == "G/E/F/A":  # Kim's row is the single largest homogeneous group; ours any group's
        return ("the impostor shares all four attributes, in every such group of the test people; "
                "Kim et al. Table 3's G/E/F/A is on the single largest group, our `largest group` row")
    return f"Kim et al. Table 3's column {control}"


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
                    "what": f"1:2 matching accuracy under control {c} ({control_label(c)}), "
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


def main() -> int:
    """`python -m facevoice.release [DIR] [--against RUN]`: a release's figures as a Markdown table."""
    import argparse

    p = argparse.ArgumentParser(description="print a release's figures as a Markdown table")
    p.add_argument("release", type=Path, nargs="?", default=DEFAULT)
    p.add_argument("--against", type=Path, metavar="RUN",
                   help="a `demo --retrain` output directory: its against_release.json beside the release's figures")
    a = p.parse_args()
    print(markdown(Release.read(a.release), Comparison.read(a.against).rows if a.against else None))
    return 0


if __name__ == "__main__":
    from facevoice.cli import run_script

    run_script(main, "python -m facevoice.release")
