"""Reliability figures of the service -> docs/reliability.md (a benchmark, not a timed test).

    python -m bench.reliability --model-repo models/demo --index-root demo/indexes --corpus demo/corpus \
        [--smoke] [--doc PATH]

Every service runs as its own `facevoice serve` process on a private copy of the index root:
- fuzz: mutated real WAV / PNG files (bit flips, truncation, splices, lying headers) through
  every media RPC; the count by status code, whether the server is alive, its RSS before/after;
- soak: the maximum QPS of SearchFaces is measured, then held at 70% of it for --soak-s seconds;
  p50 / p99, RSS and errors per minute;
- faults under load (searches and acknowledged writes running): Redis killed and restarted,
  Triton killed and restarted, an index swap, a rebuild killed halfway, a replica SIGKILLed right
  after acknowledging writes; failed calls, time to recover, acknowledged writes lost;
- replication: write on replica A, visible on replica B: p50 / p99, file log and Redis stream.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc

from bench.report import MADE, SMOKE_NOTE, add_demo_arguments, machine, parse, sections_of, smoke_release
from devtools.local_servers import Background, LocalRedis, LocalService, LocalTriton
from facevoice.cli import run_script
from facevoice.v1 import facevoice_pb2 as pb

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


# inputs ---------------------------------------------------------------------------------------
def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutation of a real file; (what, bytes)."""
    kind = rng.choice(["bitflip", "truncate", "splice", "header", "empty", "repeat"])
    b = bytearray(data)
    if kind == "bitflip":
        for _ in range(rng.randint(1, 64)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        b = b[:rng.randrange(len(b))]
    elif kind == "splice":
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        b = b[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 512))) + b[j:]
    elif kind == "header":  # sizes and counts that lie: RIFF / data lengths, PNG chunk lengths
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(min(64, len(b) - 4))
            b[i:i + 4] = rng.choice([b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"])
    elif kind == "empty":
        b = bytearray()
    else:
        b = b * rng.randint(2, 4)
    return kind, bytes(b)


def requests_for(kind: str, data: bytes, good_face: bytes, good_voice: bytes):
    """(rpc name, request) pairs that carry the mutated bytes in each place media goes."""
    a, i = pb.Audio(data=data), pb.Image(data=data)
    if kind == "audio":
        return [("SearchFaces", pb.SearchFacesRequest(voice=a, top_k=5)),
                ("ReconstructFace", pb.ReconstructFaceRequest(voice=a)),
                ("Embed", pb.EmbedRequest(media=pb.Media(audio=a))),
                ("Match", pb.MatchRequest(probe=pb.Media(audio=a),
                                          candidates=[pb.Media(image=pb.Image(data=good_face))] * 2)),
                ("UpsertItems", pb.UpsertItemsRequest(items=[pb.GalleryItem(item_id="fuzz", media=pb.Media(audio=a))]))]
    return [("SearchVoices", pb.SearchVoicesRequest(face=i, top_k=5)),
            ("Embed", pb.EmbedRequest(media=pb.Media(image=i))),
            ("Match", pb.MatchRequest(probe=pb.Media(audio=pb.Audio(data=good_voice)),
                                      candidates=[pb.Media(image=i)] * 2)),
            ("UpsertItems", pb.UpsertItemsRequest(items=[pb.GalleryItem(item_id="fuzz", media=pb.Media(image=i))]))]


def corpus_media(corpus: Path) -> tuple[list[bytes], list[bytes], list[bytes]]:
    wavs = [p.read_bytes() for p in sorted(corpus.rglob("*.wav"))[:40]]
    pngs = [p.read_bytes() for p in sorted((corpus / "faces").rglob("*.png"))[:40]]  # not the contact sheet
    jpgs = []
    from io import BytesIO

    from PIL import Image

    for png in pngs[:20]:
        out = BytesIO()
        Image.open(BytesIO(png)).convert("RGB").save(out, "JPEG", quality=85)
        jpgs.append(out.getvalue())
    # the compressed formats real clients send, made from the corpus's own clips
    import soundfile as sf

    from devtools.media_samples import encode

    compressed = []
    for wav in wavs[:8]:
        x, sr = sf.read(BytesIO(wav), dtype="float32")
        compressed += [encode(x, sr, name) for name in ("mp3", "m4a", "webm-opus", "mp4-video")]
    return wavs + compressed, pngs, jpgs


# the parts -------------------------------------------------------------------------------------
def call(stub, name: str, request, timeout: float = 30.0) -> str:
    try:
        getattr(stub, name)(request, timeout=timeout)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def fuzz(svc: LocalService, n: int, media: tuple, rng: random.Random) -> dict:
    wavs, pngs, jpgs = media
    rss0 = svc.rss_mb()
    rss: list[tuple[int, float]] = []
    codes: Counter = Counter()
    by_kind: Counter = Counter()
    start = time.perf_counter()
    for k in range(n):
        if k % 2 == 0:
            kind, data = mutate(rng.choice(wavs), rng)
            reqs = requests_for("audio", data, pngs[0], wavs[0])
        else:
            kind, data = mutate(rng.choice(pngs + jpgs), rng)
            reqs = requests_for("image", data, pngs[0], wavs[0])
        name, request = reqs[k // 2 % len(reqs)]
        code = call(svc.stub, name, request)
        codes[code] += 1
        by_kind[kind] += 1
        if k % 1000 == 999:
            rss.append((k + 1, svc.rss_mb()))
            print(f"  fuzz {k + 1}/{n}: {dict(codes)}, RSS {rss[-1][1]:.0f} MB", flush=True)
    alive = call(svc.stub, "GetIndexInfo", pb.GetIndexInfoRequest()) == "OK" and svc.proc.poll() is None
    return {"n": n, "codes": dict(codes), "mutations": dict(by_kind), "alive": alive, "rss_before": rss0,
            "rss_after": svc.rss_mb(), "rss_by_1000": rss, "seconds": time.perf_counter() - start}


class Load(Background):
    """Searches from `threads` clients (at most `qps` in all when given), with every latency and
    failure kept, until the block ends."""

    def __init__(self, stub, request, threads: int = 4, qps: float | None = None):
        self.stub, self.request, self.qps = stub, request, qps
        self.done: list[tuple[float, float, str]] = []  # (when, seconds, code)
        super().__init__([(i, threads) for i in range(threads)])

    def _run(self, i: int, n: int) -> None:
        period = n / self.qps if self.qps else 0.0
        next_at = time.perf_counter() + i * period / n
        while not self._stop.is_set():
            if period:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                next_at += period
            t = time.perf_counter()
            code = call(self.stub, "SearchFaces", self.request)
            self.done.append((t, time.perf_counter() - t, code))

    def failed(self, since: float = 0.0) -> int:
        return sum(1 for t, _, c in self.done if t >= since and c != "OK")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else (values[0] if values else float("nan"))


def soak(svc: LocalService, request, seconds: float, probe_s: float = 15.0) -> dict:
    with Load(svc.stub, request, threads=8) as probe:
        time.sleep(probe_s)
    ok = [d for d in probe.done if d[2] == "OK"]
    max_qps = len(ok) / (ok[-1][0] - ok[0][0]) if len(ok) > 1 else 0.0
    target = 0.7 * max_qps
    minutes = []
    with Load(svc.stub, request, threads=8, qps=target) as load:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            time.sleep(min(60, seconds - (time.perf_counter() - start)))
            window = [d for d in load.done if d[0] >= start + 60 * len(minutes)]
            lat = [s * 1000 for _, s, c in window if c == "OK"]
            minutes.append({"minute": len(minutes) + 1, "calls": len(window), "p50_ms": pct(lat, 50),
                            "p99_ms": pct(lat, 99), "errors": sum(1 for d in window if d[2] != "OK"),
                            "rss_mb": svc.rss_mb()})
            print(f"  soak minute {len(minutes)}: {minutes[-1]}", flush=True)
    return {"max_qps": max_qps, "target_qps": target, "probe_s": probe_s, "minutes": minutes}


class Writer(Background):
    """Upserts one new item at a time; keeps the ids whose upsert was acknowledged."""

    def __init__(self, stub, face: bytes, prefix: str):
        self.stub, self.face, self.prefix = stub, face, prefix
        self.acked: list[str] = []
        self.failed = 0
        super().__init__([()])

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            item_id = f"{self.prefix}-{k}"
            k += 1
            item = pb.GalleryItem(item_id=item_id, identity="writer", media=pb.Media(image=pb.Image(data=self.face)))
            try:
                self.stub.UpsertItems(pb.UpsertItemsRequest(items=[item]), timeout=10)
                self.acked.append(item_id)
            except grpc.RpcError:
                self.failed += 1
                time.sleep(0.05)
            time.sleep(0.02)


def present(svc: LocalService, ids: list[str], voice: bytes) -> set[str]:
    """Which of these ids the face index holds (one search as wide as the gallery)."""
    info = {i.name: i.size for i in svc.stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=30).indexes}
    hits = svc.stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=voice), top_k=min(1000, info["face"])),
                                timeout=60).hits
    return set(ids) & {h.item_id for h in hits}


def recovery(load: Load, after: float, timeout: float = 60.0) -> float:
    """Seconds from `after` to the first successful search that follows only successes."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        later = [(t, c) for t, _, c in load.done if t >= after]
        bad = [t for t, c in later if c != "OK"]
        last_bad = max(bad, default=after)
        if any(t > last_bad for t, c in later if c == "OK") and time.perf_counter() - last_bad > 2:
            return max(0.0, last_bad - after)
        time.sleep(0.2)
    return float("nan")


def faults(args, root_copy, media_, voice: bytes, face: bytes) -> list[dict]:
    rows = []
    request = pb.SearchFacesRequest(voice=pb.Audio(data=voice), top_k=5)
    work = Path(tempfile.mkdtemp(prefix="facevoice-faults-"))
    k = args.pause  # every wait below scaled by it (a smoke run's are shorter)

    def pause(seconds: float) -> None:
        time.sleep(seconds * k)

    # Redis killed and restarted (the write log and caches are there)
    redis = LocalRedis(data_dir=work / "redis").start()
    root = root_copy(work / "r1")
    svc = LocalService(args.model_repo, root, "--redis-url", redis.url, "--poll-s", "1").start()
    with Load(svc.stub, request) as load, Writer(svc.stub, face, "redis") as writer:
        pause(3)
        t0 = time.perf_counter()
        redis.kill()
        pause(3)
        redis = LocalRedis(port=redis.port, data_dir=work / "redis").start()
        back = time.perf_counter()
        n0 = len(writer.acked)
        while len(writer.acked) == n0 and time.perf_counter() - back < 30:
            time.sleep(0.05)
        write_recovery = time.perf_counter() - back
        pause(2)
    lost = len(set(writer.acked) - present(svc, writer.acked, voice))
    rows.append({"fault": f"Redis killed for {3 * k:g} s, restarted on its AOF", "failed_searches": load.failed(t0),
                 "failed_writes": writer.failed, "recover_s": f"writes {write_recovery:.2f} after restart",
                 "acked": len(writer.acked), "lost": lost})
    svc.stop()
    redis.stop()

    # Triton killed and restarted
    triton = LocalTriton(args.model_repo, workdir=work / "triton").start()
    root = root_copy(work / "r2")
    svc = LocalService(args.model_repo, root, "--triton-url", triton.grpc_url, "--gallery-log", "file").start()
    with Load(svc.stub, request) as load, Writer(svc.stub, face, "triton") as writer:
        pause(3)
        t0 = time.perf_counter()
        triton.kill()
        pause(3)
        triton.start()
        ready = time.perf_counter() - t0
        rec = recovery(load, t0)
    lost = len(set(writer.acked) - present(svc, writer.acked, voice))
    rows.append({"fault": f"Triton killed for {3 * k:g} s, restarted", "failed_searches": load.failed(t0),
                 "failed_writes": writer.failed,
                 "recover_s": f"{rec:.2f} from the kill (Triton ready again at {ready:.2f})",
                 "acked": len(writer.acked),
                 "lost": lost})
    svc.stop()
    triton.stop()

    # an index swap, and a rebuild killed halfway, under load (file log)
    root = root_copy(work / "r3")
    svc = LocalService(args.model_repo, root, "--gallery-log", "file", "--poll-s", "0.5").start()
    build = [sys.executable, "-m", "facevoice", "index", "build", "--gallery", str(args.corpus / "manifest.csv"),
             "--model-repo", str(args.model_repo), "--out", str(root), "--split", "test", "--no-progress"]
    with Load(svc.stub, request) as load, Writer(svc.stub, face, "swap") as writer:
        pause(2)
        t0 = time.perf_counter()
        subprocess.run(build, check=True, stdout=subprocess.DEVNULL)
        pause(3)
        swap_failed = load.failed(t0)
        t1 = time.perf_counter()
        proc = subprocess.Popen(build, stdout=subprocess.DEVNULL)
        pause(4)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        pause(2)
        killed_failed = load.failed(t1)
    lost = len(set(writer.acked) - present(svc, writer.acked, voice))
    rows.append({"fault": "index rebuilt and swapped under load", "failed_searches": swap_failed,
                 "failed_writes": 0, "recover_s": "0 (no failure)", "acked": len(writer.acked), "lost": lost})
    rows.append({"fault": f"rebuild SIGKILLed after {4 * k:g} s", "failed_searches": killed_failed,
                 "failed_writes": writer.failed,
                 "recover_s": "0 (the served version is untouched)", "acked": len(writer.acked), "lost": lost})
    svc.stop()

    # a replica SIGKILLed right after acknowledging writes (two replicas, one file log)
    root = root_copy(work / "r4")
    a = LocalService(args.model_repo, root, "--gallery-log", "file", "--poll-s", "0.5").start()
    b = LocalService(args.model_repo, root, "--gallery-log", "file", "--poll-s", "0.5").start()
    with Writer(a.stub, face, "kill") as writer:
        pause(3)
    a.kill()
    t0 = time.perf_counter()
    a.start()
    restart = time.perf_counter() - t0
    lost_a = len(set(writer.acked) - present(a, writer.acked, voice))
    lost_b = len(set(writer.acked) - present(b, writer.acked, voice))
    rows.append({"fault": "replica A SIGKILLed right after acknowledging writes", "failed_searches": 0,
                 "failed_writes": writer.failed, "recover_s": f"{restart:.1f} (A restarts)", "acked": len(writer.acked),
                 "lost": f"{lost_a} on A, {lost_b} on B"})
    a.stop()
    b.stop()
    shutil.rmtree(work, ignore_errors=True)
    return rows


def replication(args, root_copy, face: bytes, voice: bytes, n: int) -> list[dict]:
    out = []
    work = Path(tempfile.mkdtemp(prefix="facevoice-repl-"))
    for label, make in (("file log (shared index root)", lambda: (None, ("--gallery-log", "file"))),
                        ("Redis stream", lambda: (LocalRedis(data_dir=work / "redis").start(), None))):
        redis, extra = make()
        extra = extra or ("--redis-url", redis.url)
        root = root_copy(work / label.split()[0])
        a = LocalService(args.model_repo, root, *extra).start()
        b = LocalService(args.model_repo, root, *extra).start()
        lags = []
        for k in range(n):
            before = base_size(b)
            item = pb.GalleryItem(item_id=f"lag-{k}", identity="lag", media=pb.Media(image=pb.Image(data=face)))
            a.stub.UpsertItems(pb.UpsertItemsRequest(items=[item]), timeout=30)
            t = time.perf_counter()
            while base_size(b) <= before:  # visible on B: its face index holds one more item
                time.sleep(0.001)
            lags.append((time.perf_counter() - t) * 1000)
        out.append({"log": label, "writes": n, "p50_ms": pct(lags, 50), "p99_ms": pct(lags, 99)})
        a.stop()
        b.stop()
        if redis:
            redis.stop()
    shutil.rmtree(work, ignore_errors=True)
    return out


def base_size(svc: LocalService) -> int:
    return {i.name: i.size for i in svc.stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=10).indexes}["face"]


# the report --------------------------------------------------------------------------------------
def report(raw: dict, note: str = "") -> str:
    """The document's title and its own section (`<!-- bench:reliability -->`), from every part's
    latest figures, `note` at its end."""
    fz, sk, fl, rp = (raw.get(k) for k in ("fuzz", "soak", "faults", "replication"))
    lines = ["# Reliability", "", "Written by `python -m bench.reliability` (and its other marked sections by "
             "`python -m bench.log_damage` and `python -m bench.history`); every service runs as its own "
             "`facevoice serve` process on a private copy of the index root. Each section names the command and "
             "machine that measured it.", "", "<!-- bench:reliability -->"]

    def command(section: str) -> str:
        c = raw["commands"][section]
        return f"Command: `{c['command']}` on {c['machine']}."

    if fz:
        lines += ["## Fuzz: mutated real media through every media RPC", "", command("fuzz"), "",
                  f"{fz['n']} mutated WAV / MP3 / M4A / WebM-Opus / MP4 / PNG / JPEG files made from the corpus "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(fz['mutations'].items()))}), "
                  "each sent through one of SearchFaces, SearchVoices, Match (probe or candidate), ReconstructFace, "
                  f"Embed and UpsertItems, in {fz['seconds']:.0f} s.", "",
                  "| status | calls |", "|---|---|", *[f"| {k} | {v} |" for k, v in sorted(fz["codes"].items())], "",
                  f"Server alive afterwards: **{'yes' if fz['alive'] else 'NO'}**. "
                  f"RSS {fz['rss_before']:.0f} MB before, {fz['rss_after']:.0f} MB after; "
                  "after every 1,000 calls: "
                  f"{', '.join(f'{r:.0f}' for _, r in fz['rss_by_1000'])} MB.", ""]
    if sk:
        lines += ["## Soak", "", command("soak"), "",
                  f"Maximum SearchFaces QPS (8 clients, {sk.get('probe_s', 15):g} s): {sk['max_qps']:.1f}; held at 70% "
                  f"({sk['target_qps']:.1f} QPS) for {len(sk['minutes'])} minutes.", "",
                  "| minute | calls | p50 ms | p99 ms | errors | RSS MB |", "|---|---|---|---|---|---|",
                  *[f"| {m['minute']} | {m['calls']} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['errors']} | "
                    f"{m['rss_mb']:.0f} |" for m in sk["minutes"]], ""]
    if fl:
        lines += ["## Faults under load", "", command("faults"), "",
                  "Four search clients and one writer (one UpsertItems at a time) run "
                  "throughout; `lost` counts acknowledged upserts missing afterwards.", "",
                  "| fault | failed searches | failed writes | recovery (s) | writes acknowledged | lost |",
                  "|---|---|---|---|---|---|",
                  *[f"| {r['fault']} | {r['failed_searches']} | {r['failed_writes']} | {r['recover_s']} | "
                    f"{r['acked']} | "
                    f"{r['lost']} |" for r in fl], ""]
    if rp:
        lines += ["## Replication lag", "", command("replication"), "",
                  "An upsert acknowledged by replica A, then polled on replica B until B "
                  "returns it.", "", "| log | writes | p50 ms | p99 ms |", "|---|---|---|---|",
                  *[f"| {r['log']} | {r['writes']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |" for r in rp], ""]
    return "\n".join([*lines, note]).rstrip() + "\n<!-- /bench:reliability -->"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_demo_arguments(p)
    p.add_argument("--fuzz", type=int, default=10_000)
    p.add_argument("--soak-s", type=float, default=600)
    p.add_argument("--soak-probe-s", type=float, default=15.0, help="the maximum QPS's measurement before the soak")
    p.add_argument("--replication-writes", type=int, default=100)
    p.add_argument("--pause", type=float, default=1.0, help="the faults' waits scaled by this")
    p.add_argument("--only", nargs="+", choices=["fuzz", "soak", "faults", "replication"],
                   default=["fuzz", "soak", "faults", "replication"])
    # the report goes to --doc, its figures beside it as .json
    args = smoke_release(parse(p, argv, DOC, smoke={
        "corpus": MADE, "index_root": MADE, "fuzz": 40, "soak_s": 2.0, "soak_probe_s": 2.0,
        "replication_writes": 3, "pause": 0.3}))
    rng = random.Random(0)
    media_ = corpus_media(args.corpus)
    voice, face = media_[0][0], media_[1][0]

    def root_copy(dst: Path) -> Path:
        shutil.copytree(args.index_root, dst, ignore=shutil.ignore_patterns(".build", ".gallery-log"))
        return dst

    work = Path(tempfile.mkdtemp(prefix="facevoice-rel-"))
    fz = sk = None
    fl, rp = [], []
    if "fuzz" in args.only or "soak" in args.only:
        svc = LocalService(args.model_repo, root_copy(work / "main"), "--gallery-log", "file").start()
        try:
            if "fuzz" in args.only:
                print("fuzz ...", flush=True)
                fz = fuzz(svc, args.fuzz, media_, rng)
            if "soak" in args.only:
                print("soak ...", flush=True)
                sk = soak(svc, pb.SearchFacesRequest(voice=pb.Audio(data=voice), top_k=10), args.soak_s,
                          args.soak_probe_s)
        finally:
            svc.stop()
    if "faults" in args.only:
        print("faults ...", flush=True)
        fl = faults(args, root_copy, media_, voice, face)
    if "replication" in args.only:
        print("replication ...", flush=True)
        rp = replication(args, root_copy, face, voice, args.replication_writes)
    shutil.rmtree(work, ignore_errors=True)
    doc, raw_path = args.doc, args.doc.with_suffix(".json")
    raw = json.loads(raw_path.read_text()) if raw_path.exists() else {"commands": {}}
    here = {"command": f"python -m bench.reliability {' '.join(sys.argv[1:] if argv is None else argv)}",
            "machine": machine()}
    for name, result in (("fuzz", fz), ("soak", sk), ("faults", fl), ("replication", rp)):
        if result:
            raw[name], raw["commands"][name] = result, here
    raw_path.write_text(json.dumps(raw, indent=1) + "\n")
    text = report(raw, SMOKE_NOTE if args.smoke else "")
    # what bench.history and bench.log_damage wrote
    kept = sections_of(doc.read_text(), leaving=("reliability",)) if doc.exists() else ""
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text + ("\n\n" + kept if kept else "") + "\n")
    print(text)
    print(f"\nwrote {doc} and {raw_path}")
    return 0 if fz is None or fz["alive"] else 1


if __name__ == "__main__":
    run_script(main, "python -m bench.reliability")
