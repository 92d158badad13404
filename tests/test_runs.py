"""metrics.csv across resumes, including a run logged before a column was added."""

from __future__ import annotations

import csv

from facevoice.training.runs import RunLog


def _rows(path):
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_resume_appends_under_the_same_header(tmp_path):
    log = RunLog(tmp_path, False, ("step", "loss"))
    log.write({"step": 1, "loss": 0.5})
    log.close()
    log = RunLog(tmp_path, True, ("step", "loss"))
    log.write({"step": 2, "loss": 0.25})
    log.close()
    header, rows = _rows(tmp_path / "metrics.csv")
    assert header == ["step", "loss"] and [r["step"] for r in rows] == ["1", "2"]


def test_resume_of_an_older_log_rewrites_it_under_the_new_columns(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,loss,lr\n1,0.5,0.001\n")
    log = RunLog(tmp_path, True, ("step", "loss", "ranking", "lr"))
    log.write({"step": 2, "loss": 0.25, "ranking": 3.0, "lr": 0.0005})
    log.close()
    header, rows = _rows(tmp_path / "metrics.csv")
    assert header == ["step", "loss", "ranking", "lr"]
    assert rows[0] == {"step": "1", "loss": "0.5", "ranking": "", "lr": "0.001"}
    assert rows[1] == {"step": "2", "loss": "0.25", "ranking": "3.0", "lr": "0.0005"}


def test_a_fresh_run_replaces_an_old_log(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,loss\n1,0.5\n")
    RunLog(tmp_path, False, ("step", "loss")).close()
    assert _rows(tmp_path / "metrics.csv") == (["step", "loss"], [])
