"""Kim et al. 2018 sec. 4.1: a VGG16 face subnetwork and a SoundNet voice subnetwork, each
globally average-pooled (512-d) and followed by FC 128 + ReLU, FC 128."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from facevoice.service.errors import FormatError, UsageError
from facevoice.training.association.config import AssociationConfig, EmbeddingConfig, FaceConfig, VoiceConfig

# SoundNet 8-layer (Aytar et al. 2016), conv1..conv6: (kernel, stride, padding, max-pool after)
SOUNDNET_LAYERS = ((64, 2, 32, 8), (32, 2, 16, 8), (16, 2, 8, 0), (8, 2, 4, 0), (4, 2, 2, 4), (4, 2, 2, 0))


def vgg_features(cfg: FaceConfig, pool5: bool = True) -> nn.Sequential:
    """VGG16 conv1_1..conv5_3 with its max-pools, laid out as torchvision's `vgg16.features` (or
    `vgg16_bn.features` with batch norm) so their state dicts load by index. Without `pool5` the
    last max-pool is left off and the output is conv5_3's (after its ReLU): what Kim et al.
    sec. 4.1 pools."""
    layers: list[nn.Module] = []
    cin = 3
    for width, n in zip(cfg.widths, cfg.convs, strict=True):
        for _ in range(n):
            layers.append(nn.Conv2d(cin, width, 3, padding=1))
            if cfg.batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            cin = width
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*(layers if pool5 else layers[:-1]))


class SoundNet(nn.Module):
    """SoundNet conv1..conv6 on the raw waveform (1-D convolutions, batch norm, ReLU)."""

    def __init__(self, cfg: VoiceConfig):
        super().__init__()
        self.input_scale = cfg.input_scale
        cin = 1
        for i, (width, (k, s, p, pool)) in enumerate(zip(cfg.widths, SOUNDNET_LAYERS, strict=True), 1):
            self.add_module(f"conv{i}", nn.Conv1d(cin, width, k, s, p))
            self.add_module(f"bn{i}", nn.BatchNorm1d(width))
            if pool:
                self.add_module(f"pool{i}", nn.MaxPool1d(pool, pool))
            cin = width

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, samples] -> [B, C, T]."""
        x = wave.unsqueeze(1) * self.input_scale  # SoundNet was trained on [-256, 256] waveforms
        for i in range(1, 7):
            x = torch.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            pool = getattr(self, f"pool{i}", None)
            if pool is not None:
                x = pool(x)
        return x


def projection(cin: int, cfg: EmbeddingConfig) -> nn.Sequential:
    """FC hidden + ReLU, FC dim without ReLU (sec. 4.1)."""
    return nn.Sequential(nn.Linear(cin, cfg.hidden), nn.ReLU(inplace=True), nn.Linear(cfg.hidden, cfg.dim))


def pool(x: torch.Tensor, how: str) -> torch.Tensor:
    """The last conv layer's [B, C, ...] output -> the FC input: averaged over every spatial
    dimension ("global", sec. 4.1), or average-pooled by 2 along each and flattened ("2x", Table A.2)."""
    if how == "global":
        return x.mean(dim=tuple(range(2, x.dim())))
    return (F.avg_pool2d(x, 2) if x.dim() == 4 else F.avg_pool1d(x, 2)).flatten(1)


def pooled_width(features: nn.Module, example: torch.Tensor, how: str) -> int:
    with torch.no_grad():
        return pool(features(example), how).shape[1]


class FaceEncoder(nn.Module):
    """f_F: image [B, 3, S, S] -> representation [B, dim]."""

    def __init__(self, cfg: FaceConfig, emb: EmbeddingConfig):
        super().__init__()
        self.features = vgg_features(cfg, pool5=cfg.pool == "pool5")
        self.how = emb.pool
        width = cfg.widths[-1] if emb.pool == "global" else \
            pooled_width(self.features, torch.zeros(1, 3, cfg.size, cfg.size), emb.pool)
        self.head = projection(width, emb)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Sec. 4.1: conv5_3 average-pooled globally (512-d), FC 128 + ReLU, FC 128."""
        return self.head(pool(self.features(image), self.how))


class VoiceEncoder(nn.Module):
    """f_V: waveform [B, samples] -> representation [B, dim]; with global pooling any length of at
    least ~1 s, with Table A.2's "2x" pooling the configured length."""

    def __init__(self, cfg: VoiceConfig, emb: EmbeddingConfig):
        super().__init__()
        self.features = SoundNet(cfg)
        self.how = emb.pool
        width = cfg.widths[-1] if emb.pool == "global" else \
            pooled_width(self.features, torch.zeros(1, cfg.frontend().samples), emb.pool)
        self.head = projection(width, emb)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.head(pool(self.features(wave), self.how))


class PairClassifier(nn.Module):
    """Table 7's classification network (Kim supp. A.2.2, after the L3 network): the 512-d
    features pooled from conv5_3 and conv6, concatenated (1024-d), two FC 128 + ReLU, FC 2;
    softmax. The positive class's probability scores how well a face and a voice match."""

    def __init__(self, face_width: int, voice_width: int, hidden: int = 128):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(face_width + voice_width, hidden), nn.ReLU(inplace=True),
                                    nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2))

    def forward(self, face: torch.Tensor, voice: torch.Tensor) -> torch.Tensor:
        """Pooled features [B, C_f], [B, C_v] -> logits [B, 2] (column 1: same person)."""
        return self.layers(torch.cat([face, voice], dim=-1))


class AssociationModel(nn.Module):
    """The two heterogeneous subnetworks of the triplet network. The two towers of the candidate
    modality share weights, so each modality has one encoder. With train.loss = "classifier" a
    PairClassifier on the pooled features replaces the embedding heads' use (Table 7)."""

    def __init__(self, cfg: AssociationConfig):
        super().__init__()
        self.face_encoder = FaceEncoder(cfg.face, cfg.embedding)
        self.voice_encoder = VoiceEncoder(cfg.voice, cfg.embedding)
        self.classifier = PairClassifier(cfg.face.widths[-1], cfg.voice.widths[-1], cfg.embedding.hidden) \
            if cfg.train.loss == "classifier" else None

    def pooled(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """The globally pooled last conv layer (512-d in the paper): the classifier's input."""
        encoder = self.face_encoder if modality == "face" else self.voice_encoder
        return pool(encoder.features(x), "global")

    def forward(self, faces: torch.Tensor, voices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.face_encoder(faces), self.voice_encoder(voices)

    def backbone_parameters(self, modality: str) -> list[nn.Parameter]:
        encoder = self.face_encoder if modality == "face" else self.voice_encoder
        return list(encoder.features.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        extra = list(self.classifier.parameters()) if self.classifier is not None else []
        return [*self.face_encoder.head.parameters(), *self.voice_encoder.head.parameters(), *extra]


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:  # truncated, not torch, code
        raise FormatError(f"{path}: not a readable weight file ({type(e).__name__}: {str(e)[:200]})") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise FormatError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_face_backbone(encoder: FaceEncoder, path: Path) -> int:
    """VGG16 / VGG-Face conv weights (torchvision `features.N.*` keys, or bare `N.*`); returns the
    number of tensors loaded. The classifier layers in the file are ignored."""
    state = _state_dict_from_file(path)
    wanted = encoder.features.state_dict()
    picked = {}
    for key, value in state.items():
        name = key.removeprefix("module.").removeprefix("features.")
        if name in wanted:
            picked[name] = value
    missing = sorted(set(wanted) - set(picked))
    if missing:
        raise UsageError(f"{path}: no weights for face backbone {missing[:4]}... "
                         "(batch_norm and widths must match the file)")
    encoder.features.load_state_dict(picked)
    return len(picked)


def load_voice_backbone(encoder: VoiceEncoder, path: Path) -> int:
    """SoundNet conv1..conv6 weights; 2-D kernels [C, C', k, 1] of the common ports are squeezed."""
    state = _state_dict_from_file(path)
    wanted = encoder.features.state_dict()
    picked = {}
    for key, value in state.items():
        name = key.removeprefix("module.").removeprefix("features.")
        if name in wanted:
            if value.dim() == 4 and value.shape[-1] == 1:
                value = value[..., 0]
            picked[name] = value
    missing = sorted(k for k in set(wanted) - set(picked) if not k.endswith("num_batches_tracked"))
    if missing:
        raise UsageError(f"{path}: no weights for voice backbone {missing[:4]}...")
    encoder.features.load_state_dict(picked, strict=False)
    return len(picked)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
