"""Checksums of model repositories (the service and `index build` refuse a changed file), the
release format (facevoice.release), and `facevoice demo` serving a release end to end. The
release here is made from the tests' own tiny stack: no test reads models/demo/."""

from __future__ import annotations

import json
import shutil

import pytest

from facevoice import release as rel
from facevoice.cli import build_parser
from facevoice.demo import DemoOptions, demo
from facevoice.recipe import RECIPES, load_recipe
from facevoice.service import checksums
from facevoice.service.build import IndexBuildOptions, index_build
from facevoice.service.checksums import ChecksumMismatch
from facevoice.service.errors import FormatError, UsageError
from facevoice.service.repository import Manifest, network_file, open_repository, read_repository_manifest
from facevoice.service.serve import Running, ServeConfig
from facevoice.training.association.evaluate import EvalAssociationResult

FIGURES = {"association V->F 1:2 G": {"value": 0.55, "interval": [0.5, 0.6], "what": "x"},
           "s2f gender agreement": {"value": 0.8, "interval": None, "what": "y"}}


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def repo(stack, tmp_path):
    """A private copy of the stack's exported repository (export wrote its checksums)."""
    out = tmp_path / "repo"
    shutil.copytree(stack.repo, out)
    return out


def test_export_records_every_file_and_the_service_checks_them(repo):
    listed = checksums.read(repo)
    assert set(listed) == set(checksums.tree(repo)) and "facevoice.json" in listed
    assert all(network_file(n) in listed for g in read_repository_manifest(repo).groups.values()
               for n in g.networks.values())
    assert checksums.verify(repo, listed) == len(listed)
    open_repository(repo)  # the untouched copy opens


@pytest.mark.parametrize("what", ["onnx", "config", "missing"])
def test_the_service_and_index_build_refuse_a_changed_file(repo, stack, tmp_path, what):
    manifest = read_repository_manifest(repo)
    onnx = repo / network_file(manifest.space("face").network)
    if what == "onnx":
        _flip_a_byte(onnx)
    elif what == "config":
        (repo / manifest.space("face").network.model / "config.pbtxt").write_text("max_batch_size: 100000\n")
    else:
        onnx.unlink()
    with pytest.raises(ChecksumMismatch, match=r"SHA-256|missing") as e:
        Running(ServeConfig(model_repo=repo, index_root=stack.index_root, host="127.0.0.1", port=0, metrics_port=-1))
    assert str(repo) in str(e.value)
    with pytest.raises(ChecksumMismatch, match=r"SHA-256|missing"):
        index_build(IndexBuildOptions(gallery=stack.corpus / "manifest.csv", model_repo=repo, out=tmp_path / "indexes",
                                      no_progress=True))
    assert not (tmp_path / "indexes" / "face" / "current").exists()


def test_the_manifest_digest_is_checked_without_a_checksums_file(repo):
    """An export from before checksums.sha256 still has each network's SHA-256 in facevoice.json."""
    (repo / checksums.NAME).unlink()
    open_repository(repo)
    _flip_a_byte(repo / network_file(read_repository_manifest(repo).space("voice").network))
    with pytest.raises(ChecksumMismatch, match="does not match"):
        open_repository(repo)


@pytest.mark.parametrize("text", ["", "not a line\n", "abc  file\n", f"{'0' * 64}  ../../etc/passwd\n",
                                  f"{'0' * 64}  /etc/passwd\n", f"{'0' * 64}\n"])
def test_a_malformed_checksums_file_is_refused(repo, text):
    (repo / checksums.NAME).write_text(text)
    if text == "":  # nothing listed: the manifest's own digests still hold
        open_repository(repo)
        return
    with pytest.raises(ChecksumMismatch):
        open_repository(repo)


def test_checksums_that_disagree_with_the_manifest_are_refused(repo):
    listed = checksums.read(repo)
    onnx = network_file(read_repository_manifest(repo).space("face").network)
    listed[onnx] = "0" * 64
    (repo / checksums.NAME).write_text("".join(f"{d}  {f}\n" for f, d in listed.items()))
    with pytest.raises(ChecksumMismatch, match="different SHA-256s"):
        open_repository(repo)


def _release(repo, dest, corpus_record=None):
    return rel.write_release(repo, dest, runs={"association": "demo/runs/association"}, commit="abc",
                             corpus=corpus_record or {"sha256": {}}, commands=["facevoice demo --retrain"],
                             figures=FIGURES, details={})


def test_a_release_lists_every_file_and_verifies(repo, tmp_path):
    (repo / "face_encoder" / "1" / "__pycache__").mkdir(exist_ok=True)  # as Triton's python backend leaves
    (repo / "face_encoder" / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    made = _release(repo, tmp_path / "rel")
    dest = tmp_path / "rel"
    assert set(made.files) == (set(checksums.tree(dest)) - {rel.RELEASE}) | {checksums.NAME}
    assert not list(dest.rglob("__pycache__"))
    assert [Manifest.from_json(m.read_text()).groups["association"].run for m in dest.glob("facevoice*.json")] == \
        ["demo/runs/association"] * 2  # facevoice.json and its facevoice.vN.json: no path of this machine
    release, manifest = rel.verify_release(dest)
    assert release.figures == FIGURES and manifest.groups["association"].run == "demo/runs/association"
    assert release == rel.Release.read(dest) and rel.Release.from_dict(release.to_dict()) == release
    open_repository(dest)  # the service's own check agrees


@pytest.mark.parametrize("tamper", ["flip", "extra", "release"])
def test_a_tampered_release_is_refused(repo, tmp_path, tamper):
    dest = tmp_path / "rel"
    _release(repo, dest)
    if tamper == "flip":
        _flip_a_byte(dest / "face_decoder" / "1" / "model.onnx")
    elif tamper == "extra":
        (dest / "face_encoder" / "2").mkdir()
        (dest / "face_encoder" / "2" / "model.onnx").write_bytes(b"x")
    else:
        r = json.loads((dest / rel.RELEASE).read_text())
        r["files"]["facevoice.json"] = "0" * 64
        (dest / rel.RELEASE).write_text(json.dumps(r))
    with pytest.raises(ChecksumMismatch):
        rel.verify_release(dest)


@pytest.mark.parametrize("text", ["", "[]", "{\"format\": 1}", "{\"format\": 7, \"files\": {}}", "\xff"])
def test_a_release_that_is_not_one_is_a_clear_error(tmp_path, text):
    (tmp_path / rel.RELEASE).write_text(text, errors="surrogateescape")
    with pytest.raises(FormatError, match="not a facevoice release"):
        rel.Release.read(tmp_path)
    with pytest.raises(FormatError, match="not a facevoice release"):
        rel.Release.read(tmp_path / "missing")


def test_a_rerun_is_compared_with_the_released_intervals():
    rows = rel.compare(FIGURES, {"association V->F 1:2 G": {"value": 0.62}, "s2f gender agreement": {"value": 0.7}})
    assert [r["inside"] for r in rows] == [False, None]
    rows = rel.compare(FIGURES, {"association V->F 1:2 G": {"value": 0.58}})
    assert rows[0]["inside"] is True and rows[1]["rerun"] is None
    text = rel.format_comparison(rows)
    assert "1/1 figures with an interval land inside it" in text and "(no interval)" in text
    release = rel.Release(created="", commit="", corpus={}, commands=[], figures=FIGURES, files={})
    table = rel.markdown(release, rel.compare(FIGURES, {"association V->F 1:2 G": {"value": 0.62}}))
    assert table.count("\n") == 3 and "| 0.550 | 0.500-0.600 | 0.620 | **no** |" in table


def test_demo_serves_a_verified_release_on_its_own_corpus(repo, tmp_path, capsys):
    """The default `facevoice demo` path end to end, on a release made from the tiny stack: it
    builds the release's corpus, checks it is that corpus, verifies the files, builds indexes,
    serves, queries, and draws the grid; a changed file or another corpus stops it first."""
    from facevoice.training.corpus.synth import SynthConfig, build_corpus

    build_corpus(tmp_path / "c", SynthConfig(identities=12, seed=3, workers=1, oracle_trials=100,
                                             oracle_population=200), progress=False)
    record = rel.corpus_record(tmp_path / "c", seed=3, identities=12)
    dest = tmp_path / "rel"
    _release(repo, dest, record)
    out = tmp_path / "demo"
    shutil.copytree(tmp_path / "c", out / "corpus")  # the corpus stage is reused; its digests are checked
    result = demo(DemoOptions(models=dest, out=out, no_progress=True, people=1, grid=2))
    text = capsys.readouterr().out + result.summary()
    assert f"{len(json.loads((dest / rel.RELEASE).read_text())['files'])} files match their SHA-256" in text
    assert "the truth: gender=" in text and "the true identity is rank" in text
    assert "SearchVoices, face" in text and "Match, voice vs" in text
    assert "the first answer came" in text and "verify models" in text and "index build" in text
    assert result.first_answer is not None and result.which == "released" and result.queries in text
    assert (out / "queries" / "s2f_grid.png").read_bytes().startswith(b"\x89PNG")
    from PIL import Image

    assert Image.open(out / "queries" / "s2f_grid.png").size[0] > 2 * 128
    # a changed file is refused before anything is served
    _flip_a_byte(dest / "face_decoder" / "1" / "model.onnx")
    with pytest.raises(ChecksumMismatch, match="SHA-256"):
        demo(DemoOptions(models=dest, out=out, no_progress=True))
    # a corpus that is not the release's is built again; when that one is not either (the
    # generator has changed), the demo stops and says what to do
    _release(repo, dest, {**record, "sha256": {**record["sha256"], "manifest.csv": "0" * 64}})
    capsys.readouterr()
    with pytest.raises(FormatError, match=r"differ from the corpus the released models were trained on.*--retrain"):
        demo(DemoOptions(models=dest, out=out, no_progress=True))
    assert "building it again" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [{"release": "x"}, {"identities": 5}, {"seed": 1}, {"recipe": "paper-loss"},
                                   {"train_identities": 0}, {"train_seed": 2}])
def test_retrain_only_flags_need_retrain(tmp_path, flags):
    with pytest.raises(UsageError, match="only with --retrain"):
        demo(DemoOptions(out=tmp_path, **flags))


@pytest.mark.parametrize("flags, message", [({"train_seed": 0}, "is the demo corpus's"),
                                            ({"train_identities": 3}, "at least 10"),
                                            ({"recipe": "no-such"}, "no recipe 'no-such': give one of demo, ")])
def test_retrain_refuses_a_training_corpus_that_would_overlap_or_be_empty(tmp_path, flags, message):
    with pytest.raises(UsageError, match=message):
        demo(DemoOptions(retrain=True, out=tmp_path, **flags))
    assert not (tmp_path / "corpus").exists()  # refused before any stage ran


def test_the_committed_recipes_are_the_release_s_own_and_the_paper_loss():
    """The released models' recipe is data (facevoice/recipes/demo.toml), and models/demo was made by it."""
    released = load_recipe("demo")
    assert (released.corpus.identities, released.corpus.seed) == (300, 0)
    assert (released.train_corpus.identities, released.train_corpus.seed) == (1000, 1)
    assert "train.loss=infonce" in released.association.set and released.backbones.measures
    paper = load_recipe("paper-loss")
    assert not any(s.startswith("train.loss=") for s in paper.association.set)  # eq. (1), the config's default
    assert (paper.corpus, paper.train_corpus, paper.backbones) == (released.corpus, released.train_corpus,
                                                                   released.backbones)
    made_by = rel.Release.read(rel.DEFAULT).commands
    assert any(c.startswith("facevoice train association")
               and all(f"--set {s}" in c for s in released.association.set) for c in made_by)


def test_a_recipe_file_is_checked(tmp_path):
    bad = tmp_path / "r.toml"
    for text, words in (("[corpus]\nidentities = 10\nseed = 1\n", "needs \\[train_corpus\\]"),
                        ("[corpus]\nidentities = 10\nseed = 1\n[train_corpus]\nidentities = 0\nseed = 2\n"
                         "[backbones]\nface_step = 3\n", "unknown keys \\['face_step'\\]"),
                        ("[corpus]\nidentities = 10\nseed = 1\n[train_corpus]\nidentities = 0\nseed = 2\n[x]\n",
                         "unknown sections"),
                        ("[corpus\n", "not a readable TOML")):
        bad.write_text(text)
        with pytest.raises(UsageError, match=words):
            load_recipe(bad)


def test_demo_without_a_release_says_how_to_make_one(tmp_path):
    with pytest.raises(FormatError, match="demo --retrain --release"):
        demo(DemoOptions(models=tmp_path / "none", out=tmp_path / "o"))


@pytest.mark.timeout(900)  # two retrains at a few steps, each with both evaluations: about 2-5 minutes
def test_retrain_releases_what_the_default_demo_then_serves(tmp_path, capsys):
    """The release path end to end at a few steps per stage: `demo --retrain --release DIR` trains,
    evaluates, exports and writes a release whose files verify and whose figures are the run's own
    reports; the default demo then serves it; a second `--retrain` on the same artifacts lands on
    the same figures, inside every interval."""
    recipe = tmp_path / "tiny.toml"  # the demo recipe at a few steps per stage
    recipe.write_text((RECIPES / "demo.toml").read_text()
                      .replace("face_steps = 600", "face_steps = 2").replace("voice_steps = 600", "voice_steps = 2")
                      .replace('"train.batch=32", "train.iterations=300", "train.lr_decay_every=100",',
                               '"train.batch=8", "train.iterations=2", "train.eval_every=2", '
                               '"train.checkpoint_every=2", "train.val_trials=50",')
                      .replace("face_features = []", 'face_features = ["face.steps=2"]')
                      .replace("face_decoder = []", 'face_decoder = ["decoder.steps=2"]')
                      .replace("voice_encoder = []", 'voice_encoder = ["train.iterations=2", "train.eval_every=2", '
                                                     '"train.checkpoint_every=2"]'))
    out, dest = tmp_path / "demo", tmp_path / "rel"
    shown = dict(no_progress=True, people=1, grid=2)
    sizes = dict(identities=30, seed=5, train_identities=30, train_seed=6, recipe=str(recipe))
    made = demo(DemoOptions(retrain=True, out=out, release=dest, **sizes, **shown))
    text = capsys.readouterr().out + made.summary()
    assert f"released to {dest}" in text and "the true identity is rank" in text
    release, _ = rel.verify_release(dest)
    assert release == made.released
    metrics = EvalAssociationResult.read(out / "runs" / "association" / "report").metrics
    assert release.figures["association V->F 1:2 -"]["value"] == metrics["matching"]["v2f"]["-"]["accuracy"]
    assert release.corpus["seed"] == 5 and release.corpus["identities"] == 30
    # the models train on a corpus of their own and are evaluated on the served one, new to them
    details = release.details
    assert details["train_corpus"]["seed"] == 6 and details["train_corpus"]["identities"] == 30
    assert details["recipe"] == "demo"
    assert any(c.startswith("facevoice train association --corpus demo/train-corpus") for c in release.commands)
    assert any(c.startswith("facevoice train s2f --corpus demo/train-corpus") for c in release.commands)
    assert any(c.startswith("facevoice eval association --run demo/runs/association --corpus demo/corpus ")
               for c in release.commands)
    assert any("--measures" in c for c in release.commands if c.startswith("facevoice train backbones"))
    assert "facevoice corpus synth --out demo/corpus --identities 30 --seed 5" in release.commands
    assert set(details["stage_seconds"]) >= {"corpus", "association", "s2f voice encoder", "export"}
    assert release.commands[0] == (f"facevoice demo --retrain --recipe {recipe} --release {dest} --identities 30 "
                                   "--seed 5 --train-identities 30 --train-seed 6 --people 1 --grid 2")
    assert details["recipe_toml"] == recipe.read_text()  # the recipe itself travels with the release
    assert "facevoice train backbones --corpus demo/train-corpus --config small --out demo/runs/backbones " \
           "--steps 2 --modalities face --attributes gender age_group appearance_group --measures" in release.commands
    assert not any(str(tmp_path) in c for c in release.commands[1:])  # each stage's, as under demo/
    # each recorded command is a command line the CLI takes (parsed here, not run)
    for c in release.commands[1:]:
        argv = c.split()[1:]
        build_parser(argv).parse_args(argv)
    # the default demo serves the release on a corpus built anew from its record
    served = demo(DemoOptions(models=dest, out=tmp_path / "served", **shown))
    assert "files match their SHA-256" in capsys.readouterr().out and served.which == "released"
    # a rerun on the same artifacts is compared with the release's intervals
    rerun = demo(DemoOptions(retrain=True, out=out, models=dest, **sizes, **shown))
    rows = rel.Comparison.read(out).rows
    assert rows and all(r["inside"] in (True, None) for r in rows)
    assert "figures with an interval land inside it" in rerun.summary()


def test_the_checksums_command_writes_and_verifies(repo):
    import subprocess
    import sys

    def run(*a):
        return subprocess.run([sys.executable, "-m", "facevoice.service.checksums", *a], capture_output=True, text=True)

    assert run("verify", str(repo)).returncode == 0
    (repo / "facevoice.json").write_text((repo / "facevoice.json").read_text() + " ")
    bad = run("verify", str(repo))
    assert bad.returncode == 1 and "facevoice.json: SHA-256" in bad.stderr
    assert run("write", str(repo)).returncode == 0 and run("verify", str(repo)).returncode == 0
    open_repository(repo)  # rewritten checksums let the edited repository open
    assert run("bogus", str(repo)).returncode != 0 and run("verify", str(repo / "none")).returncode == 1
