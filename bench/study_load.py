"""The human study under load -> docs/benchmarks.md (section study-load) and docs/study.md's figures.

    python -m bench.study_load --participants 300 [--smoke] [--doc PATH]

Two `facevoice study serve` replicas on one real PostgreSQL, as deploy/compose.yaml runs them
(without the TLS proxy, so no TLS cost is measured; each participant goes to a replica in turn,
as the proxy's round robin does, and names their own address in X-Forwarded-For, which
`[joins] trust_proxy` reads). All
participants start at once. Each does what the page does: join, consent, the questionnaire, then
every task: fetch its three stimuli, wait out the clip(s) (the listening check is on, with 1 s
clips), report the playback, answer; 10% of the answers are sent twice, as after a lost reply;
then finish. Measured:
- answers lost: acknowledged (200) but not stored, or stored with another choice (must be 0);
- duplicates: a resent answer not acknowledged as a repeat (stored again), or more answers stored
  than acknowledged (must be 0; a trial row holds one answer by its key);
- the balancing: participants per experiment, and the spread (largest minus smallest);
- answer latency p50 / p99 under load, against one participant alone (the baseline, same run).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.report import machine, parse, publish
from devtools.local_servers import LocalPostgres, LocalStudy
from devtools.study_helpers import answers, make_study
from facevoice.cli import run_script
from facevoice.training.corpus.synth import SynthConfig, build_corpus


class Session:
    """One participant's HTTP client (keep-alive off, as many browsers behind one proxy look)."""

    def __init__(self, base: str, address: str):
        self.base, self.address = base, address

    def call(self, method: str, path: str, body=None) -> tuple[int, dict | bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", "X-Forwarded-For": self.address})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                payload, ctype, status = r.read(), r.headers.get("content-type", ""), r.status
        except urllib.error.HTTPError as e:
            payload, ctype, status = e.read(), e.headers.get("content-type", ""), e.code
        return status, (json.loads(payload) if ctype.startswith("application/json") and payload else payload)


def participant(base: str, k: int, start: threading.Barrier | None, out: dict, rng: random.Random) -> None:
    s = Session(base, f"10.{k // 65536 % 256}.{k // 256 % 256}.{k % 256}")
    rec = {"acked": {}, "resent": 0, "resent_repeated": 0, "latency": [], "errors": []}
    out[k] = rec
    if start is not None:
        start.wait()
    try:
        status, p = s.call("POST", "/api/participants", {"role": "match"})
        if status != 201:
            rec["errors"].append(f"join {status}: {p}")
            return
        code = p["code"]
        rec.update(code=code, experiment=p["experiment"])
        for path, body in ((f"/api/participants/{code}/consent", {"agree": True}),
                           (f"/api/participants/{code}/survey", {"answers": answers()})):
            status, reply = s.call("POST", path, body)
            if status != 200:
                rec["errors"].append(f"{path} {status}: {reply}")
                return
        plan = s.call("GET", f"/api/participants/{code}/trials")[1]
        audio = ("query",) if p["direction"] == "V->F" else ("0", "1")
        for t in plan["trials"]:
            base_path = f"/api/participants/{code}/trials/{t['index']}"
            for slot in ("query", "0", "1"):
                s.call("GET", f"{base_path}/media/{slot}")
            time.sleep(plan["clip_seconds"] * len(audio) + 0.05)
            for slot in audio:
                status, reply = s.call("POST", f"{base_path}/played", {"slot": slot})
                if status != 200:
                    rec["errors"].append(f"played {status}: {reply}")
            choice = rng.randrange(2)
            began = time.perf_counter()
            status, reply = s.call("POST", f"{base_path}/answer", {"choice": choice, "rt_ms": 1000.0})
            rec["latency"].append(time.perf_counter() - began)
            if status == 200:
                rec["acked"][t["index"]] = choice
            else:
                rec["errors"].append(f"answer {status}: {reply}")
            if rng.random() < 0.1:  # the reply was lost: the page sends it again
                rec["resent"] += 1
                status, reply = s.call("POST", f"{base_path}/answer", {"choice": choice, "rt_ms": 1000.0})
                rec["resent_repeated"] += status == 200 and reply.get("repeated") is True
        status, reply = s.call("POST", f"/api/participants/{code}/finish")
        rec["finished"] = status == 200
    except Exception as e:  # a refused connection, a timeout: counted, not hidden
        rec["errors"].append(repr(e))


def run_load(urls: list[str], n: int, seed: int) -> tuple[dict, float]:
    out: dict = {}
    start = threading.Barrier(n)
    threads = [threading.Thread(target=participant, args=(urls[k % len(urls)], k, start, out, random.Random(seed + k)),
                                daemon=True) for k in range(n)]
    began = time.monotonic()
    for t in threads:
        t.start()
    with tqdm(total=n, desc="participants finished", unit="p") as bar:
        done = 0
        while done < n:
            time.sleep(1)
            now = sum(not t.is_alive() for t in threads)
            bar.update(now - done)
            done = now
    return out, time.monotonic() - began


def stored(url: str) -> dict[tuple[str, int], tuple[int | None, int]]:
    """(code, trial) -> (choice, how many rows), straight from PostgreSQL."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT code, idx, chosen, COUNT(*) FROM trials GROUP BY code, idx, chosen").fetchall()
    out: dict = {}
    for code, idx, chosen, count in rows:
        prev = out.get((code, idx), (None, 0))
        out[(code, idx)] = (chosen, prev[1] + count)
    return out


def summarize(results: dict, db: dict) -> dict:
    acked = {(r["code"], i): c for r in results.values() if "code" in r for i, c in r["acked"].items()}
    lost = sum(1 for key, c in acked.items() if db.get(key, (None, 0))[0] != c)
    stored_answers = sum(1 for chosen, _ in db.values() if chosen is not None)
    resent = sum(r["resent"] for r in results.values())
    resent_ok = sum(r["resent_repeated"] for r in results.values())
    per = Counter(r["experiment"] for r in results.values() if "experiment" in r)
    lat = np.array([x for r in results.values() for x in r["latency"]]) * 1000
    return {"participants": len(results), "joined": sum("code" in r for r in results.values()),
            "finished": sum(bool(r.get("finished")) for r in results.values()),
            "answers_acknowledged": len(acked), "answers_lost": lost,
            # a resent answer not acknowledged as a repeat, or an answer stored that was never acknowledged
            "duplicates": (resent - resent_ok) + max(0, stored_answers - len(acked)),
            "resent": resent, "resent_counted_once": resent_ok, "per_experiment": dict(sorted(per.items())),
            "spread": (max(per.values()) - min(per.values())) if per else None,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "errors": [e for r in results.values() for e in r["errors"]][:10],
            "error_count": sum(len(r["errors"]) for r in results.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", type=int, default=300)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-publish", action="store_true")
    args = parse(ap, argv, smoke={"participants": 3})
    tmp = Path(tempfile.mkdtemp(prefix="facevoice-study-load-"))
    print("building a 40-person synthetic corpus for the stimuli ...")
    corpus = tmp / "corpus"
    build_corpus(corpus, SynthConfig(identities=40, seed=11, faces=1, clips=1, workers=2, oracle_trials=200,
                                     oracle_population=200), force=True, progress=False)
    study = make_study(tmp / "study", corpus, clip_seconds=1.0, enforce=True)
    toml = (study / "study.toml").read_text()
    (study / "study.toml").write_text(toml.replace("[joins]\n", "[joins]\ntrust_proxy = true\n"))
    with LocalPostgres() as pg:
        replicas = [LocalStudy(study, pg.url).start() for _ in range(args.replicas)]
        try:
            urls = [r.url for r in replicas]
            alone, _ = run_load(urls[:1], 1, args.seed + 10_000)  # the baseline: one participant, no load
            base = summarize(alone, stored(pg.url))
            pg.reset()
            for r in replicas:  # a fresh schema in the fresh database
                r.stop()
                r.start()
            results, seconds = run_load(urls, args.participants, args.seed)
            s = summarize(results, stored(pg.url))
        finally:
            for r in replicas:
                r.stop()
    s["seconds"], s["baseline_p50_ms"], s["baseline_p99_ms"] = seconds, base["p50_ms"], base["p99_ms"]
    print(json.dumps(s, indent=2))
    body = "\n".join([
        "## The human study under load (`bench/study_load.py`)", "",
        f"Command: `python -m bench.study_load --participants {args.participants}`. Machine: {machine()}.", "",
        f"{args.participants} participants at once against {args.replicas} `facevoice study serve` replicas on one "
        "PostgreSQL (1 s clips, the listening check on, 10% of the answers sent twice); the baseline is one "
        "participant alone, measured in the same run.", "",
        "| | value |", "|---|---|",
        f"| joined / finished | {s['joined']} / {s['finished']} of {s['participants']} |",
        f"| answers acknowledged | {s['answers_acknowledged']} |",
        f"| answers lost (acknowledged, not stored as sent) | {s['answers_lost']} |",
        f"| duplicates (a resent answer stored again; answers stored beyond those acknowledged) | {s['duplicates']} "
        f"({s['resent_counted_once']} of {s['resent']} resent answers answered as repeats) |",
        f"| participants per experiment | {s['per_experiment']} (spread {s['spread']}) |",
        f"| answer latency p50 / p99, alone (baseline) | {s['baseline_p50_ms']:.1f} / {s['baseline_p99_ms']:.1f} ms |",
        f"| answer latency p50 / p99, under load | {s['p50_ms']:.1f} / {s['p99_ms']:.1f} ms |",
        f"| ratio to baseline, p50 / p99 | {s['p50_ms'] / s['baseline_p50_ms']:.1f} / "
        f"{s['p99_ms'] / s['baseline_p99_ms']:.1f} |",
        f"| errors | {s['error_count']} {s['errors'][:3] if s['errors'] else ''} |",
        f"| wall time | {seconds:.0f} s |"])
    if not args.no_publish:
        publish("study-load", body, args)
    else:
        print(body)
    return 0 if s["answers_lost"] == 0 and s["duplicates"] == 0 else 1


if __name__ == "__main__":
    run_script(main, "python -m bench.study_load")
