"""The history checker (bench/history.py): it finds each anomaly it looks for in a history made to
have it, passes a clean one, and a short real run (two replicas, writers, searchers and a nemesis
of replica SIGKILLs, Redis restarts and index rebuilds) on the file log and on the Redis stream
gives no anomaly."""

from __future__ import annotations

import pytest

from bench.history import Op, check, run_history
from tests.serving import copy_indexes, media

BASE = frozenset({"g1", "g2"})


def search(replica: str, t: float, *items: str) -> Op:
    return Op("s", "search", replica, t, t + 0.05, "OK", seen=BASE | set(items))


def clean() -> list[Op]:
    return [Op("w", "upsert", "a", 1.0, 1.1, "OK", ("x",)),
            search("a", 1.2, "x"), search("b", 1.3, "x"), search("b", 9.0, "x"),
            Op("w", "delete", "b", 10.0, 10.1, "OK", ("x",)),
            search("a", 10.2), search("b", 10.3), search("a", 20.0), search("b", 20.0)]


def test_a_clean_history_passes_and_its_lag_is_measured():
    got = check(clean(), {"a": BASE, "b": BASE}, bound_s=5.0)
    assert got.anomalies == [] and got.ops["upsert ok"] == 1 and got.ops["search ok"] == 7
    assert got.lags == [pytest.approx(0.25)]  # ack at 1.1, first on b ending at 1.35


@pytest.mark.parametrize(("edit", "finals", "anomaly"), [
    (lambda h: [*h[:3], search("b", 9.0), *h[4:]], None, "acknowledged upsert not visible"),
    (lambda h: [*h, search("a", 30.0, "x")], None, "deleted item returned"),
    (lambda h: [*h[:5], search("a", 10.2), search("a", 10.4, "x"), *h[6:]], None,
     "went back in time: a gone item came back"),
    (lambda h: [*h[:2], search("a", 1.3), *h[2:]], None, "went back in time: a present item vanished"),
    (lambda h: h[:4], {"a": BASE, "b": BASE}, "acknowledged upsert lost after restart"),
    (lambda h: h, {"a": BASE | {"x"}, "b": BASE}, "acknowledged delete undone after restart"),
])
def test_the_checker_finds_each_anomaly(edit, finals, anomaly):
    got = check(edit(clean()), finals or {"a": BASE, "b": BASE}, bound_s=5.0)
    assert anomaly in {a["anomaly"] for a in got.anomalies}, got.anomalies


def test_an_indeterminate_write_is_allowed_either_way():
    h = [Op("w", "upsert", "a", 1.0, 1.1, "UNAVAILABLE", ("y",)), search("a", 2.0), search("b", 8.0, "y"),
         Op("w", "delete", "a", 9.0, 9.2, "DEADLINE_EXCEEDED", ("y",)), search("a", 9.1, "y"), search("a", 30.0)]
    assert check(h, {"a": BASE, "b": BASE | {"y"}}, bound_s=5.0).anomalies == []


@pytest.mark.parametrize("log_kind", ["file", "redis"])
def test_a_short_history_under_faults_has_no_anomaly(stack, tmp_path, log_kind):
    root = copy_indexes(stack, tmp_path / "indexes")
    build = ["--gallery", str(stack.corpus / "manifest.csv"), "--model-repo", str(stack.repo), "--modalities", "face"]
    got = run_history(stack.repo, root, media(stack, "toy007", "face", 0), media(stack, "toy005", "voice"), build,
                      log_kind, seconds=30, seed=3, fault_every_s=(3.0, 6.0), progress=False, min_faults=3)
    assert got["anomalies"] == [], got["anomalies"][:5]
    assert got["by_kind"].get("upsert ok", 0) >= 20 and got["by_kind"].get("search ok", 0) >= 50
    assert got["by_kind"].get("delete ok", 0) >= 1
    assert sum(got["faults"].values()) >= 3 and got["lag_ms"]["n"] >= 10
