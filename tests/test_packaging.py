"""One namespace: the project installs as `facevoice.*` only (pyproject's package-dir)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"facevoice": ROOT / "facevoice", "facevoice.service": ROOT / "service",
           "facevoice.training": ROOT / "training", "facevoice.study": ROOT / "study"}


def installed_packages() -> dict[str, Path]:
    """Every folder with an __init__.py under the four roots, by the package name it installs as."""
    found = {}
    for name, folder in FOLDERS.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            found[".".join((name, *rel))] = init.parent
    return found


def test_every_package_folder_is_listed_under_the_facevoice_namespace():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(tool["packages"]) == set(installed_packages())
    assert tool["package-dir"] == {name: str(folder.relative_to(ROOT)) for name, folder in FOLDERS.items()}


def test_every_module_imports_by_its_namespaced_name_and_no_bare_name_exists(tmp_path):
    """Run outside the checkout, so the working tree's folders are not on sys.path."""
    modules = sorted(f"{pkg}.{p.stem}" if p.stem != "__init__" else pkg
                     for pkg, folder in installed_packages().items() for p in folder.glob("*.py")
                     if p.name not in ("triton_model.py", "__main__.py"))  # Triton-only; runs the CLI
    script = ("import importlib, importlib.util, sys\n"
              f"for m in {modules!r}: importlib.import_module(m)\n"
              "for bare in ('service', 'training', 'study'): assert importlib.util.find_spec(bare) is None, bare\n"
              "print(len(sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("## Machine notes")]
    for folder in installed_packages().values():
        for p in folder.glob("*.py"):
            if p.name not in ("__init__.py", "__main__.py") and p.parent.name != "v1":
                assert f"`{p.name}`" in layout, p.relative_to(ROOT)
