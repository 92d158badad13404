"""Every benchmark's `--smoke` (issue 33: "the suite runs them all, so a benchmark cannot rot"):
`python -m bench.NAME --smoke --doc TMP/benchmarks.md` as a real process from the repository root,
on tiny data it makes itself. It must exit 0 and write its section, with figures, to that file,
and change nothing under docs/. bench/gpu_check.py's smoke is tests/test_gpu_check.py's."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import parse
from facevoice.service.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
# the benchmark -> the name of its section (a pattern where the name carries the config or device)
SECTIONS = {"association_train": r"association-train-[\w-]+", "corpus_synth": "corpus-synth", "engines": "engines",
            "history": "history",
            "itemtable": "itemtable",
            "log_damage": "log-damage", "log_replay": "log-replay", "media_formats": "media-formats",
            "reliability": "reliability", "s2f_train": r"s2f-train-\w+", "scale": "scale",
            "search_breakdown": "search_breakdown", "search_service": "search_service", "study_load": "study-load"}
# what the benchmarks write when they are not smoke runs
WRITTEN = [ROOT / "docs" / name for name in ("benchmarks.md", "reliability.md", "reliability.json",
                                              "images/index/scale.png")]
NUMBER_CELL = re.compile(r"\|\s*-?\d[\d.,]*\s*\|")  # a table cell holding only a figure


def test_every_benchmark_is_smoked_here():
    benches = {p.stem for p in (ROOT / "bench").glob("*.py")} - {"__init__", "report", "gpu_check", "itemtable_probe"}
    assert benches == set(SECTIONS)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_a_benchmarks_smoke_writes_its_section_elsewhere(name, tmp_path):
    before = {p: p.read_bytes() for p in WRITTEN if p.exists()}
    doc = tmp_path / "benchmarks.md"
    # one thread each: on a loaded 2-core machine two spinning OpenMP threads make a tiny step seconds long
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", f"bench.{name}", "--smoke", "--doc", str(doc)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=570)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    found = re.search(rf"<!-- bench:({SECTIONS[name]}) -->\n(.*?)\n<!-- /bench:\1 -->", doc.read_text(), re.S)
    assert found, doc.read_text()[:3000]
    section = found.group(2)
    assert NUMBER_CELL.search(section), section
    assert "Smoke run (`--smoke`)" in section
    assert {p: p.read_bytes() for p in WRITTEN if p.exists()} == before, "a smoke run changed docs/"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    return p


def test_a_smoke_run_never_writes_under_docs():
    with pytest.raises(UsageError, match="--smoke never writes under docs/"):
        parse(parser(), ["--smoke", "--doc", str(ROOT / "docs" / "benchmarks.md")])
    with pytest.raises(UsageError, match="--smoke never writes under docs/"):
        parse(parser(), ["--smoke", "--doc", str(ROOT / "docs" / "reliability.md")], ROOT / "docs" / "reliability.md")
    args = parse(parser(), ["--smoke"], ROOT / "docs" / "reliability.md")
    assert args.doc.name == "reliability.md" and not args.doc.resolve().is_relative_to(ROOT)


def test_smoke_values_replace_only_the_defaults():
    assert parse(parser(), ["--smoke"], smoke={"steps": 2}).steps == 2
    assert parse(parser(), ["--smoke", "--steps", "5"], smoke={"steps": 2}).steps == 5
    args = parse(parser(), [], smoke={"steps": 2})
    assert args.steps == 20 and not args.smoke and args.doc == ROOT / "docs" / "benchmarks.md"


def _service_figures(client_p50: float, decode: float, qps: float) -> dict:
    return {"client": {"p50": client_p50, "p99": 2 * client_p50, "mean": client_p50},
            "server": {"decode": decode, "embed": 5.0, "search": 0.1, "rpc": decode + 5.5},
            "empty": {"p50": 0.7, "p99": 1.0, "mean": 0.7}, "at32": {"qps": qps, "p50": 100.0, "p99": 200.0}}


def test_the_compare_table_names_what_got_slower():
    """`search_breakdown --compare`: a part 10% and 0.2 ms slower, or QPS 10% lower, is named;
    noise below that is not."""
    from bench.search_breakdown import compare_table

    ref = {"embedded": _service_figures(10.0, 2.0, 300.0), "triton": _service_figures(12.0, 2.0, 150.0)}
    today = {"embedded": _service_figures(10.1, 3.0, 300.0), "triton": _service_figures(12.0, 2.0, 120.0)}
    results = {**{("v1", p): r for p, r in ref.items()}, **{("today", p): r for p, r in today.items()}}
    lines = compare_table(results, "v1", "today")
    verdict = lines[-1]
    assert "embedded server decode (2.00 -> 3.00)" in verdict and "triton QPS at 32 (150.00 -> 120.00)" in verdict
    assert "client p50" not in verdict  # 1% slower: noise
    assert sum("**slower**" in line for line in lines) == 3  # decode, the handler it is part of, and QPS
    same = compare_table({**{("v1", p): r for p, r in ref.items()}, **{("today", p): r for p, r in ref.items()}},
                         "v1", "today")
    assert same[-1] == "Slower than v1: nothing, beyond 10% and 0.2 ms."


def test_compare_runs_another_commits_code(tmp_path):
    """--compare REF extracts REF with git and lays it out as the installed package, so its
    service is REF's own code; a name git does not know is a usage error."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: --compare needs the repository's history")
    from bench.search_breakdown import reference_code

    tree, sha = reference_code("HEAD")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    assert sha == head.strip()
    # as ServeProcess starts it: REF's tree on the path and as the working directory
    where = subprocess.run([sys.executable, "-c", "import facevoice.service.runners as r; print(r.__file__)"],
                           env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree, capture_output=True, text=True,
                           timeout=120)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).resolve() == (tree / "service" / "runners.py").resolve()
    with pytest.raises(UsageError, match="not a commit"):
        reference_code("no-such-ref-anywhere")
