"""Oh et al. 2019 sec. 3: the face feature network (our VGG-Face stand-in), the face decoder
(after Cole et al. 2017) and the voice encoder of Table 1."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from facevoice.service.errors import UsageError
from facevoice.training.association.model import vgg_features
from facevoice.training.speech2face.config import DecoderConfig, FaceNetConfig, VoiceNetConfig

POOL_AFTER = (3, 4, 5, 6)  # Table 1: MAXPOOL 2x1 (time only) after conv3..conv6
STRIDE2 = (8, 9)  # Table 1: stride 2 at conv8 and conv9


class FaceNet(nn.Module):
    """VGG-Face layout: VGG16 conv1_1..conv5_3, fc6, fc7 (each ReLU + dropout), fc8 over the
    training identities. `features` gives fc7 after its ReLU, the face feature v_f (sec. 3:
    "a 4096-D face feature from the penultimate layer (fc7)"); `logits` gives fc8, the f_VGG that
    eq. (1)'s distillation term compares."""

    def __init__(self, cfg: FaceNetConfig, classes: int):
        super().__init__()
        self.features_conv = vgg_features(cfg)
        side = cfg.size // 2 ** len(cfg.widths)
        self.fc6 = nn.Linear(cfg.widths[-1] * side * side, cfg.fc)
        self.fc7 = nn.Linear(cfg.fc, cfg.fc)
        self.fc8 = nn.Linear(cfg.fc, classes)
        self.dropout = nn.Dropout(cfg.dropout)

    def features(self, faces: torch.Tensor) -> torch.Tensor:
        """[B, 3, size, size] normalised faces -> v_f [B, fc]."""
        x = self.features_conv(faces).flatten(1)
        x = self.dropout(torch.relu(self.fc6(x)))
        return torch.relu(self.fc7(x))

    def logits(self, feature: torch.Tensor) -> torch.Tensor:
        """v_f -> fc8 (identity logits)."""
        return self.fc8(self.dropout(feature))

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(faces))


class FaceDecoder(nn.Module):
    """Feature -> canonical face, RGB in [0, 1]. `first` is f_dec of eq. (1) (R^4096 -> R^1000,
    ReLU); then an FC to a base x base map and one (upsample x2, conv 3x3, BN, ReLU) block per
    further width, and a 3x3 conv to RGB. Cole et al. predict landmarks and a texture and warp
    one by the other; we predict pixels directly (docs/speech2face.md, deviations)."""

    def __init__(self, cfg: DecoderConfig, feature_dim: int):
        super().__init__()
        self.base, self.widths = cfg.base, cfg.widths
        self.first = nn.Linear(feature_dim, cfg.first_layer)
        self.to_map = nn.Linear(cfg.first_layer, cfg.widths[0] * cfg.base * cfg.base)
        blocks = []
        for cin, cout in zip(cfg.widths, cfg.widths[1:], strict=False):
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.up = nn.Sequential(*blocks)
        self.to_rgb = nn.Conv2d(cfg.widths[-1], 3, 3, padding=1)

    def first_layer(self, feature: torch.Tensor) -> torch.Tensor:
        """f_dec(v): the decoder's first-layer activations (eq. (1), first term)."""
        return torch.relu(self.first(feature))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.to_map(self.first_layer(feature)))
        x = self.up(x.view(-1, self.widths[0], self.base, self.base))
        return torch.sigmoid(self.to_rgb(x))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding (the paper's framework): output ceil(size / stride), the odd
    pixel of padding at the end."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's 'SAME' padding (the paper's framework)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        top, bottom = same_padding(x.shape[2], kh, sh)
        left, right = same_padding(x.shape[3], kw, sw)
        return super().forward(F.pad(x, (left, right, top, bottom)))


class VoiceEncoder(nn.Module):
    """Table 1 of Oh et al. 2019. Input: the media pipeline's [2, T, 257] complex spectrogram
    (T = 598 for 6 s). conv1..conv8 are blocks of CONV 4x4 ('SAME'), ReLU, BN, in the table's
    order, with a MAXPOOL 2x1 (time only) closing the blocks of conv3..conv6; conv8 and conv9 have
    stride 2, and conv9 is a bare CONV. Then AVGPOOL over all time (each frequency kept), ReLU,
    BN, FC, ReLU, FC to the face feature. Any T >= 16 works. `batch_norm = false` leaves out every
    BN (Fig. 8's comparison)."""

    kernel = 4

    def __init__(self, cfg: VoiceNetConfig, feature_dim: int, frequencies: int = 257):
        super().__init__()
        self.blocks = nn.ModuleList()
        cin, freq = 2, frequencies
        for i, width in enumerate(cfg.widths, 1):
            stride = 2 if i in STRIDE2 else 1
            layers: list[nn.Module] = [SameConv2d(cin, width, self.kernel, stride)]
            if i < len(cfg.widths):  # conv9: no activation, no normalisation
                layers += [nn.ReLU(inplace=True), *([nn.BatchNorm2d(width)] if cfg.batch_norm else [])]
            if i in POOL_AFTER:
                layers.append(nn.MaxPool2d((2, 1), (2, 1)))
            self.blocks.append(nn.Sequential(*layers))
            freq = math.ceil(freq / stride)
            cin = width
        self.head = nn.Sequential(nn.ReLU(), *([nn.BatchNorm1d(cin * freq)] if cfg.batch_norm else []),
                                  nn.Linear(cin * freq, feature_dim), nn.ReLU(inplace=True),
                                  nn.Linear(feature_dim, feature_dim))
        self.min_frames = 2 ** len(POOL_AFTER)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """[B, 2, T, F] -> pseudo face feature v_s [B, feature_dim]."""
        if spec.dim() != 4 or spec.shape[1] != 2:
            raise UsageError(f"expected a [batch, 2, time, frequency] spectrogram, got {tuple(spec.shape)}")
        if spec.shape[2] < self.min_frames:
            raise UsageError(f"spectrogram has {spec.shape[2]} frames; Table 1 needs at least {self.min_frames}")
        x = spec
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=2).flatten(1))  # AVGPOOL inf x 1: all time, each frequency kept
