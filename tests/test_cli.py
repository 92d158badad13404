"""The `facevoice` command as a user runs it."""

from __future__ import annotations

import subprocess
import sys

from facevoice.cli import VERBS


def _run(*args):
    return subprocess.run([sys.executable, "-m", "facevoice", *args], capture_output=True,
                          text=True, timeout=240)


def test_help_lists_every_verb():
    done = _run("--help")
    assert done.returncode == 0
    for path in VERBS:
        assert path[0] in done.stdout
    sub = _run("corpus", "--help")
    assert "synth" in sub.stdout and "voxceleb" in sub.stdout


def test_corpus_synth_shows_progress_and_a_summary(tmp_path):
    done = _run("corpus", "synth", "--out", str(tmp_path / "c"), "--identities", "6",
                "--faces", "1", "--clips", "1", "--oracle-trials", "200")
    assert done.returncode == 0, done.stderr
    assert "synthesising people" in done.stderr and "100%" in done.stderr  # tqdm bar
    assert "identities: test 1, train 4, val 1" in done.stdout
    assert "oracle 1:2 matching accuracy" in done.stdout
    assert (tmp_path / "c" / "manifest.csv").is_file()


def test_bad_arguments_fail_clearly(tmp_path):
    done = _run("corpus", "synth", "--out", str(tmp_path / "c"), "--identities", "1")
    assert done.returncode == 2 and "facevoice corpus synth: --identities must be at least 2" in done.stderr
    done = _run("corpus", "synth", "--out", str(tmp_path / "c"), "--face-size", "64")
    assert done.returncode == 2 and "--face-size must be at least 128" in done.stderr
    assert _run("no-such-verb").returncode == 2
