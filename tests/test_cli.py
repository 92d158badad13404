"""The `facevoice` command as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


def _free_port() -> int:
    from devtools.local_servers import free_port

    return free_port()


def _junk(path, name="best.pt"):
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_bytes(b"not a checkpoint")
    return path


# argv (with {tmp} for a fresh directory) -> the exit status and a phrase of the one message on
# stderr: 2 for usage (a UsageError or arguments argparse refuses), 1 for a failure (another
# FacevoiceError). docs/architecture.md, "Errors and exit statuses".
EXITS = [
    (["corpus", "synth", "--out", "{tmp}/c", "--identities", "1"], 2, "--identities must be at least 2"),
    (["corpus", "voxceleb", "--wav-root", "{tmp}/no", "--faces-root", "{tmp}/no", "--meta", "{tmp}/no.csv",
      "--out", "{tmp}/v"], 1, "no.csv"),
    (["corpus", "voxceleb2", "--root", "{tmp}/no", "--meta", "{tmp}/no.csv", "--out", "{tmp}/v"], 1,
     "the VoxCeleb2 layout"),
    (["corpus", "avspeech", "--csv", "{tmp}/no.csv", "--clips", "{tmp}/no", "--out", "{tmp}/v"], 1,
     "cannot read AVSpeech's CSV"),
    (["train", "backbones"], 2, ""),
    (["train", "backbones", "--corpus", "{tmp}", "--out", "{tmp}/bb"], 1, "unreadable corpus manifest"),
    (["train", "association", "--corpus", "{tmp}", "--out", "{tmp}/run", "--set", "train.loss=foo"], 2,
     "train.loss must be"),
    (["train", "association", "--corpus", "{tmp}", "--out", "{tmp}/run", "--config", "huge"], 2, "no config 'huge'"),
    (["train", "face-decoder", "--corpus", "{tmp}", "--out", "{tmp}/d", "--face-net", "{tmp}/junk/best.pt"], 1,
     "not a readable face network checkpoint"),
    (["train", "s2f", "--corpus", "{tmp}", "--out", "{tmp}/s", "--face-net", "{tmp}/junk/best.pt", "--decoder",
      "{tmp}/junk/best.pt", "--set", "train.target=median"], 2, "train.target must be one of"),
    (["eval", "association", "--run", "{tmp}/empty", "--corpus", "{tmp}"], 1, "no checkpoint"),
    (["eval", "s2f", "--run", "{tmp}/junk", "--corpus", "{tmp}"], 1, "not a readable Speech2Face voice encoder"),
    (["eval", "heldout", "--out", "{tmp}/h"], 2, "give --run RUN"),
    (["eval", "heldout", "--out", "{tmp}/h", "--results", "{tmp}/bad.json"], 1, "not a heldout.json"),
    (["eval", "media-ceiling", "--train-corpus", "{tmp}", "--corpora", "{tmp}", "--out", "{tmp}/m"], 1,
     "not a synthetic corpus"),
    (["eval", "frozen", "--train-corpus", "{tmp}", "--corpora", "{tmp}", "--out", "{tmp}/f"], 1,
     "unreadable corpus manifest"),
    (["eval", "service", "--model-repo", "{tmp}/empty", "--corpora", "{tmp}", "--out", "{tmp}/o"], 1,
     "not a facevoice model repository"),
    (["export", "--association", "{tmp}/empty", "--out", "{tmp}/repo"], 1, "no checkpoint"),
    (["index", "build", "--gallery", "{tmp}/bad.csv", "--model-repo", "models/demo", "--out", "{tmp}/i"], 1,
     "not a corpus manifest"),
    (["index", "build", "--gallery", "{tmp}/bad.csv", "--model-repo", "models/demo", "--out", "{tmp}/i",
      "--shard", "3/3"], 2, "0..N-1"),
    (["index", "merge", "--gallery", "{tmp}/bad.csv", "--model-repo", "models/demo", "--out", "{tmp}/i",
      "--shards", "0"], 2, "--shards must be at least 1"),
    (["index", "publish", "--out", "{tmp}/i", "--index", "voice", "--version", "20990101T000000Z-x"], 1,
     "no such index version"),
    (["index", "prune", "--out", "{tmp}", "--keep", "0"], 2, "--keep must be at least 1"),
    (["index", "log", "verify", "--out", "{tmp}/no-root"], 2, "no such index root"),
    (["serve", "--model-repo", "{tmp}/empty", "--index-root", "{tmp}/i", "--port", "0"], 1,
     "not a facevoice model repository"),
    (["query", "faces", "--voice", "{tmp}/missing.wav", "--server", "127.0.0.1:1"], 2, "cannot read input"),
    (["query", "faces", "--voice", "{tmp}/bad.json", "--server", "127.0.0.1:1", "--filter", "gender"], 2,
     "NAME=V1,V2"),
    (["query", "info", "--server", "127.0.0.1:{port}", "--timeout", "1"], 1, "UNAVAILABLE"),
    (["health", "--server", "127.0.0.1:{port}", "--timeout", "1"], 1, "UNAVAILABLE"),
    *[(["study", verb, "--study", "{tmp}/no-study", *extra], 2, "cannot read the study file")
      for verb, extra in (("serve", []), ("simulate", []), ("analyze", ["--out", "{tmp}/r"]),
                          ("corpus", ["--out", "{tmp}/c"]), ("build", []), ("export", ["--out", "{tmp}/e"]))],
    (["demo", "--out", "{tmp}/d", "--identities", "5"], 2, "only with --retrain"),
    (["demo", "--out", "{tmp}/d", "--retrain", "--recipe", "no-such"], 2, "no recipe 'no-such'"),
    (["demo", "--out", "{tmp}/d", "--models", "{tmp}/empty"], 1, "demo --retrain --release"),
    (["no-such-verb"], 2, "invalid choice"),
]


@pytest.mark.parametrize("argv, status, phrase", EXITS, ids=[" ".join(a[:2]) + f" -> {s}" for a, s, _ in EXITS])
def test_each_verb_exits_2_for_usage_and_1_for_a_failure_with_one_message(tmp_path, capsys, argv, status, phrase):
    from facevoice.cli import main

    (tmp_path / "empty").mkdir()
    _junk(tmp_path / "junk")
    (tmp_path / "bad.json").write_text('{"not": 1}')
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    args = [a.format(tmp=tmp_path, port=_free_port()) for a in argv]
    assert main(args) == status
    err = capsys.readouterr().err
    assert phrase in err, err[-2000:]
    if not err.startswith("usage:"):  # ours, not argparse's: "facevoice VERB: message", once
        verb = " ".join(a for a in argv[:3] if not a.startswith("-") and "{" not in a and "/" not in a)
        assert err.startswith(f"facevoice {verb}: ") and err.count(f"facevoice {verb}: ") == 1, err
    assert "Traceback" not in err


def test_the_serve_process_starts_answers_and_drains_on_sigterm(stack):
    """`facevoice serve` as a user runs it: a real process, answering, stopped by SIGTERM with 0."""
    import os
    import signal

    import grpc

    from devtools.local_servers import free_port, wait_for
    from facevoice.v1 import facevoice_pb2 as pb
    from facevoice.v1 import facevoice_pb2_grpc as pb_grpc
    from tests.serving import media

    port, metrics = free_port(), free_port()
    env = dict(os.environ, FACEVOICE_METRICS_PORT=str(metrics))
    proc = subprocess.Popen([sys.executable, "-m", "facevoice", "serve", "--model-repo", str(stack.repo),
                             "--index-root", str(stack.index_root), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        stub = pb_grpc.FaceVoiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        wait_for(lambda: bool(stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=1).indexes), 60, "facevoice serve",
                 proc)
        hits = stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=media(stack, "toy001", "voice")), top_k=2))
        assert len(hits.hits) == 2
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "gRPC on 127.0.0.1:" in out and "draining" in out and "stopped after" in out


def test_study_serve_refuses_a_real_run_without_the_consent_fields(tmp_path, capsys):
    from devtools.study_helpers import make_study
    from facevoice.cli import main

    study = make_study(tmp_path / "study", tmp_path / "corpus")
    toml = (study / "study.toml").read_text()
    for line in ('ethics_approval = "TEST-IRB-1"\n', 'payment = "none (a test)"\n'):
        toml = toml.replace(line, "")
    (study / "study.toml").write_text(toml)
    assert main(["study", "serve", "--study", str(study), "--port", "1"]) == 2
    assert "facevoice study serve: " in (err := capsys.readouterr().err) and "lacks ethics_approval, payment" in err


def test_a_training_verb_without_torch_says_so_with_status_2():
    """The service image has no torch: a training verb there is a usage problem, said in words."""
    script = ("import sys; sys.modules['torch'] = None\n"
              "from facevoice.cli import main\n"
              "sys.exit(main(['train', 'association', '--corpus', 'c', '--out', 'o']))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "facevoice train association: needs torch" in done.stderr and "Traceback" not in done.stderr
