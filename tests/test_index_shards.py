"""`index build --shard I/N` + `index merge`: a killed shard resumes, the merge refuses missing
shards and leaves the served versions alone, and the merged index holds the whole gallery."""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest

from facevoice.service.build import IndexBuildOptions, index_build
from facevoice.service.errors import UsageError
from facevoice.service.itemtable import ItemTable
from facevoice.service.shards import IndexMergeOptions, ShardsMissing, index_merge
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
    """A shard as its own process (one this test can SIGKILL)."""
    return [sys.executable, "-m", "facevoice", "index", "build", "--gallery", str(gallery), "--model-repo",
            str(stack.repo), "--out", str(out), "--shard", f"{i}/{n}", "--batch", "1", "--concurrency", "1",
            "--threads", "1", "--no-progress"]


def _shard(gallery, stack, out, i, n):
    """The same shard as _shard_cmd's, in this process."""
    return index_build(IndexBuildOptions(gallery, stack.repo, out, shard=(i, n), batch=1, concurrency=1, threads=1,
                                         no_progress=True))


def test_a_killed_shard_resumes_and_the_merge_publishes_the_whole_gallery(stack, tmp_path):
    gallery, faces = _big_gallery(stack, tmp_path)
    out = copy_indexes(stack, tmp_path / "indexes")
    served = {n: current_version(out, n) for n in ("face", "voice", "face_feature")}
    merge = IndexMergeOptions(gallery, stack.repo, out, shards=3, no_progress=True, threads=1)
    assert not _shard(gallery, stack, out, 0, 3).already_built
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
    with pytest.raises(ShardsMissing, match=r"2 of 3 shards are not built \(1/3, 2/3\).*nothing was published"):
        index_merge(merge)
    assert {n: current_version(out, n) for n in served} == served
    # shard 1 again: its finished batches are reused, not embedded again
    before = time.time_ns()
    assert subprocess.run(_shard_cmd(gallery, stack, out, 1, 3), capture_output=True).returncode == 0
    assert all(path.stat().st_mtime_ns == t for path, t in stamps.items() if path.exists())
    assert (root / "0001" / "shard.json").exists() and (root / "0001").stat().st_mtime_ns >= before
    assert not _shard(gallery, stack, out, 2, 3).already_built
    again = _shard(gallery, stack, out, 2, 3)  # a finished shard is not built twice
    assert again.already_built and "already built" in again.summary()
    index_merge(dataclasses.replace(merge, memory_budget="1GB", min_recall=0.9))
    new = {n: current_version(out, n) for n in served}
    assert all(new[n] != served[n] for n in served)
    meta = read_meta(out, "face", new["face"])
    assert meta.size == faces and meta.runner == "shards" and meta.plan.min_recall == 0.9
    assert meta.plan.memory_budget == 10**9 and meta.planner[-1]["name"] == meta.plan.name
    ids = ItemTable.open(out / "face" / new["face"]).item_ids.all()
    assert len(ids) == len(set(ids)) == faces  # each item once


def test_shard_and_merge_options_are_checked(stack, tmp_path):
    """What argparse refuses on the command line (tests/test_cli.py), refused here to a caller of the functions."""
    base = IndexBuildOptions(stack.corpus / "manifest.csv", stack.repo, tmp_path)
    for bad in ((3, 3), (-1, 2), (0, 0)):
        with pytest.raises(UsageError, match=r"0\.\.N-1"):
            index_build(dataclasses.replace(base, shard=bad))
    for field, bad in (("memory_budget", "lots"), ("memory_budget", ""), ("min_recall", 1.5), ("min_recall", 0.0),
                       ("min_recall", float("nan")), ("kind", "lsh"), ("candidates", ("flat", "lsh"))):
        with pytest.raises(UsageError):
            index_build(dataclasses.replace(base, **{field: bad}))
    with pytest.raises(UsageError, match="at least 1"):
        index_merge(IndexMergeOptions(base.gallery, base.model_repo, base.out, shards=0))
    assert not any(tmp_path.iterdir())  # refused before anything was written
