"""A history checker for the gallery, in the style of Jepsen's -> docs/reliability.md.

    python -m bench.history --model-repo models/demo --index-root demo/indexes --corpus demo/corpus \
        --seconds 600 --log file redis [--smoke] [--doc PATH]

Two replicas (`facevoice serve` processes) share one gallery write log: the file log of their index
root, or a Redis stream. For `--seconds`, on loopback:
- writers upsert new items (each id once) and delete items they upserted, on either replica;
- searchers ask each replica for its whole gallery (SearchFaces, top_k 1000);
- a nemesis injects faults at random: a replica SIGKILLed (and restarted), Redis killed and
  restarted on its AOF, Triton killed and restarted (with `--triton`), an index rebuild that
  publishes new versions the replicas swap to;
every operation is recorded with its invoke and completion times and its result. After the last
fault every replica is restarted, and each gallery is read once more.

`check` then verifies the history:
- visible: every acknowledged upsert is in every search of every replica invoked more than
  `bound_s` after its acknowledgement (unless a delete of it was invoked before that search ended);
- erased: no acknowledged delete is in a search invoked more than `bound_s` after it;
- durable: after everything restarted, every acknowledged upsert not deleted is there, and every
  acknowledged delete is not;
- monotonic: on each replica, a search that starts after another one ended never shows an older
  gallery: an item seen gone does not come back, an item seen present does not vanish unless a
  delete of it was invoked.
A write that failed with UNAVAILABLE, DEADLINE_EXCEEDED or INTERNAL may or may not have happened
(the replica may have died after appending it): it is indeterminate, and allowed either way.
`tests/test_history.py` runs a short version, and feeds `check` histories with each anomaly.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from devtools.local_servers import LocalRedis, LocalService, LocalTriton
from facevoice.cli import run_script
from facevoice.v1 import facevoice_pb2 as pb

INDETERMINATE = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "CANCELLED"}


@dataclass
class Op:
    process: str
    kind: str  # upsert | delete | search
    replica: str
    invoke: float
    complete: float = 0.0
    result: str = ""  # OK, or the gRPC status code's name
    item_ids: tuple[str, ...] = ()
    seen: frozenset[str] | None = None  # a search's whole answer

    @property
    def ok(self) -> bool:
        return self.result == "OK"

    @property
    def maybe(self) -> bool:
        """Acknowledged, or indeterminate: it may have taken effect."""
        return self.ok or self.result in INDETERMINATE


@dataclass
class Checked:
    ops: Counter = field(default_factory=Counter)
    anomalies: list[dict] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)  # ack -> first search on another replica showing it

    def add(self, kind: str, **what) -> None:
        self.anomalies.append({"anomaly": kind, **what})


def check(ops: list[Op], finals: dict[str, frozenset[str]], bound_s: float, watched: set[str] | None = None) -> Checked:
    """The four properties above over a recorded history; `finals` are the galleries read after
    every restart; `watched`: the item ids the writers made (others are the gallery's own)."""
    def outcome(o: Op) -> str:
        return "ok" if o.ok else "indeterminate" if o.maybe and o.kind != "search" else "failed"

    out = Checked(Counter(f"{o.kind} {outcome(o)}" for o in ops))
    upserted = {o.item_ids[0]: o for o in ops if o.kind == "upsert" and o.ok}
    maybe_upserted = {o.item_ids[0]: o for o in ops if o.kind == "upsert" and o.maybe}
    deleted = {o.item_ids[0]: o for o in ops if o.kind == "delete" and o.ok}
    maybe_deleted = {o.item_ids[0]: o for o in ops if o.kind == "delete" and o.maybe}
    watched = watched if watched is not None else set(maybe_upserted) | set(maybe_deleted)
    searches = sorted((o for o in ops if o.kind == "search" and o.ok), key=lambda o: o.invoke)
    for replica in sorted({o.replica for o in searches}):
        mine = [s for s in searches if s.replica == replica]
        invokes = [s.invoke for s in mine]
        last_seen: dict[str, float] = {}
        for s in mine:
            for item_id in s.seen & watched:
                last_seen[item_id] = s.invoke
        for item_id, up in upserted.items():
            d = maybe_deleted.get(item_id)
            i = bisect.bisect_left(invokes, up.complete)
            if replica != up.replica:  # the lag: from the acknowledgement to the first search that shows it
                first = next((s for s in mine[i:] if item_id in s.seen), None)
                if first is not None:
                    out.lags.append(first.complete - up.complete)
            for s in mine[bisect.bisect_right(invokes, up.complete + bound_s):]:
                if d and d.invoke < s.complete:
                    break
                if item_id not in s.seen:
                    out.add("acknowledged upsert not visible", item=item_id, replica=replica, at=s.invoke,
                            acknowledged=up.complete)
                    break
        for item_id, d in deleted.items():
            if last_seen.get(item_id, -1.0) > d.complete + bound_s:
                out.add("deleted item returned", item=item_id, replica=replica, at=last_seen[item_id],
                        acknowledged=d.complete)
        # monotonic: per item 0 (not yet), 1 (present), 2 (gone after present), merged from the
        # searches that ended before this one began
        best: dict[str, int] = {}
        ones: set[str] = set()
        ended: list[tuple[float, int, dict[str, int]]] = []
        for n, s in enumerate(mine):
            while ended and ended[0][0] < s.invoke:
                for item_id, st in heapq.heappop(ended)[2].items():
                    if st > best.get(item_id, 0):
                        best[item_id] = st
                        (ones.add if st == 1 else ones.discard)(item_id)
            states = {}
            for item_id in s.seen & watched:
                if best.get(item_id, 0) == 2:
                    out.add("went back in time: a gone item came back", item=item_id, replica=replica,
                            at=s.invoke)
                states[item_id] = 1
            for item_id in ones - s.seen:
                d = maybe_deleted.get(item_id)
                if not (d and d.invoke < s.complete):
                    out.add("went back in time: a present item vanished", item=item_id, replica=replica,
                            at=s.invoke)
                states[item_id] = 2
            heapq.heappush(ended, (s.complete, n, states))
    for replica, gallery in finals.items():
        for item_id in upserted:
            if item_id not in maybe_deleted and item_id not in gallery:
                out.add("acknowledged upsert lost after restart", item=item_id, replica=replica)
        for item_id in deleted:
            if item_id in gallery:
                out.add("acknowledged delete undone after restart", item=item_id, replica=replica)
    return out


# running it ------------------------------------------------------------------------------------
class Cluster:
    """Two replicas on one index root and one log (file or Redis), Redis (cache, announcements,
    and with --log redis the log), and optionally Triton under them."""

    def __init__(self, repo: Path, root: Path, log_kind: str, work: Path, triton: bool):
        self.repo, self.root, self.log_kind, self.work = repo, root, log_kind, work
        self.redis = LocalRedis(data_dir=work / "redis").start()
        self.triton = LocalTriton(repo, workdir=work / "triton").start() if triton else None
        extra = ["--redis-url", self.redis.url, "--poll-s", "0.5", "--workers", "8"]
        if log_kind == "file":
            extra += ["--gallery-log", "file"]
        if self.triton is not None:
            extra += ["--triton-url", self.triton.grpc_url]
        self.replicas = {name: LocalService(repo, root, *extra) for name in ("a", "b")}
        for r in self.replicas.values():
            r.start()

    def stop(self) -> None:
        for r in self.replicas.values():
            r.stop()
        if self.triton is not None:
            self.triton.stop()
        self.redis.stop()


def _code(e: grpc.RpcError) -> str:
    return e.code().name


def run_history(repo: Path, index_root: Path, face: bytes, voice: bytes, build_args: list[str], log_kind: str,
                seconds: float, seed: int = 0, triton: bool = False, bound_s: float = 5.0,
                fault_every_s: tuple[float, float] = (4.0, 10.0), progress: bool = True, min_faults: int = 0) -> dict:
    """One history on a private copy of `index_root`; the figures and anomalies as a dict. It runs
    `seconds`, and on past them (to four times as long) until `min_faults` faults have been
    injected: an index rebuild on a busy machine can take most of a short history."""
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix=f"facevoice-history-{log_kind}-"))
    root = work / "indexes"
    shutil.copytree(index_root, root, ignore=shutil.ignore_patterns(".gallery-log", ".build", ".shards"))
    cluster = Cluster(repo, root, log_kind, work, triton)
    ops: list[Op] = []
    lock = threading.Lock()
    stop = threading.Event()
    faults: list[dict] = []
    live: list[str] = []
    counter = iter(range(10**9))

    def record(op: Op) -> None:
        with lock:
            ops.append(op)

    def writer(name: str, wrng: random.Random) -> None:
        while not stop.is_set():
            replica = wrng.choice("ab")
            stub = cluster.replicas[replica].stub
            with lock:
                victim = live.pop(wrng.randrange(len(live))) if len(live) > 40 and wrng.random() < 0.6 else None
            if victim is None:
                item_id = f"h-{name}-{next(counter)}"
                op = Op(name, "upsert", replica, time.time(), item_ids=(item_id,))
                try:
                    stub.UpsertItems(pb.UpsertItemsRequest(items=[pb.GalleryItem(
                        item_id=item_id, identity=item_id, media=pb.Media(image=pb.Image(data=face)))]), timeout=10)
                    op.result = "OK"
                    with lock:
                        live.append(item_id)
                except grpc.RpcError as e:
                    op.result = _code(e)
            else:
                op = Op(name, "delete", replica, time.time(), item_ids=(victim,))
                try:
                    stub.DeleteItems(pb.DeleteItemsRequest(modality=pb.FACE, item_ids=[victim]), timeout=10)
                    op.result = "OK"
                except grpc.RpcError as e:
                    op.result = _code(e)
                    if op.result not in INDETERMINATE:
                        with lock:
                            live.append(victim)
            op.complete = time.time()
            record(op)
            stop.wait(wrng.uniform(0.02, 0.15))

    def searcher(name: str, replica: str) -> None:
        request = pb.SearchFacesRequest(voice=pb.Audio(data=voice), top_k=1000)
        while not stop.is_set():
            op = Op(name, "search", replica, time.time())
            try:
                hits = cluster.replicas[replica].stub.SearchFaces(request, timeout=10).hits
                op.result, op.seen = "OK", frozenset(h.item_id for h in hits)
            except grpc.RpcError as e:
                op.result = _code(e)
            op.complete = time.time()
            record(op)
            stop.wait(0.02 if op.ok else 0.2)

    def nemesis() -> None:
        kinds = ["kill replica", "restart redis", "rebuild index"] + (["kill triton"] if triton else [])
        while not stop.wait(rng.uniform(*fault_every_s)):
            kind = rng.choice(kinds)
            start = time.time()
            try:
                if kind == "kill replica":
                    name = rng.choice("ab")
                    cluster.replicas[name].kill()
                    time.sleep(rng.uniform(0.5, 2.0))
                    cluster.replicas[name].start()
                    what = name
                elif kind == "restart redis":
                    port = cluster.redis.port
                    cluster.redis.kill()
                    time.sleep(rng.uniform(0.5, 2.0))
                    cluster.redis = LocalRedis(port=port, data_dir=work / "redis").start()
                    what = f"port {port}"
                elif kind == "kill triton":
                    cluster.triton.kill()
                    time.sleep(rng.uniform(0.5, 2.0))
                    cluster.triton.start()
                    what = "triton"
                else:
                    extra = ["--redis", cluster.redis.url] + (["--gallery-log", "file"] if log_kind == "file" else [])
                    run = subprocess.run([sys.executable, "-m", "facevoice", "index", "build", *build_args, "--out",
                                          str(root), "--no-progress", *extra], capture_output=True, text=True,
                                         timeout=600)
                    what = "published" if run.returncode == 0 else f"failed: {run.stderr.strip()[-200:]}"
            except Exception as e:  # a fault that could not be injected is recorded, not fatal
                what = f"could not inject: {e}"
            faults.append({"fault": kind, "at": start, "seconds": round(time.time() - start, 2), "what": what})
            if progress:
                print(f"  [{log_kind} {time.time() - t0:5.0f} s] {kind} ({what}); {len(ops)} operations",
                      flush=True)

    t0 = time.time()
    threads = [threading.Thread(target=writer, args=(f"writer-{i}", random.Random(seed * 100 + i)), daemon=True)
               for i in range(2)]
    threads += [threading.Thread(target=searcher, args=(f"searcher-{r}", r), daemon=True) for r in "ab"]
    threads.append(threading.Thread(target=nemesis, daemon=True))
    try:
        for t in threads:
            t.start()
        stop.wait(seconds)
        while len(faults) < min_faults and time.time() < t0 + 4 * seconds:
            time.sleep(0.2)
        ran_s = time.time() - t0
        stop.set()
        for t in threads:
            t.join(120)
        # everything restarts, then each gallery is read once more
        for r in cluster.replicas.values():
            r.kill()
            r.start()
        time.sleep(bound_s)
        finals = {}
        for name, r in cluster.replicas.items():
            hits = r.stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=voice), top_k=1000), timeout=30).hits
            finals[name] = frozenset(h.item_id for h in hits)
    finally:
        stop.set()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    checked = check(ops, finals, bound_s)
    lags = sorted(checked.lags)

    def q(p: float) -> float:
        return lags[min(len(lags) - 1, int(p * len(lags)))] * 1000 if lags else float("nan")

    return {"log": log_kind, "seconds": round(ran_s, 1), "asked_seconds": seconds, "bound_s": bound_s,
            "operations": sum(checked.ops.values()),
            "by_kind": dict(checked.ops), "faults": Counter(f["fault"] for f in faults), "fault_list": faults,
            "anomalies": checked.anomalies, "lag_ms": {"p50": q(0.5), "p99": q(0.99), "max": q(1.0),
                                                       "n": len(lags)},
            "lag_median_ms": statistics.median(lags) * 1000 if lags else float("nan")}


def section(results: list[dict], command: str, machine_line: str) -> str:
    lines = ["## History checker (issue 31)", "", f"Command: `{command}` on {machine_line}.", "",
             "Two replicas, two writers (upserts of new ids, deletes of their own), a searcher per replica "
             "reading the whole gallery, and a nemesis; then every replica restarted and read once more. "
             "`bench/history.py` says what is checked. Lag: from an upsert's acknowledgement to the end of "
             "the first search on the *other* replica that shows it (an upper bound; it includes the "
             "times that replica was down).", "",
             "| log | seconds | operations checked | faults injected | lag p50 / p99 / max | anomalies |",
             "|---|---|---|---|---|---|"]
    for r in results:
        faults = ", ".join(f"{n} {k}" for k, n in sorted(r["faults"].items()))
        ops = ", ".join(f"{n} {k}" for k, n in sorted(r["by_kind"].items()))
        lag = r["lag_ms"]
        lines.append(f"| {r['log']} | {r['seconds']:.0f} | {r['operations']} ({ops}) | {faults or 'none'} | "
                     f"{lag['p50']:.0f} / {lag['p99']:.0f} / {lag['max']:.0f} ms | {len(r['anomalies'])} |")
    for r in results:
        for a in r["anomalies"][:10]:
            lines.append(f"- {r['log']}: {json.dumps(a)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.reliability import DOC
    from bench.report import MADE, add_demo_arguments, machine, parse, publish, smoke_release
    from facevoice.service.build import gallery_rows

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_demo_arguments(p)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--log", nargs="+", default=["file", "redis"], choices=["file", "redis"])
    p.add_argument("--triton", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fault-every", type=float, nargs=2, default=(4.0, 10.0), metavar=("MIN_S", "MAX_S"),
                   help="the nemesis's pause between faults, drawn between these")
    p.add_argument("--bound-s", type=float, default=5.0, help="how soon a write must be visible on every replica")
    args = smoke_release(parse(p, argv, DOC, smoke={"corpus": MADE, "index_root": MADE, "seconds": 3.0,
                                                    "fault_every": (1.0, 2.0), "bound_s": 2.0, "log": ["redis"]}))
    rows = gallery_rows(args.corpus / "manifest.csv", None)  # a photo of the corpus (not its contact sheet)
    face, voice = rows["face"][0].path.read_bytes(), rows["voice"][0].path.read_bytes()
    build = ["--gallery", str(args.corpus / "manifest.csv"), "--model-repo", str(args.model_repo), "--split", "test",
             "--modalities", "face"]
    results = [run_history(args.model_repo, args.index_root, face, voice, build, kind, args.seconds, args.seed,
                           args.triton, args.bound_s, tuple(args.fault_every)) for kind in args.log]
    command = "python -m bench.history " + " ".join(sys.argv[1:] if argv is None else argv)
    publish("history", section(results, command, machine()), args)
    return 0 if not any(r["anomalies"] for r in results) else 1


if __name__ == "__main__":
    run_script(main, "python -m bench.history")
