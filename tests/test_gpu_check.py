"""bench/gpu_check.sh --smoke: every part runs with tiny shapes on the CPU and writes its figures,
so the script works the first time it meets a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_smoke_writes_every_figure(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--smoke", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["smoke"] and not data["errors"] and data["facts"]["device"] == "cpu"
    parts = data["parts"]
    assert set(parts) == {"association", "speech2face", "exact_search", "encoders", "ivfpq_capacity"}
    cap = parts["ivfpq_capacity"]
    assert cap["codes_held"] == 200_000 and cap["codes_gb"] == pytest.approx(200_000 * 72 / 1e9)
    assert cap["queries_per_s"] > 0 and not cap["fits_1e9"]
    a = parts["association"]
    assert all(a[k] > 0 for k in ("fp32_batch8", "bf16_batch8", "fp32_largest", "bf16_largest"))
    assert a["fp32_largest_batch"] == 16  # doubling from 8 up to the smoke's limit
    assert parts["speech2face"]["bf16_batch8"] > 0 and parts["exact_search"]["gallery"] == 10_000
    assert all(parts["exact_search"][f"{t}_batch{b}_qps"] > 0 for t in ("float32", "float16") for b in (1, 1000))
    e = parts["encoders"]
    assert all(e[f"{n}_{how}_batch{b}_ms"] > 0 for n in ("face_encoder", "voice_encoder")
               for how in ("eager", "torchscript") for b in (1, 64))
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| association | bf16_batch8 |" in md and "gpu_check.json" in r.stdout


def test_parts_past_the_time_budget_are_recorded_as_skipped(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--smoke", "--out", str(tmp_path),
                        "--parts", "exact_search", "association", "--budget-s", "0"],
                       capture_output=True, text=True, env=env, timeout=600)
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    # the budget is spent before any part starts: each is recorded as skipped, and the exit says so
    assert r.returncode == 1 and set(data["errors"]) == {"exact_search", "association"}
    assert all("budget" in v for v in data["errors"].values()) and data["parts"] == {}
