"""The rules the code keeps (docs/architecture.md, "Conventions"), checked by reading it: only the
CLI exits, every verb's `run` only adapts argparse to the verb's function, nothing outside the
CLI's own tests drives a verb through argv, and nothing points outside the repository."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

from facevoice.cli import VERBS

ROOT = Path(__file__).resolve().parents[1]
CODE = ("facevoice", "service", "training", "study", "bench", "protos", "deploy")
GENERATED = ("_pb2.py", "_pb2_grpc.py")


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", *patterns], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / p for p in out.decode().split("\0") if p]


def python_files(folders=CODE) -> list[Path]:
    return [p for p in tracked(*(f"{f}/*.py" for f in folders)) if not p.name.endswith(GENERATED)]


def exits(tree: ast.AST) -> list[int]:
    """Lines that raise SystemExit or call sys.exit / os._exit / exit / quit."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id == "SystemExit":
                lines.append(node.lineno)
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            if (owner, name) in (("sys", "exit"), ("os", "_exit")) or (not owner and name in ("exit", "quit")):
                lines.append(node.lineno)
    return sorted(lines)


def test_only_the_cli_exits():
    found = [f"{p.relative_to(ROOT)}:{line}" for p in python_files() if p != ROOT / "facevoice" / "cli.py"
             for line in exits(ast.parse(p.read_text(), str(p)))]
    assert not found, f"these exit instead of raising a FacevoiceError for facevoice.cli to turn into a status: {found}"


def test_the_exit_check_can_fail():
    tree = ast.parse("import sys\nraise SystemExit(1)\nsys.exit(2)\nexit()\nraise SystemExit\n")
    assert exits(tree) == [2, 3, 4, 5]


def module_file(module: str) -> Path:
    return Path(importlib.util.find_spec(module).origin)


@pytest.mark.parametrize("module", sorted({m for m, _ in VERBS.values()}))
def test_each_verbs_run_only_adapts(module):
    """run(args) builds the options, calls the verb's function, prints its summary: three statements."""
    tree = ast.parse(module_file(module).read_text())
    (run,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"]
    body = [s for s in run.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    assert len(body) <= 3, f"{module}.run has {len(body)} statements: the verb's work belongs in its function"


def test_no_verb_is_driven_through_argv_outside_the_cli_tests():
    pattern = re.compile(r"\b(cli|main)\(\[")
    allowed = {ROOT / "tests" / "test_cli.py"}
    found = [f"{p.relative_to(ROOT)}:{n}" for p in python_files((*CODE, "tests")) if p not in allowed
             for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, f"call the verb's function instead of its command line: {found}"


def test_nothing_points_outside_the_repository():
    outside = re.compile(r"\.\./shared|\bshared/(DESIGN|STYLE|FEASIBILITY|papers)|\b(DESIGN|STYLE|FEASIBILITY)\.md"
                         r"|/wor[k]/|\.librar[y]\b")  # the workplace this was built in, which a clone has not
    found = []
    for p in tracked():
        if p.suffix in (".png", ".jpg", ".onnx", ".svm", ".pt", ".wav") or not p.is_file():
            continue
        try:
            text = p.read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{p.relative_to(ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1) if outside.search(line)]
    assert not found, f"a clone of the repository has none of these: {found}"


def imported_modules(tree: ast.AST, package: str) -> set[str]:
    """Every module a file imports, absolute (relative imports resolved against `package`)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def test_the_service_never_imports_the_offline_path_the_study_or_the_main_job():
    allowed_top = {"facevoice.cli", "facevoice.v1"}
    found = []
    for p in python_files(("service",)):
        for name in imported_modules(ast.parse(p.read_text()), "facevoice.service"):
            offline = name.startswith(("facevoice.training", "facevoice.study"))
            top = name.startswith("facevoice.") and not name.startswith(("facevoice.service", *allowed_top))
            if offline or top:
                found.append(f"{p.relative_to(ROOT)}: {name}")
    assert not found, f"the service image has none of these: {found}"


def test_the_media_pipeline_imports_only_itself_and_the_errors():
    found = [f"{p.relative_to(ROOT)}: {name}" for p in python_files(("service/media",))
             for name in imported_modules(ast.parse(p.read_text()), "facevoice.service.media")
             if name.startswith("facevoice.") and not name.startswith(("facevoice.service.media",
                                                                       "facevoice.service.errors"))]
    assert not found, found


def test_a_record_of_a_newer_format_is_refused_and_an_older_layout_upgraded(tmp_path):
    """service/records.py, which every small file's owner builds on: the version is checked."""
    from facevoice.service.corpus import CorpusInfo
    from facevoice.service.errors import FormatError

    info = CorpusInfo(generator="test", counts={"identities": {"test": 2}, "items": {"face": 4}}, details={"x": 1})
    info.write(tmp_path)
    assert CorpusInfo.read(tmp_path) == info
    raw = json.loads((tmp_path / "corpus.json").read_text())
    assert raw["format_version"] == 1 and raw["x"] == 1
    (tmp_path / "corpus.json").write_text(json.dumps({**raw, "format_version": 2}))
    with pytest.raises(FormatError, match="format 2, this version reads 1 to 1"):
        CorpusInfo.read(tmp_path)
    # an ingest's corpus.json from before CorpusInfo, its counts spread at the top level
    (tmp_path / "corpus.json").write_text(json.dumps({"generator": "old", "identities": {"test": 2},
                                                      "items": {"face": 4}, "clips": 3}))
    old = CorpusInfo.read(tmp_path)
    assert old.counts == {"identities": {"test": 2}, "items": {"face": 4}} and old.details == {"clips": 3}
    # a detail cannot stand in for a named field
    assert CorpusInfo(generator="g", details={"generator": "forged"}).to_dict()["generator"] == "g"
    assert CorpusInfo.find(tmp_path / "none") is None
