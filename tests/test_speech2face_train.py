"""Speech2Face training commands end to end on the toy corpus: face network -> decoder -> voice
encoder, through the verbs' functions, with resume and clear errors for wrong files."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from facevoice.service.errors import CorpusError, FormatError, UsageError
from facevoice.training.runs import RunInfo
from facevoice.training.speech2face.config import load_config
from facevoice.training.speech2face.decoder import TrainFaceDecoderOptions, train_face_decoder
from facevoice.training.speech2face.evaluate import EvalS2FOptions, EvalS2FResult, eval_s2f
from facevoice.training.speech2face.features import TrainFaceFeaturesOptions, train_face_features
from facevoice.training.speech2face.train import TrainS2FOptions, train_s2f
from tests.toy_corpus import build_toy_corpus

TINY = ["face.size=32", "face.widths=[4, 8, 8, 16, 16]", "face.batch_norm=true", "face.fc=16",
        "face.attributes=['gender']", "train.attributes=['gender']", "face.steps=150", "face.batch=16",
        "face.dropout=0.0",
        "decoder.first_layer=16", "decoder.size=32", "decoder.base=4", "decoder.widths=[16, 8, 8, 8]",
        "decoder.steps=40", "decoder.batch=16",
        "voice.seconds=1.0", "voice.widths=[4, 4, 8, 8, 8, 8, 16, 16, 16]",
        "train.batch=8", "train.eval_every=20", "train.checkpoint_every=20", "train.lr_decay_every=20"]


def _sets(extra=()):
    return (*TINY, *extra)


def _argv(options: dict) -> list[str]:
    """The command-line flags of `options` (for the torchrun test, which runs the real command)."""
    flags = {"corpus": str(options["corpus"]), "cache-dir": str(options["cache_dir"]),
             "threads": str(options["threads"]), "workers": str(options["workers"])}
    return [*(a for k, v in flags.items() for a in (f"--{k}", v)), "--no-progress"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return build_toy_corpus(tmp_path_factory.mktemp("toy"), canonical=True)


@pytest.fixture(scope="module")
def nets(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("s2f")
    cache = out / "cache"
    common = dict(corpus=toy, cache_dir=cache, threads=2, workers=1, no_progress=True)
    face = train_face_features(TrainFaceFeaturesOptions(**common, out=out / "face", set=_sets()))
    assert face.face_net == out / "face" / "face_net.pt"
    decoder = train_face_decoder(TrainFaceDecoderOptions(**common, out=out / "decoder", face_net=face.face_net,
                                                         set=_sets()))
    assert decoder.decoder == out / "decoder" / "decoder.pt"
    voice = train_s2f(TrainS2FOptions(**common, out=out / "s2f", face_net=face.face_net, decoder=decoder.decoder,
                                      set=_sets(["train.iterations=160", "train.ranking_weight=1"])))
    assert voice.steps == 160
    return out, common


def test_each_command_writes_its_artifacts(nets):
    out, _ = nets
    for name in ("face/face_net.pt", "face/training.png", "decoder/decoder.pt", "decoder/f2f_val.png",
                 "s2f/best.pt", "s2f/checkpoints/last.pt", "s2f/training.png", "s2f/run.json"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "s2f" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(20, 161, 20))
    assert all(np.isfinite(float(r["val_loss"])) for r in rows)
    assert all(float(r["ranking"]) > 0 for r in rows)  # the ranking term is on and logged


def test_voice_encoder_learns(nets):
    """On the toy corpus voice pitch and face colour come from one number. Within the smoke run
    the eq. (1) training loss falls, and held-out people's v_s turn toward their own face
    features: the angle starts near 90 degrees (unrelated) and drops."""
    out, _ = nets
    rows = list(csv.DictReader((out / "s2f" / "metrics.csv").open()))
    loss = [float(r["loss"]) for r in rows]
    angle = [float(r["val_angle_deg"]) for r in rows]
    assert np.mean(loss[-2:]) < loss[0]
    assert min(angle[1:]) < angle[0] - 5


def test_resume_continues_from_the_last_checkpoint(nets, tmp_path):
    out, common = nets
    args = dict(**common, out=tmp_path, face_net=out / "face" / "face_net.pt", decoder=out / "decoder" / "decoder.pt")
    train_s2f(TrainS2FOptions(**args, set=_sets(["train.iterations=20"])))
    resumed = train_s2f(TrainS2FOptions(**args, resume=True, set=_sets(["train.iterations=40"])))
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [20, 40]
    assert "trained 40 iterations" in resumed.summary() and resumed.steps == 40


def test_attribute_heads_and_mean_target_train_resume_and_stay_out_of_the_encoder(nets, tmp_path):
    """train.attributes adds a logged cross-entropy whose heads live in last.pt (so --resume
    continues them) but not in best.pt, which holds only the encoder that eval and export load."""
    import torch

    out, common = nets
    args = dict(**common, out=tmp_path, face_net=out / "face" / "face_net.pt", decoder=out / "decoder" / "decoder.pt")
    extra = ["train.attributes=['gender']", "train.attribute_weight=2.0", "train.target=mean"]
    train_s2f(TrainS2FOptions(**args, set=_sets([*extra, "train.iterations=20"])))
    train_s2f(TrainS2FOptions(**args, resume=True, set=_sets([*extra, "train.iterations=40"])))
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [20, 40] and all(float(r["attributes"]) > 0 for r in rows)
    last = torch.load(tmp_path / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert set(last["heads"]) == {"gender.weight", "gender.bias"}
    best = torch.load(tmp_path / "best.pt", map_location="cpu", weights_only=True)
    assert "heads" not in best and not any(k.startswith("gender") for k in best["model"])
    with pytest.raises(UsageError, match=r"train\.target must be one of"):
        load_config("small", ["train.target=median"])


def test_best_checkpoint_follows_the_selection_rule(nets, tmp_path):
    """`small` keeps the last model; train.select=loss keeps the lowest val_loss and match the
    highest val_match."""
    import torch

    out, common = nets
    default = list(csv.DictReader((out / "s2f" / "metrics.csv").open()))
    assert torch.load(out / "s2f" / "best.pt", map_location="cpu", weights_only=True)["step"] == 160
    assert all(0.0 <= float(r["val_match"]) <= 1.0 for r in default)
    for rule, pick in (("loss", lambda rows: min(rows, key=lambda r: float(r["val_loss"]))),
                       ("match", lambda rows: max(rows, key=lambda r: float(r["val_match"])))):
        run = tmp_path / rule
        train_s2f(TrainS2FOptions(**common, out=run, face_net=out / "face" / "face_net.pt",
                                  decoder=out / "decoder" / "decoder.pt",
                                  set=_sets(["train.iterations=80", f"train.select={rule}"])))
        rows = list(csv.DictReader((run / "metrics.csv").open()))
        best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
        assert best["step"] == int(pick(rows)["step"]), rule


def test_torchrun_ddp_with_attribute_heads_on_two_cpu_processes(nets, tmp_path):
    """Two gloo ranks train the voice encoder with attribute heads, whose gradients (the heads sit
    outside DDP) are all-reduced by hand; rank 0 saves them with the encoder."""
    import os
    import subprocess
    import sys

    import torch

    out, common = nets
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "facevoice", "train", "s2f", *_argv(common), "--out", str(tmp_path),
                           "--face-net", str(out / "face" / "face_net.pt"),
                           "--decoder", str(out / "decoder" / "decoder.pt"),
                           *(a for s in _sets(["train.iterations=20"]) for a in ("--set", s))],
                          capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert RunInfo.read(tmp_path).world_size == 2
    assert "gender.weight" in torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["heads"]


def test_wrong_files_are_clear_errors(nets, tmp_path):
    out, common = nets
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(FormatError, match="not a readable face network checkpoint"):
        train_face_decoder(TrainFaceDecoderOptions(**common, out=tmp_path / "d", face_net=junk, set=_sets()))
    cut = tmp_path / "cut.pt"
    cut.write_bytes((out / "face" / "face_net.pt").read_bytes()[:1000])  # a copy interrupted mid-file
    with pytest.raises(FormatError, match="not a readable face network checkpoint"):
        train_face_decoder(TrainFaceDecoderOptions(**common, out=tmp_path / "d", face_net=cut, set=_sets()))
    # an s2f checkpoint is not a face network
    with pytest.raises(FormatError, match=r"not a face network checkpoint \(face_net\.pt"):
        train_face_decoder(TrainFaceDecoderOptions(**common, out=tmp_path / "d", face_net=out / "s2f" / "best.pt",
                                                   set=_sets()))
    with pytest.raises(FormatError, match="no checkpoint"):
        train_s2f(TrainS2FOptions(**common, out=tmp_path / "r", face_net=out / "face" / "face_net.pt",
                                  decoder=out / "decoder" / "decoder.pt", resume=True, set=_sets()))


def test_decoder_needs_canonical_faces(tmp_path, nets):
    out, _ = nets
    plain = build_toy_corpus(tmp_path / "plain")  # no canonical faces
    with pytest.raises(CorpusError, match="no canonical_face"):
        train_face_decoder(TrainFaceDecoderOptions(corpus=plain, out=tmp_path / "d", workers=1, no_progress=True,
                                                   face_net=out / "face" / "face_net.pt", set=_sets()))


def test_evaluation_report(nets, toy, tmp_path):
    out, _ = nets
    report = tmp_path / "report"
    result = eval_s2f(EvalS2FOptions(run=out / "s2f", corpus=toy, out=report, cache_dir=out / "cache",
                                     seconds=(1.0, 2.0), trials=300, workers=1, classifier_steps=60,
                                     no_progress=True))
    assert result.report == report / "report.md"
    text = (report / "report.md").read_text()
    for heading in ("Feature similarity (Table 2)", "S2F -> face retrieval (Table 3)", "Attribute agreement",
                    "Cross-check"):
        assert heading in text
    m = EvalS2FResult.read(report).metrics
    assert set(m["similarity"]) == {"1s", "2s"}
    # one photo per person (6) in the paper's protocol, all 12 in the other; no generator, no oracle
    r = m["retrieval"]
    assert r["gallery"] == 6 and r["all_photos"]["gallery"] == 12 and r["draws"] == 2
    assert "oracle" not in r and "voice_params" not in r and m["geometry"] is None
    assert "hearing" not in m  # needs the generator's voice parameters
    assert m["age_trend"] is None and "Age trend" not in text  # the toy corpus has one age group
    assert m["cross_check"]["via_reconstruction"]["trials"] == 300
    # 6 test people of the toy corpus, 2 clips and 2 photos each: 6 same-person pairs per kind
    for kind in ("s2f", "f2f"):
        v = m["variation"][kind]
        assert v["pairs"]["same_person"] == 6 and v["pixel"]["ratio"] > 0 and v["feature"]["ratio"] > 0
    assert "Do the reconstructions follow the person?" in text
    for f in m["figures"]:
        assert (report / f).stat().st_size > 0
    # the paper's remaining figures, each a PNG named after it
    for f in ("fig4a_pixel_classifier.png", "fig4b_dataset.png", "fig6_durations.png", "fig7_retrieval.png"):
        assert f in m["figures"] and (report / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Fig. 4 on pixels: the toy corpus has one age group, so gender and appearance group; 6 test
    # people with 2 clips and 2 photos each: 24 (clip, photo) pairs, 12 clips
    pixels = m["attributes_pixels"]
    assert set(pixels) == {"gender", "appearance_group"} and m["pixel_classifier"]["steps"] == 60
    for v in pixels.values():
        assert sum(map(sum, v["confusion"])) == 24 and sum(map(sum, v["confusion_truth"])) == 12
        for key in ("agreement", "photo_accuracy", "s2f_accuracy", "f2f_accuracy", "majority"):
            assert 0 <= v[key] <= 1
        assert v["agreement"] == np.trace(v["confusion"]) / 24 and v["chance"] == 0.5
    assert "The same on pixels, independent of the model" in text and "| photo \\ S2F |" in text
    # Fig. 4(b): 12 training, 6 validation and 6 test people, half of each male
    assert {s: v["people"] for s, v in m["dataset"].items()} == {"train": 12, "val": 6, "test": 6}
    assert m["dataset"]["test"]["gender"] == {"female": 3, "male": 3} and "Dataset statistics (Fig. 4(b))" in text
    # Fig. 7: the first 5 test people, each with its speaker's rank in the 6-photo gallery
    ex = m["retrieval_examples"]
    assert [e["identity"] for e in ex] == m_identities(toy)[:5] and all(1 <= e["true_rank"] <= 6 for e in ex)
    assert "Retrieval examples (Fig. 7)" in text
    assert "Speech2Face evaluation" in result.summary() and "by a CNN on pixels" in result.summary()


def m_identities(corpus) -> list[str]:
    """The corpus's test identities, sorted (the order `eval s2f` numbers them)."""
    from facevoice.service.corpus import read_manifest
    return sorted({i.identity for i in read_manifest(corpus) if i.split == "test"})


def test_evaluating_a_non_s2f_checkpoint_is_a_clear_error(nets, tmp_path):
    out, _ = nets
    (tmp_path / "best.pt").write_bytes(b"junk")
    with pytest.raises(FormatError, match="not a readable Speech2Face voice encoder checkpoint"):
        eval_s2f(EvalS2FOptions(run=tmp_path, corpus=tmp_path, no_progress=True))
    with pytest.raises(FormatError, match="not a Speech2Face voice encoder checkpoint"):
        eval_s2f(EvalS2FOptions(run=out / "face", checkpoint="face_net.pt", no_progress=True))


def test_kims_split_without_validation_trains_every_network(tmp_path):
    """A corpus with train and test identities only (Kim et al. sec. 4.2, VoxCeleb's default
    ingest): every command runs its schedule; the voice encoder keeps its last model."""
    import torch

    corpus = build_toy_corpus(tmp_path / "kim", canonical=True, val=False)
    common = dict(corpus=corpus, cache_dir=tmp_path / "cache", threads=2, workers=1, no_progress=True,
                  set=_sets(["face.steps=20", "decoder.steps=10", "train.iterations=20", "train.select=loss"]))
    face = train_face_features(TrainFaceFeaturesOptions(**common, out=tmp_path / "face"))
    assert "n/a (no validation split)" in face.summary() and not face.held_out
    net = tmp_path / "face" / "face_net.pt"
    decoder = train_face_decoder(TrainFaceDecoderOptions(**common, out=tmp_path / "decoder", face_net=net))
    assert "no validation split" in decoder.summary() and (tmp_path / "decoder" / "f2f_train.png").exists()
    assert decoder.picture == tmp_path / "decoder" / "f2f_train.png" and decoder.val_pixel_l1 is None
    voice = train_s2f(TrainS2FOptions(**common, out=tmp_path / "s2f", face_net=net,
                                      decoder=tmp_path / "decoder" / "decoder.pt"))
    assert "no validation split: best.pt is the last model (step 20)" in voice.summary()
    assert torch.load(tmp_path / "s2f" / "best.pt", map_location="cpu", weights_only=True)["step"] == 20


def test_pairs_come_from_the_clips_own_video_unless_switched_off():
    """Oh et al. sec. 3: a clip and a frame of the same video (`train.pair_within_video`)."""
    from facevoice.training.association.data import Modality
    from facevoice.training.speech2face.data import S2FSplit
    from facevoice.training.speech2face.train import PairSampler

    faces = Modality(np.zeros((4, 1)), np.array([0, 0, 0, 0]), ["f0", "f1", "f2", "f3"],
                     np.array(["vA", "vA", "vB", "vB"]))
    voices = Modality(np.zeros((2, 1)), np.array([0, 0]), ["c0", "c1"], np.array(["vA", "vB"]))
    split = S2FSplit(["p"], [{}], faces, voices, None)
    videos = faces.video
    within = PairSampler(split, seed=0)
    v, f = within.draw(400)
    assert (videos[f] == voices.video[v]).all()
    anywhere = PairSampler(split, seed=0, within_video=False)
    v, f = anywhere.draw(400)
    assert 0.3 < (videos[f] != voices.video[v]).mean() < 0.7


def test_a_face_the_front_end_refuses_is_left_out_and_listed(tmp_path):
    """One photo of 4,000 may hold no face the guard finds: the split leaves it out (as index build
    does) and lists it, and the person keeps their other photos."""
    from PIL import Image

    from facevoice.service.corpus import read_manifest
    from facevoice.training.speech2face.config import load_config
    from facevoice.training.speech2face.data import load_s2f_split

    corpus = build_toy_corpus(tmp_path / "toy", identities=6, canonical=True)
    victim = next(i for i in read_manifest(corpus) if i.modality == "face" and i.split == "train")
    Image.new("RGB", (128, 128), (128, 128, 128)).save(corpus / victim.path)
    cfg = load_config("small")
    for _ in range(2):  # decoded, then from the cache
        split = load_s2f_split(corpus, "train", cfg, tmp_path / "cache", 1, False)
        assert split.refused == {"face": [victim.item_id]} and victim.item_id not in split.face.item_ids
        who = split.identities.index(victim.identity)
        assert len(split.items_of("face", who)) >= 1 and len(split.face.data) == len(split.face.identity)
