"""Speech2Face networks and eq. (1): Table 1 shapes, parameter counts, each loss term on
hand-checked inputs, configs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from facevoice.service.errors import UsageError
from facevoice.service.media import Speech2FaceAudio
from facevoice.training.association.model import count_parameters
from facevoice.training.speech2face.config import load_config
from facevoice.training.speech2face.loss import distillation, normalised_l2, ranking, s2f_loss, s2f_terms
from facevoice.training.speech2face.model import FaceDecoder, FaceNet, VoiceEncoder, same_padding


def _frames(seconds: float) -> int:
    return Speech2FaceAudio(seconds=seconds).shape[1]


def test_spectrogram_frames_for_3_6_10_seconds():
    assert [_frames(s) for s in (3.0, 6.0, 10.0)] == [298, 598, 998]  # Table 1 caption: 598 x 257 for 6 s


@pytest.mark.parametrize(("seconds", "times"), [
    # time after conv1..conv9: max-pool 2x1 after conv3-6 (floor), stride 2 at conv8-9 ('SAME': ceil)
    (3.0, [298, 298, 149, 74, 37, 18, 18, 9, 5]),
    (6.0, [598, 598, 299, 149, 74, 37, 37, 19, 10]),
    (10.0, [998, 998, 499, 249, 124, 62, 62, 31, 16]),
])
def test_table1_layer_shapes(seconds, times):
    cfg = load_config("small")
    enc = VoiceEncoder(cfg.voice, feature_dim=32).eval()
    shapes = []
    for block in enc.blocks:
        block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    with torch.no_grad():
        out = enc(torch.randn(2, 2, _frames(seconds), 257))
    widths = cfg.voice.widths
    freqs = [257] * 7 + [129, 65]
    assert [s[0] for s in shapes] == list(widths)
    assert [s[2] for s in shapes] == freqs
    assert [s[1] for s in shapes] == times
    assert out.shape == (2, 32)


# Oh et al. 2019 Table 1, transcribed: per conv layer (filters, stride, activation, norm, pool),
# then the tail after conv9
TABLE1 = [(64, 1, "RELU", "BN", None), (64, 1, "RELU", "BN", None), (128, 1, "RELU", "BN", "2x1"),
          (128, 1, "RELU", "BN", "2x1"), (128, 1, "RELU", "BN", "2x1"), (256, 1, "RELU", "BN", "2x1"),
          (512, 1, "RELU", "BN", None), (512, 2, "RELU", "BN", None), (512, 2, None, None, None)]
TABLE1_TAIL = ["AVGPOOL", "RELU", "BN", "FC 4096", "RELU", "FC 4096"]


def test_voice_encoder_layers_follow_the_transcription_of_table1():
    """Within a block: CONV, ReLU, BN, then the max-pool where there is one; conv9 is a bare CONV."""
    enc = VoiceEncoder(load_config("paper").voice, feature_dim=4096)
    names = {torch.nn.ReLU: "RELU", torch.nn.BatchNorm2d: "BN", torch.nn.BatchNorm1d: "BN",
             torch.nn.MaxPool2d: "MAXPOOL"}
    assert len(enc.blocks) == len(TABLE1)
    for block, (filters, stride, act, norm, pool) in zip(enc.blocks, TABLE1, strict=True):
        conv, *rest = block
        assert (conv.out_channels, conv.stride, conv.kernel_size) == (filters, (stride, stride), (4, 4))
        expected = [x for x in (act, norm, pool and "MAXPOOL") if x]
        assert [names[type(m)] for m in rest] == expected
        if pool:
            assert rest[-1].kernel_size == (2, 1)
    tail = ["AVGPOOL"] + [f"FC {m.out_features}" if isinstance(m, torch.nn.Linear) else names[type(m)]
                          for m in enc.head]
    assert tail == TABLE1_TAIL


def test_paper_voice_encoder_parameters_and_output():
    cfg = load_config("paper")
    enc = VoiceEncoder(cfg.voice, feature_dim=4096)
    widths = (2, 64, 64, 128, 128, 128, 256, 512, 512, 512)
    convs = sum(cin * cout * 16 + cout for cin, cout in itertools.pairwise(widths))  # weights, bias
    convs += 2 * sum(widths[1:-1])  # BN scale and shift after conv1..conv8 (conv9 is a bare CONV)
    pooled = 512 * 65
    fcs = 2 * pooled + pooled * 4096 + 4096 + 4096 * 4096 + 4096  # BN after the pool, FC, FC
    assert count_parameters(enc) == convs + fcs
    with torch.no_grad():
        assert enc.eval()(torch.randn(1, 2, 598, 257)).shape == (1, 4096)


def test_paper_face_network_is_vgg_face_sized():
    cfg = load_config("paper")
    net = FaceNet(cfg.face, classes=2622)  # VGG-Face: 2,622 identities
    vgg16_conv, fc6, fc7, fc8 = 14_714_688, 25088 * 4096 + 4096, 4096 * 4096 + 4096, 4096 * 2622 + 2622
    assert count_parameters(net) == vgg16_conv + fc6 + fc7 + fc8 == 145_002_878


def test_small_networks_shapes():
    cfg = load_config("small")
    net = FaceNet(cfg.face, classes=7).eval()
    faces = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        v = net.features(faces)
        assert v.shape == (3, 256) and (v >= 0).all()  # fc7 after its ReLU
        assert net.logits(v).shape == (3, 7)
        dec = FaceDecoder(cfg.decoder, 256).eval()
        img = dec(v)
        assert img.shape == (3, 3, 64, 64) and img.min() >= 0 and img.max() <= 1
        assert dec.first_layer(v).shape == (3, cfg.decoder.first_layer)


def test_paper_decoder_draws_224_pixels():
    cfg = load_config("paper")
    dec = FaceDecoder(cfg.decoder, 4096).eval()
    with torch.no_grad():
        assert dec(torch.rand(1, 4096)).shape == (1, 3, 224, 224)
    assert dec.first.out_features == 1000  # f_dec: R^4096 -> R^1000


def test_voice_encoder_rejects_bad_input():
    enc = VoiceEncoder(load_config("small").voice, feature_dim=8)
    with pytest.raises(UsageError, match="2, time, frequency"):
        enc(torch.randn(1, 1, 100, 257))
    with pytest.raises(UsageError, match="at least 16"):
        enc(torch.randn(1, 2, 15, 257))


def test_same_padding_matches_tensorflow():
    assert same_padding(598, 4, 1) == (1, 2)  # total 3, the odd one at the end
    assert same_padding(37, 4, 2) == (1, 2)  # out 19: (19-1)*2 + 4 - 37 = 3
    assert same_padding(10, 4, 2) == (1, 1)  # out 5: 8 + 4 - 10 = 2


def test_distillation_by_hand():
    zero = torch.zeros(1, 2)
    assert distillation(zero, zero, 2.0).item() == pytest.approx(math.log(2))
    # teacher [2, 0] at T=2 -> p = softmax([1, 0]); student [4, 0] -> log softmax([2, 0])
    p0 = math.e / (math.e + 1)
    want = -(p0 * (2 - math.log(math.e ** 2 + 1)) + (1 - p0) * (-math.log(math.e ** 2 + 1)))
    assert distillation(torch.tensor([[2.0, 0.0]]), torch.tensor([[4.0, 0.0]]), 2.0).item() == pytest.approx(want)
    # a student equal to the teacher minimises it: the entropy of p
    entropy = -(p0 * math.log(p0) + (1 - p0) * math.log(1 - p0))
    assert distillation(torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 0.0]]), 2.0).item() == pytest.approx(entropy)


def test_normalised_l2_by_hand():
    assert normalised_l2(torch.tensor([[3.0, 4.0]]), torch.tensor([[6.0, 8.0]])).item() == pytest.approx(0)
    assert normalised_l2(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])).item() == pytest.approx(2)
    assert normalised_l2(torch.tensor([[1.0, 0.0]]), torch.tensor([[-5.0, 0.0]])).item() == pytest.approx(4)


def test_eq1_total_by_hand():
    v_f, v_s = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    terms = s2f_terms(v_f, v_s, f_dec=lambda v: v, f_vgg=lambda v: torch.zeros(len(v), 2), temperature=2.0)
    assert terms["decoder_l1"].item() == pytest.approx(3.0)  # |1-0| + |0-2|
    assert terms["feature_l2"].item() == pytest.approx(2.0)
    assert terms["distill"].item() == pytest.approx(math.log(2))
    total = s2f_loss(terms, lambda1=0.025, lambda2=200.0).item()
    assert total == pytest.approx(3.0 + 0.025 * 2.0 + 200 * math.log(2))


def test_config_overrides_and_errors():
    cfg = load_config("small", ["train.iterations=7", "voice.seconds=6.0"])
    assert cfg.train.iterations == 7 and cfg.voice.seconds == 6.0
    paper = load_config("paper")
    assert (paper.train.beta1, paper.train.eps, paper.train.lambda1, paper.train.lambda2) == (0.5, 1e-4, 0.025, 200.0)
    assert paper.voice.widths == (64, 64, 128, 128, 128, 256, 512, 512, 512)
    with pytest.raises(UsageError, match="nine conv layers"):
        load_config("small", ["voice.widths=[8, 8]"])
    with pytest.raises(UsageError, match=r"decoder\.size"):
        load_config("small", ["decoder.size=100"])
    with pytest.raises(UsageError, match="unknown DecoderConfig keys"):
        load_config("small", ["decoder.nope=1"])
    with pytest.raises(UsageError, match="no config"):
        load_config("nonexistent")


def test_voice_augment_windows_gains_and_off_by_default():
    import numpy as np

    from facevoice.training.speech2face.train import VoiceAugment

    spec = torch.arange(2 * 2 * 10 * 3, dtype=torch.float32).view(2, 2, 10, 3) + 1
    paper = load_config("paper")
    assert paper.train.crop_from == 0 and paper.train.gain_db == 0
    off = VoiceAugment(paper, frames=10, rng=np.random.default_rng(0))
    assert torch.equal(off(spec), spec)  # the paper setting: the first voice.seconds, untouched
    on = VoiceAugment(load_config("paper", ["train.gain_db=6"]), frames=4, rng=np.random.default_rng(0))
    out = on(spec)
    assert out.shape == (2, 2, 4, 3)
    for b in range(2):
        ratios = [out[b] / spec[b, :, o:o + 4] for o in range(7)]
        windows = [r for r in ratios if torch.allclose(r, r.flatten()[0].expand_as(r))]
        assert len(windows) == 1  # one contiguous window of the cached clip, scaled by one gain
        gain = windows[0].flatten()[0].item()
        assert 10 ** (-6 / 20 * 0.3) - 1e-6 <= gain <= 10 ** (6 / 20 * 0.3) + 1e-6


def test_match_score_by_hand():
    from facevoice.training.speech2face.train import match_score

    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # clip 0 points at person 0: both others are farther -> 1.0; clip 1 (person 1) points at person 0:
    # person 0 nearer, person 2 farther -> 0.5; clip 2 (person 2) points at person 0: both nearer -> 0.0
    v_s = torch.tensor([[2.0, 0.1], [1.0, 0.0], [1.0, 0.0]])
    assert match_score(v_s, means, torch.tensor([0, 1, 2])) == pytest.approx((1.0 + 0.5 + 0.0) / 3)


def test_select_must_be_known():
    with pytest.raises(UsageError, match=r"train\.select"):
        load_config("paper", ["train.select=angle"])


def test_ranking_by_hand():
    """Three people along the axes: v_s along person 0 (any length) has cosines (1, 0, 0), so at
    temperature 1 the loss is log(e + 2) - 1 for person 0 and log(e + 2) for the others."""
    gallery = torch.eye(3) * torch.tensor([[2.0], [0.5], [3.0]])
    v_s = torch.tensor([[5.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    own = ranking(v_s, gallery, torch.tensor([0, 0]), temperature=1.0)
    assert own == pytest.approx(torch.full((2,), math.log(math.e + 2) - 1), abs=1e-6)
    other = ranking(v_s, gallery, torch.tensor([1, 2]), temperature=1.0)
    assert other == pytest.approx(torch.full((2,), math.log(math.e + 2)), abs=1e-6)
    # a colder softmax punishes a wrong first place harder and a right one less
    assert ranking(v_s, gallery, torch.tensor([0, 1]), temperature=0.1)[0] < own[0]
    assert ranking(v_s, gallery, torch.tensor([0, 1]), temperature=0.1)[1] > other[0]


def test_ranking_is_off_in_the_paper_config_and_checked():
    assert load_config("paper").train.ranking_weight == 0
    with pytest.raises(UsageError, match="ranking_temperature"):
        load_config("small", ["train.ranking_temperature=0"])


def _vggface_layout(net: FaceNet, cfg) -> dict:
    """A state dict in the public VGG-Face conversion's key layout (conv1_1 .. conv5_3; fc6-fc8
    as convolutions, as the Caffe model stores them), built from `net`'s weights."""
    convs = [m for m in net.features_conv if isinstance(m, torch.nn.Conv2d)]
    names = [f"conv{b + 1}_{k + 1}" for b, n in enumerate(cfg.face.convs) for k in range(n)]
    out = {f"{name}.{p}": getattr(c, p).detach().clone() for name, c in zip(names, convs, strict=True)
           for p in ("weight", "bias")}
    side = cfg.face.size // 32
    out["fc6.weight"] = net.fc6.weight.detach().reshape(cfg.face.fc, cfg.face.widths[-1], side, side).clone()
    out["fc7.weight"] = net.fc7.weight.detach()[..., None, None].clone()
    out["fc8.weight"] = net.fc8.weight.detach()[..., None, None].clone()
    for n in (6, 7, 8):
        out[f"fc{n}.bias"] = getattr(net, f"fc{n}").bias.detach().clone()
    return out


def test_published_vggface_weights_load_with_their_input_convention(tmp_path):
    """Oh et al. use VGG-Face: its published weights become face_net.pt, and its convention (BGR,
    0-255, mean-subtracted) travels in the config to every network and the export."""
    from facevoice.service.errors import FormatError
    from facevoice.service.media import frontends
    from facevoice.training.speech2face.checkpoints import VGGFACE_IDENTITIES, load_face_net
    from facevoice.training.speech2face.features import TrainFaceFeaturesOptions, train_face_features

    sets = ["face.size=32", "face.widths=[4, 8, 8, 16, 16]", "face.fc=16", "face.batch_norm=false"]
    cfg = load_config("small", sets)
    source = FaceNet(cfg.face, VGGFACE_IDENTITIES).eval()
    torch.save(_vggface_layout(source, cfg), tmp_path / "vgg_face.pth")
    def opts(weights):
        return TrainFaceFeaturesOptions(corpus=tmp_path, config="small", out=tmp_path / "net", vggface=weights,
                                        set=sets)

    result = train_face_features(opts(tmp_path / "vgg_face.pth"))
    assert "BGR" in result.summary() and result.face_net == tmp_path / "net" / "face_net.pt"
    net, trained = load_face_net(tmp_path / "net" / "face_net.pt", torch.device("cpu"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net.features(x), source.features(x)) and torch.equal(net(x), source(x))
    face = trained.face.frontend()
    assert (trained.face.input, face.channels) == ("vggface", "BGR")
    assert frontends.from_dict(frontends.to_dict(face)) == face  # what export writes and the service reads
    torch.save({k: v for k, v in _vggface_layout(source, cfg).items() if k != "conv3_2.weight"}, tmp_path / "cut.pth")
    with pytest.raises(FormatError, match=r"no 'conv3_2\.weight'"):
        train_face_features(opts(tmp_path / "cut.pth"))


def test_the_vggface_convention_is_bgr_0_255_minus_the_mean():
    import io

    from PIL import Image

    from facevoice.service.media import FaceImage, face_input
    from facevoice.service.media.image import INPUT_CONVENTIONS
    from facevoice.training.speech2face.data import to_normalised, to_rgb

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(buf, format="PNG")
    cfg = FaceImage(size=16, **INPUT_CONVENTIONS["vggface"])
    x = face_input(buf.getvalue(), cfg, box=(8, 8, 16, 16))
    assert x[0].mean() == pytest.approx(0 - 93.5940, abs=1e-3)  # B
    assert x[1].mean() == pytest.approx(0 - 104.7624, abs=1e-3)  # G
    assert x[2].mean() == pytest.approx(255 - 129.1863, abs=1e-3)  # R
    rgb = to_rgb(torch.from_numpy(x)[None], cfg)
    assert rgb[0, :, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-5)
    assert torch.allclose(to_normalised(rgb, cfg), torch.from_numpy(x)[None], atol=1e-3)


def test_the_batch_norm_switch_removes_every_bn_of_the_encoder():
    """Oh et al. Fig. 8 compares training with and without batch normalisation."""
    cfg = load_config("small", ["voice.batch_norm=false"])
    enc = VoiceEncoder(cfg.voice, feature_dim=32).eval()
    kinds = [type(m) for m in enc.modules()]
    assert torch.nn.BatchNorm2d not in kinds and torch.nn.BatchNorm1d not in kinds
    with_bn = VoiceEncoder(load_config("small").voice, feature_dim=32)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.modules()) == 8
    with torch.no_grad():
        assert enc(torch.randn(2, 2, 100, 257)).shape == (2, 32)


def test_ohs_crop_is_a_config_key_that_travels_to_the_front_end(tmp_path):
    """Oh et al. sec. 3 crop dlib's CNN face region and resize it to 224 x 224: `paper` is that
    (detector cnn, box_scale 1.0, no alignment); `small` keeps the corpus-face detector and Kim et
    al.'s 1.5x margin. The key is recorded in a network's checkpoint and in the front end export
    writes (facevoice.json's `frontends.to_dict`)."""
    import json

    from facevoice.service.media import frontends
    from facevoice.training.speech2face.checkpoints import VGGFACE_IDENTITIES, load_face_net
    from facevoice.training.speech2face.config import from_dict
    from facevoice.training.speech2face.features import TrainFaceFeaturesOptions, train_face_features

    paper, small = load_config("paper").face, load_config("small").face
    assert (paper.detector, paper.box_scale, paper.align, paper.size) == ("cnn", 1.0, False, 224)
    assert (small.detector, small.box_scale, small.align) == ("hog+synth", 1.5, False)
    face = paper.frontend()
    assert (face.detector, face.box_scale, face.align, face.size) == ("cnn", 1.0, False, 224)
    assert frontends.from_dict(json.loads(json.dumps(frontends.to_dict(face)))) == face
    assert load_config("small", ["face.box_scale=1.25"]).face.frontend().box_scale == 1.25
    # a run recorded before the key existed was cut with the 1.5x margin, and still is
    old = load_config("small").to_dict()
    del old["face"]["box_scale"]
    assert from_dict(old).face.frontend().box_scale == 1.5
    with pytest.raises(UsageError, match="box_scale"):
        load_config("small", ["face.box_scale=0"])
    with pytest.raises(UsageError, match=r"face\.detector"):
        load_config("small", ["face.detector=mtcnn"])
    # through a network's checkpoint, which the decoder, the voice encoder and export start from
    sets = ["face.size=32", "face.widths=[4, 8, 8, 16, 16]", "face.fc=16", "face.batch_norm=false",
            "face.detector=cnn", "face.box_scale=1.0"]
    cfg = load_config("small", sets)
    torch.save(_vggface_layout(FaceNet(cfg.face, VGGFACE_IDENTITIES), cfg), tmp_path / "vgg_face.pth")
    train_face_features(TrainFaceFeaturesOptions(corpus=tmp_path, out=tmp_path / "net", set=sets,
                                                 vggface=tmp_path / "vgg_face.pth"))
    _, trained = load_face_net(tmp_path / "net" / "face_net.pt", torch.device("cpu"))
    assert (trained.face.frontend().detector, trained.face.frontend().box_scale) == ("cnn", 1.0)


# Faces in the photos packages ship, read off the pictures (as tests/test_faces.py): eye centres
REAL_PHOTOS = {"grace_hopper.jpg": ((222, 194), (307, 190)), "astronaut.png": ((202, 102), (247, 102))}


@pytest.mark.parametrize("name", sorted(REAL_PHOTOS))
def test_an_oh_crop_of_a_real_photo_is_the_cnn_face_region_at_the_network_size(name):
    """The paper config's front end on a real photo: dlib's CNN finds one face (about 3 s on one
    core), and the network's input is exactly that box (square) resized to 224 x 224: no margin,
    no rotation. The box lies on the face (both eyes inside, IoU over 0.5 with dlib's HOG box),
    and is tighter than Kim et al.'s 1.5x crop of the same box."""
    from pathlib import Path

    import numpy as np
    import skimage
    from matplotlib import cbook

    from facevoice.service.media.faces import detect_faces, iou
    from facevoice.service.media.image import decode_image, face_input_used, normalise

    path = (Path(skimage.__file__).parent / "data" / name if name == "astronaut.png"
            else Path(cbook.get_sample_data(name, asfileobj=False)))
    data = path.read_bytes()
    frontend = load_config("paper").face.frontend()
    x, used = face_input_used(data, frontend)
    assert x.shape == (3, 224, 224) and used.source == "detected" and len(used.faces) == 1
    bx, by, w, h = used.box
    assert w == h  # the MMOD detector's boxes are square: the crop is the box itself
    img = decode_image(data)
    np.testing.assert_array_equal(x, normalise(img.crop((round(bx), round(by), round(bx + w), round(by + h))),
                                               frontend))
    assert all(bx <= ex <= bx + w and by <= ey <= by + h for ex, ey in REAL_PHOTOS[name])
    (hog,) = detect_faces(img, "hog")
    assert iou(used.box, hog.box) > 0.5
    margin = img.crop((round(bx - w / 4), round(by - h / 4), round(bx + 1.25 * w), round(by + 1.25 * h)))
    assert np.abs(x - normalise(margin, frontend)).mean() > 0.1
