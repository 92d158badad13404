"""`index build --shard I/N` + `index merge`: a killed shard resumes, the merge refuses missing
shards and leaves the served versions alone, and the merged index holds the whole gallery."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from facevoice.cli import main
from facevoice.service.versions import current_version, read_meta
from tests.serving import copy_indexes


def _big_gallery(stack, tmp_path, copies: int = 12):
    """The toy gallery's rows repeated under new item ids (same media): enough batches to kill a shard in."""
    src = stack.corpus / "manifest.csv"
    with open(src) as f:
        rows = list(csv.DictReader(f))
    out = tmp_path / f"manifest-x{copies}.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for c in range(copies):
            for r in rows:
                w.writerow({**r, "item_id": f"{r['item_id']}-c{c}", "path": str(stack.corpus / r["path"])})
    return out, copies * sum(r["modality"] == "face" for r in rows)


def _shard_cmd(gallery, stack, out, i, n):
    return [sys.executable, "-m", "facevoice", "index", "build", "--gallery", str(gallery), "--model-repo",
            str(stack.repo), "--out", str(out), "--shard", f"{i}/{n}", "--batch", "1", "--concurrency", "1",
            "--threads", "1", "--no-progress"]


def test_a_killed_shard_resumes_and_the_merge_publishes_the_whole_gallery(stack, tmp_path, capsys):
    gallery, faces = _big_gallery(stack, tmp_path)
    out = copy_indexes(stack, tmp_path / "indexes")
    served = {n: current_version(out, n) for n in ("face", "voice", "face_feature")}
    merge = ["index", "merge", "--gallery", str(gallery), "--model-repo", str(stack.repo), "--out", str(out),
             "--shards", "3", "--no-progress", "--threads", "1"]
    assert main(_shard_cmd(gallery, stack, out, 0, 3)[3:]) == 0
    # shard 1 is killed (SIGKILL) once it has written some of its batches
    p = subprocess.Popen(_shard_cmd(gallery, stack, out, 1, 3), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / ".shards").rglob("work-0001/**/*.npz"))) < 5:
        assert p.poll() is None, p.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    root = next((out / ".shards").iterdir())
    kept = sorted((root / "work-0001").rglob("*.npz"))
    assert kept and not (root / "0001").exists()  # its batches stay; the shard itself does not exist yet
    stamps = {path: path.stat().st_mtime_ns for path in kept}
    # a merge with shards missing refuses, names them, and publishes nothing
    with pytest.raises(SystemExit, match=r"2 of 3 shards are not built \(1/3, 2/3\).*nothing was published"):
        main(merge)
    assert {n: current_version(out, n) for n in served} == served
    # shard 1 again: its finished batches are reused, not embedded again
    before = time.time_ns()
    assert subprocess.run(_shard_cmd(gallery, stack, out, 1, 3), capture_output=True).returncode == 0
    assert all(path.stat().st_mtime_ns == t for path, t in stamps.items() if path.exists())
    assert (root / "0001" / "shard.json").exists() and (root / "0001").stat().st_mtime_ns >= before
    assert main(_shard_cmd(gallery, stack, out, 2, 3)[3:]) == 0
    capsys.readouterr()
    assert main(_shard_cmd(gallery, stack, out, 2, 3)[3:]) == 0  # a finished shard is not built twice
    assert "already built" in capsys.readouterr().out
    assert main([*merge, "--memory-budget", "1GB", "--min-recall", "0.9"]) == 0
    new = {n: current_version(out, n) for n in served}
    assert all(new[n] != served[n] for n in served)
    meta = read_meta(out, "face", new["face"])
    assert meta["size"] == faces and meta["runner"] == "shards" and meta["min_recall"] == 0.9
    assert meta["memory_budget"] == 10**9 and meta["planner"][-1]["name"] == meta["plan"]
    with open(out / "face" / new["face"] / "items.jsonl") as f:
        assert len({line.split('"item_id": "')[1].split('"')[0] for line in f}) == faces  # each item once


def test_shard_and_merge_arguments_are_checked(stack, tmp_path):
    base = ["index", "build", "--gallery", str(stack.corpus / "manifest.csv"), "--model-repo", str(stack.repo),
            "--out", str(tmp_path)]
    for bad in ("3/3", "-1/2", "a/b", "1"):
        with pytest.raises(SystemExit):
            main([*base, "--shard", bad])
    for flag, bad in (("--memory-budget", "lots"), ("--memory-budget", ""), ("--min-recall", "1.5"),
                      ("--min-recall", "0"), ("--min-recall", "nan"), ("--kind", "lsh")):
        with pytest.raises(SystemExit):
            main([*base, flag, bad])
    with pytest.raises(SystemExit, match="at least 1"):
        main(["index", "merge", *base[2:], "--shards", "0"])
