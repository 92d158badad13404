"""Speech2Face configuration: TOML files in configs/ (`small`, `paper`) or any path, plus
`section.key=value` overrides. Defaults are the paper's (Oh et al. 2019 sec. 3, Table 1)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from facevoice.service.errors import UsageError
from facevoice.service.media import FaceImage, Speech2FaceAudio
from facevoice.service.media.faces import parse_detector
from facevoice.service.media.image import INPUT_CONVENTIONS
from facevoice.training.configfile import build_config, read_config

CONFIG_DIR = Path(__file__).parent / "configs"
TABLE1_WIDTHS = (64, 64, 128, 128, 128, 256, 512, 512, 512)


@dataclass(frozen=True)
class FaceNetConfig:
    """The face feature network (VGG-Face stand-in): VGG16 conv, fc6, fc7 (the feature), fc8."""

    size: int = 224
    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    convs: tuple[int, ...] = (2, 2, 3, 3, 3)
    batch_norm: bool = False
    augment: bool = True
    fc: int = 4096  # fc6 and fc7 width; fc7 (after ReLU) is the face feature v_f
    dropout: float = 0.5
    attributes: tuple[str, ...] = ()  # extra softmax heads while training (our deviation, see docs)
    attribute_weight: float = 1.0  # their cross-entropies' weight against the identity softmax
    steps: int = 50_000
    batch: int = 64
    lr: float = 1e-3
    # the input convention (service.media.image.INPUT_CONVENTIONS): "imagenet" for the networks
    # trained here, "vggface" for published VGG-Face weights (`train face-features --vggface`)
    input: str = "imagenet"
    # face detection for photos without a box, as the association model's face.detector / align
    detector: str = "hog+synth"
    align: bool = False
    # the crop: the detected box enlarged box_scale times about its centre (a square), resized to
    # `size`. 1.5 is Kim et al.'s margin (sec. 4.2), what runs before this key was added used;
    # Oh et al. sec. 3 (implementation details) crop dlib's CNN face region itself: `paper.toml`
    # sets detector = "cnn", box_scale = 1.0, align = false (docs/speech2face.md, Deviations)
    box_scale: float = 1.5

    def frontend(self) -> FaceImage:
        return FaceImage(size=self.size, detector=self.detector, align=self.align, box_scale=self.box_scale,
                         **INPUT_CONVENTIONS[self.input])


@dataclass(frozen=True)
class DecoderConfig:
    """Face decoder after Cole et al. 2017: feature -> canonical face."""

    first_layer: int = 1000  # f_dec: R^4096 -> R^1000, the layer eq. (1) compares
    size: int = 224  # output pixels
    base: int = 7  # the first feature map is base x base
    widths: tuple[int, ...] = (512, 256, 128, 64, 32, 32)  # channels at each resolution, doubling from base
    feature_weight: float = 1.0  # feature consistency: f_face(decoded) vs v_f
    steps: int = 100_000
    batch: int = 32
    lr: float = 1e-3
    # "constant", or "cosine" (lr falls to 0 over `steps`): our choice, Cole et al. give no schedule
    lr_schedule: str = "constant"


@dataclass(frozen=True)
class VoiceNetConfig:
    """Table 1: CONV-ReLU-BN blocks (4x4) with a max-pool 2x1 closing conv3-6, stride 2 at
    conv8-9, a bare conv9, average pooling over time, ReLU, BN, FC, ReLU, FC to the face feature."""

    sample_rate: int = 16_000
    seconds: float = 6.0  # training input (sec. 3: up to 6 s from the beginning, repeated if shorter)
    widths: tuple[int, ...] = TABLE1_WIDTHS
    # false removes every batch norm of the encoder: Fig. 8's "without BN" curves
    batch_norm: bool = True
    # speech and level before the front end (not in the paper), as the association model's voice.*
    vad: bool = True
    level: bool = True
    level_dbfs: float = -20.0
    min_speech_seconds: float = 1.0

    def frontend(self, seconds: float | None = None) -> Speech2FaceAudio:
        return Speech2FaceAudio(sample_rate=self.sample_rate, seconds=seconds or self.seconds, vad=self.vad,
                                min_speech_seconds=self.min_speech_seconds,
                                level_dbfs=self.level_dbfs if self.level else None)


@dataclass(frozen=True)
class S2FTrainConfig:
    """Sec. 3: Adam(beta1 0.5, eps 1e-4), lr 1e-3 x0.95 every 10k iterations, batch 8; eq. (1)."""

    batch: int = 8
    iterations: int = 637_500  # 3 epochs of 1.7M pairs at batch 8
    lr: float = 1e-3
    beta1: float = 0.5
    eps: float = 1e-4
    lr_decay: float = 0.95
    lr_decay_every: int = 10_000
    lambda1: float = 0.025
    lambda2: float = 200.0
    temperature: float = 2.0
    eval_every: int = 5000
    checkpoint_every: int = 5000
    # Our deviation against over-fitting, off in the paper config: train on random voice.seconds
    # windows of the first crop_from seconds (0: always the first voice.seconds, as sec. 3), with
    # a random gain of +-gain_db (a gain g scales the power-law spectrogram by g^power).
    crop_from: float = 0.0
    gain_db: float = 0.0
    # Which validation score picks best.pt (the paper names none): "loss", the lowest eq. (1);
    # "match", the highest share of other validation people whose mean face feature is farther
    # (cosine) from a clip's v_s than its own person's; or "last", the model at the end of the
    # schedule, as a paper that trains for a fixed number of epochs uses.
    select: str = "loss"
    # The regression target v_f: "photo", the feature of one photo of the speaker, drawn per pair
    # (sec. 3 pairs a clip with a frame of its own video); or "mean", the mean feature over the
    # speaker's training photos, which a voice can predict no worse (pose, light and expression
    # are not in the voice). Our deviation; the paper config keeps "photo".
    target: str = "photo"
    # sec. 3 pairs a clip with a frame of its own video: where the manifest records videos
    # (corpus voxceleb / voxceleb2 / avspeech), a face of the clip's video is drawn when the
    # speaker has one. False draws any photo of the speaker.
    pair_within_video: bool = True
    # Softmax heads on v_s for these attributes of the training speakers (gender, age_group,
    # appearance_group, first_language), added to eq. (1) with `attribute_weight`: our deviation,
    # as the face network's `face.attributes`; () is the paper setting. The heads are dropped
    # after training: eval and export see only the encoder.
    attributes: tuple[str, ...] = ()
    attribute_weight: float = 1.0
    # `loss.ranking` added to eq. (1) with this weight: a softmax over the training speakers by
    # cosine to their mean v_f, the ranking Table 3 measures. Our deviation; 0 is the paper setting.
    ranking_weight: float = 0.0
    ranking_temperature: float = 0.05


@dataclass(frozen=True)
class S2FConfig:
    name: str = "paper"
    face: FaceNetConfig = field(default_factory=FaceNetConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    voice: VoiceNetConfig = field(default_factory=VoiceNetConfig)
    train: S2FTrainConfig = field(default_factory=S2FTrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)


_SECTIONS = {"face": FaceNetConfig, "decoder": DecoderConfig, "voice": VoiceNetConfig, "train": S2FTrainConfig}


def from_dict(d: dict) -> S2FConfig:
    cfg = build_config(S2FConfig, _SECTIONS, d)
    validate(cfg)
    return cfg


def validate(cfg: S2FConfig) -> None:
    if cfg.face.input not in INPUT_CONVENTIONS:
        raise UsageError(f"face.input must be one of {sorted(INPUT_CONVENTIONS)}")
    if cfg.face.detector:
        try:
            parse_detector(cfg.face.detector)
        except ValueError as e:
            raise UsageError(f"face.detector: {e}") from e
    if not cfg.face.box_scale > 0:
        raise UsageError(f"face.box_scale must be positive (1.0: the detector's box itself), got {cfg.face.box_scale}")
    if len(cfg.face.widths) != len(cfg.face.convs):
        raise UsageError("face.widths and face.convs must have one entry per VGG block")
    if cfg.face.size % 2 ** len(cfg.face.widths):
        raise UsageError(f"face.size must be a multiple of {2 ** len(cfg.face.widths)} (one halving per block)")
    if len(cfg.voice.widths) != len(TABLE1_WIDTHS):
        raise UsageError("voice.widths must give Table 1's nine conv layers")
    if cfg.decoder.base * 2 ** (len(cfg.decoder.widths) - 1) != cfg.decoder.size:
        raise UsageError("decoder.size must be decoder.base doubled once per decoder.widths entry after the first")
    if cfg.voice.seconds <= 0 or cfg.train.batch < 1:
        raise UsageError("voice.seconds and train.batch must be positive")
    if cfg.train.select not in SELECT:
        raise UsageError(f"train.select must be one of {sorted(SELECT)}, got {cfg.train.select!r}")
    if cfg.decoder.lr_schedule not in ("constant", "cosine"):
        raise UsageError(f"decoder.lr_schedule must be 'constant' or 'cosine', got {cfg.decoder.lr_schedule!r}")
    if cfg.train.ranking_weight < 0 or cfg.train.ranking_temperature <= 0:
        raise UsageError("train.ranking_weight must be >= 0 and train.ranking_temperature > 0")
    if cfg.train.target not in TARGETS:
        raise UsageError(f"train.target must be one of {list(TARGETS)}, got {cfg.train.target!r}")


# train.select -> (the validation score, +1 when higher is better)
SELECT = {"loss": ("val_loss", -1.0), "match": ("val_match", 1.0), "last": ("step", 1.0)}
TARGETS = ("photo", "mean")


def load_config(name_or_path: str, overrides: list[str] = ()) -> S2FConfig:
    """A named config (`small`, `paper`) or a TOML file, then `section.key=value` overrides."""
    return from_dict(read_config(CONFIG_DIR, name_or_path, overrides, _SECTIONS))
