"""Association model configuration: TOML files in configs/ (`small`, `paper`) or any path."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from facevoice.service.errors import UsageError
from facevoice.service.media import AssociationAudio, FaceImage
from facevoice.service.media.faces import parse_detector
from facevoice.training.configfile import build_config, read_config

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class FaceConfig:
    size: int = 224
    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    convs: tuple[int, ...] = (2, 2, 3, 3, 3)
    batch_norm: bool = False
    augment: bool = False
    # the augmentation's window size, as a fraction of the image: supp. A.2.2's -40%..+20% crop.
    # (1, 1) keeps every face at its photo's size, so a face's width stays visible (our option)
    augment_scale: tuple[float, float] = (0.8, 1.4)
    # how far the window's centre may move, as a fraction of the crop's half-side: A.2.2 has no
    # shift (0); 0.1 (±5% of the side) is what `small` trains with (our option)
    augment_shift: float = 0.0
    # A.2.2's wider windows ("negative cropping, more background") read the photo around the
    # crop, cached with a margin (data.py); false: they repeat the crop's border pixels, as
    # before, and no margin is cached (it holds (augment_scale's high + augment_shift)^2 times
    # the crop's pixels)
    augment_background: bool = True
    # what is average-pooled globally: "conv5_3" as sec. 4.1 says (14x14 at 224 px), or "pool5",
    # after VGG16's fifth max-pool (7x7; what this project did before, kept a switch away)
    pool: str = "conv5_3"
    # face detection for photos without a box (service/media/faces.py): "hog+synth" finds real
    # faces (dlib's frontal HOG) and the corpus's (our HOG detector) and crops the face found;
    # "hog" / "cnn" alone; "" is the older front end (the centre square, after a face is found).
    # align: level the eyes from dlib's 5 landmarks (made for real faces, not the cartoons)
    detector: str = "hog+synth"
    align: bool = False

    def frontend(self) -> FaceImage:
        return FaceImage(size=self.size, detector=self.detector, align=self.align)


@dataclass(frozen=True)
class VoiceConfig:
    sample_rate: int = 22_050
    seconds: float = 10.0
    widths: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    crop: str = "first"
    input_scale: float = 256.0
    augment: bool = False
    # Not in the paper (docs/media.md): the seconds come from the speech found (vad), whose
    # level is set to level_dbfs RMS (level); a clip needs min_speech_seconds of speech. The
    # model records them and the service applies them. vad = level = false is the paper's input.
    vad: bool = True
    level: bool = True
    level_dbfs: float = -20.0
    min_speech_seconds: float = 1.0

    def frontend(self) -> AssociationAudio:
        """What the service feeds the voice encoder; evaluation uses it too."""
        return self._frontend(self.seconds)

    def cache_frontend(self) -> AssociationAudio:
        """What is decoded once for training: 10 s (sec. 4.3), longer if the window is longer."""
        return self._frontend(max(10.0, self.seconds))

    def _frontend(self, seconds: float) -> AssociationAudio:
        return AssociationAudio(self.sample_rate, seconds, vad=self.vad, min_speech_seconds=self.min_speech_seconds,
                                level_dbfs=self.level_dbfs if self.level else None)


@dataclass(frozen=True)
class EmbeddingConfig:
    hidden: int = 128
    dim: int = 128
    # Table A.2: up to 512-d the last conv layer is pooled globally; for larger representations
    # it is average-pooled by 2 along each non-singleton dimension and flattened ("2x")
    pool: str = "global"


@dataclass(frozen=True)
class TrainConfig:
    batch: int = 8
    iterations: int = 240_000
    lr_head: float = 1e-3
    lr_backbone: float = 1e-5
    lr_backbone_scratch: float = 1e-3
    lr_decay: float = 0.1
    lr_decay_every: int = 80_000
    hard_after: int = 120_000
    hard_pool: int = 2
    # impostors: "any" identity (sec. 4.3), "same-gender" throughout, or "curriculum": any until
    # hard_after, then of the anchor's gender (our option; once gender is learnt, a cross-gender
    # negative teaches nothing)
    negatives: str = "any"
    # "auto": bf16 autocast on a GPU, fp32 on a CPU (measured: docs/benchmarks.md); "bf16": bf16
    # autocast on either (a CPU with AVX512-BF16 runs it natively); "fp32": never autocast
    precision: str = "auto"
    # "triplet" (eq. (1), the paper's model), Table 7's baselines (sec. 4.6): "contrastive" (the
    # Siamese net) and "classifier" (the classification network of supp. A.2.2), or "infonce":
    # our option, a softmax over every candidate of the other modality in a batch of distinct
    # people (CLIP's objective on -squared L2 / temperature, so serving's L2 search is unchanged)
    loss: str = "triplet"
    margin: float = 1.0  # the contrastive loss's margin
    temperature: float = 1.0  # infonce: logits are -||v - f||^2 / temperature
    # train on the first N training identities only (0: all): the learning curve's switch
    identities: int = 0
    eval_every: int = 5000
    val_trials: int = 2000
    checkpoint_every: int = 5000


@dataclass(frozen=True)
class AssociationConfig:
    name: str = "paper"
    face: FaceConfig = field(default_factory=FaceConfig)
    voice: VoiceConfig = field(default_factory=VoiceConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)


_SECTIONS = {"face": FaceConfig, "voice": VoiceConfig, "embedding": EmbeddingConfig, "train": TrainConfig}


def from_dict(d: dict) -> AssociationConfig:
    cfg = build_config(AssociationConfig, _SECTIONS, d)
    validate(cfg)
    return cfg


def validate(cfg: AssociationConfig) -> None:
    if len(cfg.face.widths) != len(cfg.face.convs):
        raise UsageError("face.widths and face.convs must have one entry per VGG block")
    if len(cfg.voice.widths) != 6:
        raise UsageError("voice.widths must give SoundNet conv1..conv6")
    if cfg.train.loss not in ("triplet", "contrastive", "classifier", "infonce"):
        raise UsageError("train.loss must be 'triplet' (eq. (1)), 'contrastive' or 'classifier' (Table 7), "
                         "or 'infonce'")
    if cfg.train.temperature <= 0:
        raise UsageError("train.temperature must be positive")
    if cfg.train.identities < 0:
        raise UsageError("train.identities must be 0 (all) or a positive count")
    if cfg.embedding.pool not in ("global", "2x"):
        raise UsageError("embedding.pool must be 'global' or '2x' (Table A.2)")
    if cfg.face.detector:
        parse_detector(cfg.face.detector)
    if len(cfg.face.augment_scale) != 2 or not 0 < cfg.face.augment_scale[0] <= cfg.face.augment_scale[1]:
        raise UsageError("face.augment_scale must be [low, high] with 0 < low <= high")
    if not 0 <= cfg.face.augment_shift < 1:
        raise UsageError("face.augment_shift must be in [0, 1): a fraction of the crop's half-side")
    if cfg.face.pool not in ("conv5_3", "pool5"):
        raise UsageError("face.pool must be 'conv5_3' (sec. 4.1) or 'pool5'")
    if cfg.voice.crop not in ("first", "random"):
        raise UsageError("voice.crop must be 'first' or 'random'")
    if cfg.train.negatives not in ("any", "same-gender", "curriculum"):
        raise UsageError("train.negatives must be 'any', 'same-gender' or 'curriculum'")
    if cfg.train.precision not in ("auto", "bf16", "fp32"):
        raise UsageError("train.precision must be 'auto', 'bf16' or 'fp32'")
    if cfg.train.hard_pool < 1 or cfg.train.batch < 1:
        raise UsageError("train.batch and train.hard_pool must be positive")


def load_config(name_or_path: str, overrides: list[str] = ()) -> AssociationConfig:
    """A named config (`small`, `paper`) or a TOML file, then `section.key=value` overrides."""
    return from_dict(read_config(CONFIG_DIR, name_or_path, overrides, _SECTIONS))
