"""Kim et al. 2018 sec. 4.1 architecture, eq. (1) loss and the configs."""

from __future__ import annotations

import math

import pytest
import torch

from facevoice.service.errors import FormatError, UsageError
from facevoice.training.association.config import load_config
from facevoice.training.association.loss import hardest, triplet_loss
from facevoice.training.association.model import (
    SOUNDNET_LAYERS,
    AssociationModel,
    FaceEncoder,
    VoiceEncoder,
    count_parameters,
    load_face_backbone,
    load_voice_backbone,
)

PAPER = load_config("paper")


def test_vgg16_conv_parameters_match_the_published_network():
    face = FaceEncoder(PAPER.face, PAPER.embedding)
    # torchvision's vgg16.features: 14,714,688 parameters (conv1_1 .. conv5_3)
    assert count_parameters(face.features) == 14_714_688
    # FC 512->128 + ReLU, FC 128->128
    assert count_parameters(face.head) == 512 * 128 + 128 + 128 * 128 + 128
    convs = [m for m in face.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 and [c.out_channels for c in convs][-3:] == [512, 512, 512]


def test_soundnet_conv1_to_conv6_parameters():
    voice = VoiceEncoder(PAPER.voice, PAPER.embedding)
    widths, cin, expected = PAPER.voice.widths, 1, 0
    for w, (k, *_rest) in zip(widths, SOUNDNET_LAYERS, strict=True):
        expected += cin * w * k + w + 2 * w  # conv weight, bias, batch-norm scale and shift
        cin = w
    assert expected == 774_096
    assert count_parameters(voice.features) == expected


def test_paper_shapes_face_224_and_ten_seconds_of_voice():
    model = AssociationModel(PAPER).eval()
    with torch.no_grad():
        feats = model.face_encoder.features(torch.zeros(1, 3, 224, 224))
        assert feats.shape == (1, 512, 14, 14)  # sec. 4.1 pools conv5_3, before the fifth max-pool
        sound = model.voice_encoder.features(torch.zeros(1, 220_500))
        # 220500 -conv1-> 110251 -pool8-> 13781 -conv2-> 6891 -pool8-> 861 -conv3-> 431 -conv4-> 216
        # -conv5-> 109 -pool4-> 27 -conv6-> 14
        assert sound.shape == (1, 512, 14)
        f, v = model(torch.zeros(2, 3, 224, 224), torch.zeros(2, 220_500))
    assert f.shape == v.shape == (2, 128)


def test_voice_encoder_takes_any_length():
    small = load_config("small")
    enc = VoiceEncoder(small.voice, small.embedding).eval()
    with torch.no_grad():
        for seconds in (1, 3, 7.5):
            assert enc(torch.randn(1, int(22_050 * seconds))).shape == (1, 128)


def test_loss_on_a_hand_computed_example():
    a, p, n = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 6.0]])
    # d+ = 5, d- = 6: softmax([5, 6]) = [0.26894, 0.73106]; loss = 0.26894^2 + 0.26894^2
    s = 1 / (1 + math.e)
    assert triplet_loss(a, p, n).item() == pytest.approx(2 * s * s, rel=1e-6)
    assert triplet_loss(a, n, p).item() == pytest.approx(2 * (1 - s) ** 2, rel=1e-6)
    assert triplet_loss(a, a + 1, a + 1).item() == pytest.approx(0.5)


def test_loss_gradient_is_finite_when_anchor_and_positive_coincide():
    a = torch.zeros(1, 4, requires_grad=True)
    triplet_loss(a, torch.zeros(1, 4), torch.ones(1, 4)).sum().backward()
    assert torch.isfinite(a.grad).all()


def test_hardest_keeps_the_highest_losses():
    assert sorted(hardest(torch.tensor([0.1, 0.9, 0.3, 0.7]), 2).tolist()) == [1, 3]
    assert len(hardest(torch.tensor([0.1]), 8)) == 1


def test_configs_are_files_with_overrides():
    small = load_config("small", ["train.iterations=7", "face.widths=[8, 8, 8, 8, 8]"])
    assert small.train.iterations == 7 and small.face.widths == (8, 8, 8, 8, 8)
    assert PAPER.train.batch == 8 and PAPER.train.iterations == 240_000 and PAPER.train.hard_after == 120_000
    assert PAPER.face.size == 224 and PAPER.voice.seconds == 10.0 and PAPER.train.lr_backbone == 1e-5
    with pytest.raises(UsageError, match="unknown TrainConfig keys: itrations"):
        load_config("small", ["train.itrations=7"])
    with pytest.raises(UsageError, match=r"expected section\.key=value"):
        load_config("small", ["iterations=7"])
    with pytest.raises(UsageError, match=r"no config 'huge'"):
        load_config("huge")


def test_backbone_weights_load_from_torchvision_style_files(tmp_path):
    small = load_config("small")
    src, dst = AssociationModel(small), AssociationModel(small)
    torch.save({f"features.{k}": v for k, v in src.face_encoder.features.state_dict().items()},
               tmp_path / "vgg.pth")
    # SoundNet ports keep 2-D kernels [out, in, k, 1]
    sound = {k: (v[..., None] if k.endswith("weight") and v.dim() == 3 else v)
             for k, v in src.voice_encoder.features.state_dict().items()}
    torch.save({"state_dict": sound}, tmp_path / "soundnet.pth")
    assert load_face_backbone(dst.face_encoder, tmp_path / "vgg.pth") > 0
    assert load_voice_backbone(dst.voice_encoder, tmp_path / "soundnet.pth") > 0
    for modality in ("face", "voice"):
        for a, b in zip(src.backbone_parameters(modality), dst.backbone_parameters(modality), strict=True):
            assert torch.equal(a, b)
    with pytest.raises(UsageError, match=r"no weights for face backbone"):
        load_face_backbone(AssociationModel(PAPER).face_encoder, tmp_path / "vgg.pth")


@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage", b"PK\x03\x04truncated zip", b"not a weight file"])
def test_unreadable_weight_files_are_clear_errors(tmp_path, content):
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(FormatError, match="not a readable weight file"):
        load_face_backbone(AssociationModel(load_config("small")).face_encoder, path)


def test_a_weight_file_of_the_wrong_type_is_a_clear_error(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(FormatError, match="expected a state dict, found list"):
        load_voice_backbone(AssociationModel(load_config("small")).voice_encoder, tmp_path / "list.pt")


def test_each_backbone_trains_at_the_rate_of_its_own_weights():
    """Sec. 4.3 fine-tunes a loaded backbone at 1e-5; one without weights trains at the head rate."""
    from facevoice.training.association.train import build_optimizer

    small = load_config("small")
    model = AssociationModel(small)
    head, face, voice = build_optimizer(model, small, {"face"}).param_groups
    assert (head["lr"], face["lr"], voice["lr"]) == (1e-3, 1e-5, 1e-3)
    assert {id(p) for p in face["params"]} == {id(p) for p in model.face_encoder.features.parameters()}
    assert {id(p) for p in voice["params"]} == {id(p) for p in model.voice_encoder.features.parameters()}
    assert [g["lr"] for g in build_optimizer(model, small, set()).param_groups] == [1e-3, 1e-3, 1e-3]
    assert [g["lr"] for g in build_optimizer(model, small, {"face", "voice"}).param_groups] == [1e-3, 1e-5, 1e-5]


def test_kims_gefa_figure_sits_beside_the_largest_group_row():
    """Kim et al. Table 3's G/E/F/A column is the single largest homogeneous group (sec. 4.4):
    59.0 / 56.8 belong to our `largest group` row; our G/E/F/A row (any cohort) has no paper figure."""
    from facevoice.training.association.report import matching_lines

    cell = {"accuracy": 0.6, "ci95": (0.55, 0.65), "ci95_identity_bootstrap": (0.5, 0.7), "trials": 100,
            "identities": 10}
    m = {"matching": {d: {c: cell for c in ("-", "G", "E", "G/E", "G/E/F/A", "largest group")}
                      for d in ("v2f", "f2v")}}
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line.split("|")[-2].strip()
            for line in matching_lines(m)[2:]}
    assert rows[("V→F", "largest group")] == "59.0" and rows[("F→V", "largest group")] == "56.8"
    assert rows[("V→F", "G/E/F/A")] == rows[("F→V", "G/E/F/A")] == "–"
    assert rows[("V→F", "-")] == "78.2" and rows[("F→V", "G")] == "61.6"


def test_the_pool5_switch_pools_after_the_fifth_max_pool():
    """face.pool=pool5 is the old deviation, a config away; both layouts load the same weights."""
    old = load_config("paper", ["face.pool=pool5"])
    assert AssociationModel(old).face_encoder.features(torch.zeros(1, 3, 224, 224)).shape == (1, 512, 7, 7)
    paper, pool5 = AssociationModel(PAPER).face_encoder, AssociationModel(old).face_encoder
    assert set(paper.features.state_dict()) == set(pool5.features.state_dict())
    with pytest.raises(UsageError, match=r"face\.pool"):
        load_config("paper", ["face.pool=max"])


def test_table6_sets_hold_the_same_number_of_samples_per_identity():
    """Kim sec. 4.5: "the number of samples per identity was kept the same". Identity 0 has 6
    pairs and the others 2: before, a set of 20 took whatever the shuffle gave it."""
    import numpy as np

    from facevoice.training.association.data import Modality, SplitData
    from facevoice.training.association.protocol import Embeddings, retrieval, retrieval_sets, set_size

    ident = np.array([0] * 6 + [i for i in range(1, 10) for _ in range(2)])
    mod = lambda: Modality(np.zeros((len(ident), 1)), ident.copy(), [str(k) for k in range(len(ident))])  # noqa: E731
    split = SplitData([f"p{i}" for i in range(10)], [{} for _ in range(10)], mod(), mod())
    assert set_size(20, 10, 2) == 20 and set_size(15, 10, 2) == 10 and set_size(6, 10, 2) == 6
    assert set_size(5000, 10, 2) == 20
    rng = np.random.default_rng(0)
    for size, expected_sets in ((20, 1), (10, 2), (5, 4)):
        sets = retrieval_sets(split, size, rng)
        assert len(sets) == expected_sets, size
        for s in sets:
            counts = np.bincount(split.voice.identity[s[:, 0]], minlength=10)
            assert len(s) == size and len(set(counts[counts > 0])) == 1  # equal samples per identity
            assert (split.voice.identity[s[:, 0]] == split.face.identity[s[:, 1]]).all()
        used = np.concatenate(sets)
        assert len({tuple(p) for p in used}) == len(used)  # disjoint
    emb = Embeddings(face=np.eye(10)[ident] * 5, voice=np.eye(10)[ident] * 5)
    r = retrieval(emb, split, seed=0, sizes=(20, 10), ks=(1,))
    assert r["sizes"] == [10, 20] and r["v2f"][20][1] == 1.0
    assert r["random"][10][1] == pytest.approx(1 / 10) and r["random"][20][1] == pytest.approx(2 / 20)


def test_tuples_anchor_on_a_random_clip_and_pair_it_with_a_face_of_another_video():
    """Sec. 4.3: a random voice (so a person with nine clips anchors nine times as often as one
    with one), a face of the same identity from a different video where there is one."""
    import numpy as np

    from facevoice.training.association.data import Modality, SplitData, TupleSampler

    small = load_config("small", ["voice.seconds=0.01"])
    voice_id = np.array([0] * 9 + [1])
    voice_video = np.array(["a"] * 5 + ["b"] * 4 + ["c"])
    face_id = np.array([0, 0, 1])
    face_video = np.array(["a", "b", "c"])
    voices = Modality(np.zeros((10, 400), np.float16), voice_id, [f"v{k}" for k in range(10)], voice_video)
    faces = Modality(np.zeros((3, 3, 64, 64), np.float16), face_id, ["f0", "f1", "f2"], face_video)
    split = SplitData(["p0", "p1"], [{}, {}], faces, voices)
    sampler = TupleSampler(split, small, "v2f", seed=0)
    anchors, positives = [], []
    for _ in range(400):
        a = int(sampler.rng.choice(sampler.anchors["voice"]))
        anchors.append(a)
        positives.append(sampler._positive("voice", a, "face", int(voice_id[a])))
    anchors, positives = np.array(anchors), np.array(positives)
    assert 0.85 < (voice_id[anchors] == 0).mean() < 0.95  # 9 of 10 clips are person 0's
    zero = voice_id[anchors] == 0
    assert (face_video[positives[zero]] != voice_video[anchors[zero]]).all()  # always the other video
    assert (positives[~zero] == 2).all()  # person 1 has one face: from the same video, the only one
    batch = sampler.draw(8)
    assert batch.faces.shape[0] == 16 and batch.voices.shape[0] == 8


def test_torchvision_vgg16_state_dict_loads_into_the_face_subnetwork(tmp_path):
    """Kim et al. fine-tune ImageNet VGG16: torchvision's `vgg16` state dict (features.0 ..
    features.28, classifier.0/3/6) loads by its own key layout; its input convention (RGB,
    ImageNet mean and std) is the face front end's default, which export records."""
    from facevoice.service.media import FaceImage
    from facevoice.training.association.model import load_face_backbone

    g = torch.Generator().manual_seed(0)
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision.models.vgg16().features
    state, cin = {}, 3
    for i, w in zip(indices, widths, strict=True):
        state[f"features.{i}.weight"] = torch.randn(w, cin, 3, 3, generator=g)
        state[f"features.{i}.bias"] = torch.randn(w, generator=g)
        cin = w
    for i, (o, n) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096)), strict=True):
        state[f"classifier.{i}.weight"], state[f"classifier.{i}.bias"] = torch.zeros(o, n), torch.zeros(o)
    torch.save(state, tmp_path / "vgg16.pth")
    face = AssociationModel(PAPER).face_encoder
    assert load_face_backbone(face, tmp_path / "vgg16.pth") == 26
    assert torch.equal(face.features[28].weight, state["features.28.weight"])
    assert PAPER.face.frontend() == FaceImage(size=224, detector="hog+synth", align=False)
    assert FaceImage().channels == "RGB"


def test_loudness_is_the_rms_level_in_dbfs():
    import numpy as np

    from facevoice.training.association.evaluate import loudness_dbfs

    t = np.arange(22050) / 22050
    waves = np.stack([np.sin(2 * np.pi * 220 * t), 0.1 * np.sin(2 * np.pi * 220 * t), np.zeros_like(t)])
    db = loudness_dbfs(waves.astype(np.float32))
    assert db[0] == pytest.approx(-3.01, abs=0.01) and db[1] == pytest.approx(-23.01, abs=0.01) and db[2] == -200


def test_table_a2_pools_by_two_for_representations_wider_than_the_last_conv_layer():
    """Kim Table A.2: 128-d and 512-d pool conv5_3 / conv6 globally; 1024-4096-d average-pool by
    2 along each non-singleton dimension first."""
    wide = load_config("paper", ["embedding.hidden=4096", "embedding.dim=4096", "embedding.pool=2x"])
    face = AssociationModel(wide).face_encoder
    assert face.head[0].in_features == 512 * 7 * 7  # conv5_3 is 14x14 at 224 px
    small = load_config("small", ["embedding.hidden=1024", "embedding.dim=1024", "embedding.pool=2x"])
    model = AssociationModel(small).eval()
    with torch.no_grad():
        f, v = model(torch.zeros(2, 3, 64, 64), torch.zeros(2, small.voice.frontend().samples))
    assert f.shape == v.shape == (2, 1024)
    assert AssociationModel(PAPER).face_encoder.head[0].in_features == 512  # the paper's 128-d: global
    with pytest.raises(UsageError, match=r"Table A\.2"):
        load_config("paper", ["embedding.pool=4x"])


def test_the_contrastive_loss_of_the_siamese_baseline():
    """Table 7's Siamese net (sec. 4.6): d+^2 + max(0, margin - d-)^2, numbers by hand."""
    from facevoice.training.association.loss import contrastive_loss

    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    p = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    n = torch.tensor([[0.6, 0.8], [3.0, 0.0]])
    assert contrastive_loss(a, p, n, margin=2.0).tolist() == pytest.approx([25.0 + 1.0, 0.0])
    assert load_config("small", ["train.loss=contrastive"]).train.loss == "contrastive"
    with pytest.raises(UsageError, match=r"train\.loss"):
        load_config("small", ["train.loss=hinge"])


def test_link_probes_read_a_measured_number_without_a_generator():
    """The speaker's measured F0 (`measured`) is read like the generator's numbers: within gender,
    from each side. Faces here carry it (plus noise), voices do not; a person without it is left out,
    and the generator's figures are the same with or without it."""
    import numpy as np

    from facevoice.training.association.data import Modality, SplitData
    from facevoice.training.association.protocol import Embeddings, link_probes

    rng = np.random.default_rng(0)
    n = 40
    ident = np.repeat(np.arange(n), 2)
    split = SplitData([f"p{i}" for i in range(n)], [{"gender": "female" if i % 2 else "male"} for i in range(n)],
                      Modality(np.zeros((2 * n, 1)), ident.copy(), [str(k) for k in range(2 * n)]),
                      Modality(np.zeros((2 * n, 1)), ident.copy(), [str(k) for k in range(2 * n)]))
    f0 = np.log(np.where(np.arange(n) % 2, 200.0, 100.0) * np.exp(0.1 * rng.standard_normal(n)))
    f0[3] = np.nan  # never voiced
    face = np.c_[np.nan_to_num(f0)[ident] + 0.02 * rng.standard_normal(2 * n), rng.standard_normal((2 * n, 3))]
    emb = Embeddings(face=face, voice=rng.standard_normal((2 * n, 4)))
    links = link_probes(emb, split, {}, trials=10, measured={"measured_f0": f0})
    assert set(links) == {"face", "voice"} and list(links["face"]) == ["measured_f0"]
    assert links["face"]["measured_f0"]["r"] > 0.9  # within gender: the spread around 100 / 200 Hz
    assert abs(links["voice"]["measured_f0"]["r"]) < 0.3
    assert link_probes(emb, split, {}, trials=10) == {}
    people = {f"p{i}": {"z_size": str(float(face[2 * i, 0]))} for i in range(n)}
    plain = link_probes(emb, split, people, trials=10)
    both = link_probes(emb, split, people, trials=10, measured={"measured_f0": f0})
    assert plain["face"]["z_size"] == both["face"]["z_size"] and plain["voice"] == {
        k: v for k, v in both["voice"].items() if k != "measured_f0"}
