"""`facevoice eval media-ceiling`: what the media carry of each within-gender link, and the
1:2 accuracy a model that sees only media can hope for.

The corpus oracle (training.corpus.oracle) reads the generator's parameters. A model reads
pixels and samples. This command measures the gap between the two, on people no model saw:

1. Read-outs. For each link the oracle uses inside one gender, a small CNN is trained to regress
   the generator's value from the media alone, on a training corpus's training identities: face
   width, nose width and apparent age from the face crop the association model is fed; pitch,
   pitch residual (pitch after its gender and age trend), variant score, speaking rate and age
   from the voice window it is fed; and the categories (gender, appearance group; gender, accent,
   variant) as classifiers. Each is scored on held-out corpora: Pearson r inside each gender,
   per item, averaged over the genders.
2. The embeddings' r beside them: the same links read by a within-gender ridge from a served
   model's embeddings (fitted on the training corpus's training people, scored on the held-out
   ones), through the service's own decoding and model runner.
3. The media oracle (training.corpus.media_oracle): the oracle's posterior with the read-outs and
   their measured error (calibrated on the training corpus's validation people) in place of the
   parameters, on the same 1:2 trials as the parameter oracle and the served model, under every
   control, pooled over the held-out corpora with identity-bootstrap intervals.

Read-outs are heads on the generator's hidden parameters: a diagnosis, never a training recipe.

    facevoice eval media-ceiling --train-corpus corpora/train-1000 --corpora corpora \\
        --seeds 7101 7102 7103 --model-repo models/demo --out reports/ceiling
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from facevoice.cli import options
from facevoice.service.corpus import read_manifest
from facevoice.service.errors import CorpusError, FormatError
from facevoice.training.association.config import load_config
from facevoice.training.association.data import STORE, SplitData, load_split
from facevoice.training.association.heldout import CONTROLS, heldout_corpus
from facevoice.training.association.protocol import Embeddings, matching_outcomes, outcome_cell
from facevoice.training.association.report import ARROW, _pct
from facevoice.training.corpus import media_oracle as mo
from facevoice.training.corpus.oracle import corpus_people
from facevoice.training.corpus.people import FEMALE_VARIANTS, GENDERS, MALE_VARIANTS

# continuous read-outs per modality: the column of identities.csv (or a derived value), its name
FACE_VALUES = {"face_width": "face width", "face_nose_width": "nose width", "face_age": "apparent age"}
VOICE_VALUES = {"voice_pitch": "pitch", "pitch_residual": "pitch residual", "voice_variant_score": "variant score",
                "voice_speed": "speaking rate", "age": "age"}
FACE_CLASSES = {"gender": GENDERS, "appearance_group": None}  # None: the corpus's groups
VOICE_CLASSES = {"gender": GENDERS, "voice_accent": None, "gender_variant": None}
GENDER_VARIANTS = tuple(f"female+{v}" for v in FEMALE_VARIANTS) + tuple(f"male+{v}" for v in MALE_VARIANTS)
# the links the embeddings are probed for (as protocol.LINKS), beside the read-outs
PROBED = {"face": tuple(FACE_VALUES), "voice": tuple(VOICE_VALUES)}


@dataclass(frozen=True)
class EvalMediaCeilingOptions:
    train_corpus: Path  # synthetic: its train split trains the read-outs, its val split calibrates them
    corpora: Path  # where the held-out corpora are (heldout-SEED-N/, generated when missing)
    out: Path
    seeds: Sequence[int] = (7101, 7102, 7103)
    identities: int = 300  # people per held-out corpus
    model_repo: Sequence[Path] = ()  # served models whose embeddings are probed and matched beside the read-outs
    config: str = "small"  # association config whose inputs the read-outs see
    face_size: int | None = None  # face crop size (default: the config's)
    face_minutes: float = 4.0  # training time of the face read-out
    voice_minutes: float = 6.0  # training time of the voice read-out
    face_steps: int | None = None  # train the face read-out this many steps instead of minutes
    voice_steps: int | None = None  # the same for the voice read-out
    trials: int = 4000  # 1:2 trials per cell and corpus
    workers: int = 2
    threads: int = 2  # torch threads
    seed: int = 0
    no_progress: bool = False


class ReportFiles:
    """A held-out evaluation's OUT/STEM.json (its record) and OUT/STEM.md (the record as text),
    written and read only here; `eval media-ceiling` and `eval frozen` results are ones."""

    STEM: ClassVar[str]
    out: Path
    record: dict
    text: str

    def write(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{self.STEM}.json").write_text(json.dumps(self.record, indent=2, default=float))
        (self.out / f"{self.STEM}.md").write_text(self.text)
        return self.out / f"{self.STEM}.json"

    @classmethod
    def read(cls, out: Path):
        """FormatError naming the file when either is missing or the record is not a JSON object."""
        path = Path(out) / f"{cls.STEM}.json"
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            text = path.with_suffix(".md").read_text()
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise FormatError(f"{path}: not a {cls.STEM} report ({type(e).__name__}: {e})") from e
        return cls(Path(out), record, text)


@dataclass(frozen=True)
class EvalMediaCeilingResult(ReportFiles):
    STEM: ClassVar[str] = "ceiling"
    out: Path
    record: dict  # what OUT/ceiling.json holds: read-outs, links, pooled matching, refused items, seconds
    text: str  # what OUT/ceiling.md holds, report(record)

    def summary(self) -> str:
        r = self.record
        return (f"{self.text}\nmedia ceiling: {len(r['corpora'])} held-out corpora, read-outs trained on "
                f"{r['train_identities']} people, {r['seconds']:.0f} s -> {self.out}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    o = EvalMediaCeilingOptions
    p.add_argument("--train-corpus", type=Path, required=True,
                   help="a synthetic corpus whose train split trains the read-outs and val split calibrates them")
    p.add_argument("--corpora", type=Path, required=True,
                   help="where the held-out corpora are (heldout-SEED-N/, generated when missing)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(o.seeds))
    p.add_argument("--identities", type=int, default=o.identities, help="people per held-out corpus")
    p.add_argument("--model-repo", type=Path, action="append", default=list(o.model_repo),
                   help="served models whose embeddings are probed and matched beside the read-outs (repeatable)")
    p.add_argument("--config", default=o.config, help="association config whose inputs the read-outs see")
    p.add_argument("--face-size", type=int, help="face crop size (default: the config's)")
    p.add_argument("--face-minutes", type=float, default=o.face_minutes, help="training time of the face read-out")
    p.add_argument("--voice-minutes", type=float, default=o.voice_minutes,
                   help="training time of the voice read-out")
    p.add_argument("--face-steps", type=int, help="train the face read-out this many steps instead of minutes "
                                                  "(a fit that does not depend on how busy the machine is)")
    p.add_argument("--voice-steps", type=int, help="the same for the voice read-out")
    p.add_argument("--trials", type=int, default=o.trials, help="1:2 trials per cell and corpus")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int, default=o.workers)
    p.add_argument("--threads", type=int, default=o.threads, help="torch threads")
    p.add_argument("--seed", type=int, default=o.seed)
    p.add_argument("--no-progress", action="store_true")


# ---------------------------------------------------------------- targets


def pitch_residual(row: dict, model) -> float:
    """The pitch after its gender's base and age trend, in units of pitch_sd (= -the size score)."""
    g = GENDERS.index(row["gender"])
    trend = model.pitch_base[g] + model.pitch_age_slope[g] * (float(row["age"]) - 45)
    return (float(row["voice_pitch"]) - trend) / model.pitch_sd


@dataclass
class Targets:
    values: np.ndarray  # [N, len(names)] float
    classes: dict[str, np.ndarray]  # name -> [N] class index
    gender: np.ndarray  # [N] GENDERS index (for the within-gender r)


def targets(split: SplitData, modality: str, people: dict, model, groups: tuple, accents: tuple) -> Targets:
    m = getattr(split, modality)
    rows = [people[split.identities[i]] for i in m.identity]
    names = FACE_VALUES if modality == "face" else VOICE_VALUES
    values = np.array([[pitch_residual(r, model) if n == "pitch_residual" else float(r[n]) for n in names]
                       for r in rows])
    classes = {"gender": np.array([GENDERS.index(r["gender"]) for r in rows])}
    if modality == "face":
        classes["appearance_group"] = np.array([groups.index(r["appearance_group"]) for r in rows])
    else:
        classes["voice_accent"] = np.array([accents.index(r["voice_accent"]) for r in rows])
        classes["gender_variant"] = np.array([GENDER_VARIANTS.index(f"{r['gender']}+{r['voice_variant']}")
                                              for r in rows])
    return Targets(values, classes, classes["gender"])


# ---------------------------------------------------------------- networks


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class Spectrogram(nn.Module):
    """Waveform -> log-magnitude STFT up to 4 kHz (pitch harmonics resolved at 21.5 Hz)."""

    def __init__(self, sample_rate: int, n_fft: int = 1024, hop: int = 256, top_hz: float = 4000.0):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.bins = int(top_hz / sample_rate * n_fft)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        s = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True).abs()
        return torch.log1p(100 * s[:, : self.bins])  # [N, bins, frames]: the bins are the channels


def _block1d(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool1d(2))


class Readout(nn.Module):
    """A small CNN with one regression output per value and one classifier per category: 2-D
    over a face's pixels, 1-D over a voice's spectrogram frames."""

    def __init__(self, in_ch: int, widths: tuple[int, ...], values: int, classes: dict[str, int],
                 front: nn.Module | None = None):
        super().__init__()
        self.front = front or nn.Identity()
        block = _block1d if isinstance(front, Spectrogram) else _block
        layers, c = [], in_ch
        for w in widths:
            layers.append(block(c, w))
            c = w
        self.body = nn.Sequential(*layers)
        self.values = nn.Linear(2 * c, values)
        self.classes = nn.ModuleDict({k: nn.Linear(2 * c, n) for k, n in classes.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = self.body(self.front(x)).flatten(2)
        h = torch.cat([h.mean(-1), h.amax(-1)], 1)
        return self.values(h), {k: head(h) for k, head in self.classes.items()}


def _inputs(data, rows: np.ndarray, modality: str, samples: int | None, flip: bool,
            rng: np.random.Generator) -> torch.Tensor:
    x = np.asarray(data[np.sort(rows)] if modality == "face" else data[np.sort(rows), :samples], np.float32)
    order = np.argsort(np.argsort(rows))
    x = x[order]
    if flip and modality == "face":
        mirror = rng.random(len(x)) < 0.5
        x[mirror] = x[mirror, :, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(x))


def _network(modality: str, values: int, n_classes: dict[str, int], sample_rate: int) -> Readout:
    if modality == "face":
        return Readout(3, (32, 64, 96, 128), values, n_classes)
    front = Spectrogram(sample_rate)
    # over time, every frame's whole spectrum at once (its harmonics are its pitch): fast on a CPU
    return Readout(front.bins, (192, 192, 192, 192), values, n_classes, front)


def train_readout(modality: str, data, t: Targets, n_classes: dict[str, int], minutes: float, seed: int,
                  sample_rate: int, samples: int | None, progress: bool, steps_budget: int | None = None
                  ) -> tuple[Readout, dict]:
    """Fit for `minutes` of wall time (cosine learning rate over the steps that fit), or for
    exactly `steps_budget` steps where given (the same fit however busy the machine is)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = _network(modality, t.values.shape[1], n_classes, sample_rate)
    mean, sd = t.values.mean(0), t.values.std(0) + 1e-9
    y = torch.from_numpy(((t.values - mean) / sd).astype(np.float32))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-3)
    batch, start, steps, losses = 64, time.monotonic(), 0, []
    # the step count is not known ahead (wall time); the cosine is over a first guess, then held
    guess = steps_budget
    bar = tqdm(desc=f"{modality} read-out", unit="step", total=steps_budget, disable=not progress, leave=False)
    net.train()
    while (steps < steps_budget) if steps_budget else (time.monotonic() - start < minutes * 60):
        rows = rng.integers(len(y), size=batch)
        x = _inputs(data, rows, modality, samples, True, rng)
        values, logits = net(x)
        loss = nn.functional.mse_loss(values, y[rows]) + sum(
            nn.functional.cross_entropy(logits[k], torch.from_numpy(t.classes[k][rows])) for k in logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if steps == 20 and not steps_budget:
            guess = int(minutes * 60 / ((time.monotonic() - start) / steps))
        if guess:
            for group in opt.param_groups:
                group["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * min(1.0, steps / guess)))
        losses.append(loss.item())
        bar.update()
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    bar.close()
    net.eval()
    return net, {"steps": steps, "seconds": round(time.monotonic() - start, 1),
                 "final_loss": float(np.mean(losses[-50:])),
                 "scale": {"mean": mean.tolist(), "sd": sd.tolist()}}


@torch.no_grad()
def predict(net: Readout, info: dict, data, modality: str, samples: int | None) -> tuple[np.ndarray, dict]:
    """Continuous read-outs on the targets' scale, and class probabilities per category."""
    vals, probs = [], {k: [] for k in net.classes}
    for s in range(0, len(data), 128):
        rows = np.arange(s, min(len(data), s + 128))
        v, logits = net(_inputs(data, rows, modality, samples, False, np.random.default_rng(0)))
        vals.append(v.numpy())
        for k in logits:
            probs[k].append(torch.softmax(logits[k], 1).numpy())
    scale = info["scale"]
    return (np.concatenate(vals) * np.array(scale["sd"]) + np.array(scale["mean"]),
            {k: np.concatenate(p) for k, p in probs.items()})


# ---------------------------------------------------------------- scoring


def within_gender_r(guess: np.ndarray, truth: np.ndarray, gender: np.ndarray) -> float:
    """Pearson r inside each gender, averaged over the genders (gender alone predicts nothing)."""
    rs = [np.corrcoef(guess[gender == g], truth[gender == g])[0, 1] for g in np.unique(gender)
          if (gender == g).sum() > 2 and guess[gender == g].std() > 0]
    return float(np.mean(rs)) if rs else float("nan")


def calibration(pred: np.ndarray, truth: np.ndarray) -> dict:
    """The classical error model read = true + e: pred = c + d * true + noise, so the unbiased
    read-out is (pred - c) / d with error sd = sd(noise) / d."""
    d, c = np.polyfit(truth, pred, 1)
    noise = pred - (c + d * truth)
    d = max(d, 1e-3)  # a read-out that carries nothing: an error far larger than the spread
    return {"c": float(c), "d": float(d), "error_sd": float(noise.std() / d)}


def unbias(pred: np.ndarray, cal: dict) -> np.ndarray:
    return (pred - cal["c"]) / cal["d"]


def confusion(truth: np.ndarray, probs: np.ndarray, n: int, alpha: float = 0.5) -> np.ndarray:
    """P(read class j | true class k) [n, n] of the argmax, with add-alpha smoothing."""
    c = np.full((n, n), alpha)
    np.add.at(c, (truth, probs.argmax(1)), 1.0)
    return c / c.sum(1, keepdims=True)


def face_readout(pred, probs, cal: dict, conf: dict, prevalence: np.ndarray) -> mo.FaceReadout:
    names = list(FACE_VALUES)
    read_group = probs["appearance_group"].argmax(1)
    # P(group | read group) by Bayes over the confusion and the prevalence
    post = conf["appearance_group"][:, read_group].T * prevalence[None, :]
    post /= post.sum(1, keepdims=True)
    col = {n: unbias(pred[:, names.index(n)], cal[n]) for n in names}
    return mo.FaceReadout(probs["gender"].argmax(1), post, col["face_width"], col["face_nose_width"], col["face_age"],
                          cal["face_width"]["error_sd"], cal["face_nose_width"]["error_sd"],
                          cal["face_age"]["error_sd"], gender_error=float(1 - np.diag(conf["gender"]).mean()))


def voice_readout(pred, probs, cal: dict, conf: dict) -> mo.VoiceReadout:
    names = list(VOICE_VALUES)
    gender = probs["gender"].argmax(1)
    accent = conf["voice_accent"][:, probs["voice_accent"].argmax(1)].T  # [N, accents]: P(read | a)
    read_variant = probs["gender_variant"].argmax(1)
    variant = np.zeros((len(gender), mo.VARIANTS))
    nf = len(FEMALE_VARIANTS)
    for i, g in enumerate(gender):
        rows = slice(0, nf) if g == 0 else slice(nf, len(GENDER_VARIANTS))
        lik = conf["gender_variant"][rows, read_variant[i]]
        variant[i, : len(lik)] = lik
    return mo.VoiceReadout(gender, accent, variant, unbias(pred[:, names.index("voice_pitch")], cal["voice_pitch"]),
                           unbias(pred[:, names.index("voice_speed")], cal["voice_speed"]),
                           cal["voice_pitch"]["error_sd"], cal["voice_speed"]["error_sd"],
                           gender_error=float(1 - np.diag(conf["gender"]).mean()))


def item_exact(model, split: SplitData, people: dict) -> tuple[mo.FaceReadout, mo.VoiceReadout]:
    """The parameter oracle on the same items: each item carries its person's parameters."""
    from facevoice.training.corpus.people import person_from_row

    persons = [person_from_row(people[i]) for i in split.identities]
    face, _ = mo.exact_readouts(model, [persons[i] for i in split.face.identity])
    _, voice = mo.exact_readouts(model, [persons[i] for i in split.voice.identity])
    return face, voice


def oracle_embeddings(model, face: mo.FaceReadout, voice: mo.VoiceReadout) -> dict[str, Embeddings]:
    """Per direction, the scores as a pair-distance matrix the 1:2 protocol takes."""
    return {d: Embeddings(np.zeros((len(face.width), 1)), np.zeros((len(voice.pitch), 1)),
                          cross=-mo.score_matrix(model, face, voice, d)) for d in ARROW}


# ---------------------------------------------------------------- served models


def served_embeddings(model_repo: Path, corpus: Path, split: SplitData, progress: bool
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each item of the split, decoded and embedded by the service's own path (as index build):
    per modality the vectors and whether the service took the item (a refused one is a zero row)."""
    from facevoice.service.embedder import Embedder
    from facevoice.service.media import MediaError
    from facevoice.service.repository import FACE, VOICE, open_repository
    from facevoice.service.runners import EmbeddedRunner

    emb = Embedder(open_repository(model_repo), EmbeddedRunner(model_repo, 2))
    out = {}
    known = {i.item_id: i for i in read_manifest(corpus)}
    for modality, space in (("face", FACE), ("voice", VOICE)):
        items = [known[k] for k in getattr(split, modality).item_ids]
        vecs, ok = [], np.ones(len(items), bool)
        for s in tqdm(range(0, len(items), 32), desc=f"embed {corpus.name} {modality}", disable=not progress,
                      leave=False):
            inputs = []
            for k, i in enumerate(items[s:s + 32]):
                try:
                    inputs.append(emb.decode(space, (corpus / i.path).read_bytes(), i.face_box()))
                except MediaError:
                    ok[s + k] = False
            x = emb.embed(space, np.stack(inputs)) if inputs else np.zeros((0, 1), np.float32)
            full = np.zeros((len(items[s:s + 32]), x.shape[1]), np.float32)
            full[ok[s:s + 32]] = x
            vecs.append(full)
        out[modality] = (np.concatenate(vecs), ok)
    return out


def subset(split: SplitData, keep: dict[str, np.ndarray]) -> SplitData:
    """The split with only the items keep[modality] marks (the people all stay)."""
    from facevoice.training.association.data import Modality, _Rows

    def cut(m, mask):
        rows = np.flatnonzero(mask)
        return Modality(_Rows(m.data, rows), m.identity[rows], [m.item_ids[k] for k in rows],
                        None if m.video is None else m.video[rows])

    return SplitData(split.identities, split.attributes, cut(split.face, keep["face"]),
                     cut(split.voice, keep["voice"]), split.refused)


def ridge_r(train_x: np.ndarray, train_y: np.ndarray, train_g: np.ndarray, x: np.ndarray, y: np.ndarray,
            g: np.ndarray) -> float:
    """A within-gender ridge from embeddings, fitted on training people, r on the others."""
    from sklearn.linear_model import Ridge

    rs = []
    for gender in np.unique(g):
        tr, te = train_g == gender, g == gender
        mean, sd = train_x[tr].mean(0), train_x[tr].std(0) + 1e-9
        guess = Ridge(alpha=10.0).fit((train_x[tr] - mean) / sd, train_y[tr]).predict((x[te] - mean) / sd)
        if guess.std() > 0:
            rs.append(np.corrcoef(guess, y[te])[0, 1])
    return float(np.mean(rs)) if rs else float("nan")


# ---------------------------------------------------------------- the command


def _pool(cells: list[tuple[np.ndarray, np.ndarray]]) -> dict | None:
    if not cells:
        return None
    return outcome_cell(np.concatenate([c[0] for c in cells]),
                        np.concatenate([c[1] + 1_000_000 * k for k, c in enumerate(cells)]))


def pooled(cells: dict) -> dict:
    """{row: {direction: {control: [outcomes per corpus]}}} -> the same with each cell pooled."""
    return {k: {d: {c: _pool(v) for c, v in per.items()} for d, per in by_d.items()} for k, by_d in cells.items()}


def matching_row(label: str, cells: dict) -> str:
    """One direction's report row: each control's accuracy with its identity-bootstrap interval."""
    return f"| {label} | " + " | ".join(
        "–" if c is None else f"{_pct(c['accuracy'])} ({_pct(c['ci95_identity_bootstrap'][0])}–"
        f"{_pct(c['ci95_identity_bootstrap'][1])})" for c in (cells[x] for x in CONTROLS)) + " |"


def eval_media_ceiling(opts: EvalMediaCeilingOptions) -> EvalMediaCeilingResult:
    """`eval media-ceiling`: read-outs trained on TRAIN_CORPUS, scored with the media oracle (and
    each served model) on held-out corpora -> OUT/ceiling.json, ceiling.md (and the read-outs'
    weights, kept for a later run)."""
    torch.set_num_threads(opts.threads)
    progress = not opts.no_progress
    t0 = time.monotonic()
    cfg = load_config(opts.config)
    if opts.face_size:
        cfg = replace(cfg, face=replace(cfg.face, size=opts.face_size))
    samples = cfg.voice.frontend().samples
    generator = corpus_people(opts.train_corpus)
    if generator is None:
        raise CorpusError(f"{opts.train_corpus} is not a synthetic corpus (no population model)")
    model = generator[0]
    groups = tuple(g.name for g in model.groups)
    accents = mo.all_accents(model)
    prevalence = np.array([g.prevalence for g in model.groups])
    prevalence = prevalence / prevalence.sum()
    from facevoice.training.association.evaluate import people_table

    def load(corpus: Path, split: str) -> tuple[SplitData, dict]:
        data = load_split(corpus, split, cfg, corpus / "cache" / "ceiling", opts.workers, progress, store=STORE,
                          skip_refused=True)
        for modality, ids in data.refused.items():
            result["refused"].setdefault(modality, []).extend(f"{corpus.name}/{i}" for i in ids)
        return data, people_table(corpus)

    result: dict = {"refused": {}}
    train, people = load(opts.train_corpus, "train")
    val, val_people = load(opts.train_corpus, "val")
    opts.corpora.mkdir(parents=True, exist_ok=True)
    held = [heldout_corpus(opts.corpora, s, opts.identities, progress) for s in opts.seeds]
    n_classes = {"face": {"gender": 2, "appearance_group": len(groups)},
                 "voice": {"gender": 2, "voice_accent": len(accents), "gender_variant": len(GENDER_VARIANTS)}}
    result |= {"train_corpus": str(opts.train_corpus), "train_identities": len(train.identities),
                    "face_size": cfg.face.size, "voice_seconds": cfg.voice.seconds,
                    "corpora": [c.name for c in held], "readouts": {}, "links": {}, "matching": {}}
    nets, cal, conf = {}, {}, {}
    for modality, minutes in (("face", opts.face_minutes), ("voice", opts.voice_minutes)):
        t = targets(train, modality, people, model, groups, accents)
        saved = opts.out / f"{modality}_readout.pt"
        if saved.exists():  # a run stopped later: its read-outs are kept (delete the file to train again)
            state = torch.load(saved, weights_only=False)
            net = _network(modality, t.values.shape[1], n_classes[modality], cfg.voice.sample_rate)
            net.load_state_dict(state["weights"])
            nets[modality] = (net.eval(), state["info"])
        else:
            nets[modality] = train_readout(modality, getattr(train, modality).data, t, n_classes[modality], minutes,
                                           opts.seed, cfg.voice.sample_rate, samples, progress,
                                           getattr(opts, f"{modality}_steps"))
            opts.out.mkdir(parents=True, exist_ok=True)
            torch.save({"weights": nets[modality][0].state_dict(), "info": nets[modality][1]}, saved)
        tv = targets(val, modality, val_people, model, groups, accents)
        pred, probs = predict(*nets[modality], getattr(val, modality).data, modality, samples)
        names = list(FACE_VALUES if modality == "face" else VOICE_VALUES)
        cal[modality] = {n: calibration(pred[:, k], tv.values[:, k]) for k, n in enumerate(names)}
        conf[modality] = {k: confusion(tv.classes[k], probs[k], n) for k, n in n_classes[modality].items()}
        result["readouts"][modality] = {"training": nets[modality][1], "calibration": cal[modality]}
    served, train_t = {}, {}
    for r in opts.model_repo:
        got = served_embeddings(r, opts.train_corpus, train, progress)
        mine = subset(train, {m: ok for m, (_, ok) in got.items()})
        served[str(r)] = {m: v[ok] for m, (v, ok) in got.items()}
        train_t[str(r)] = {m: targets(mine, m, people, model, groups, accents) for m in ("face", "voice")}
    link_r: dict = {}
    cells: dict = {k: {d: {c: [] for c in CONTROLS} for d in ARROW}
                   for k in ["parameter oracle", "media oracle", *served]}
    for corpus in tqdm(held, desc="held-out corpora", disable=not progress):
        split, cpeople = load(corpus, "test")
        # the items every served model takes, so all rows score the same trials
        embedded = {str(r): served_embeddings(r, corpus, split, progress) for r in opts.model_repo}
        keep = {m: np.logical_and.reduce([np.ones(len(getattr(split, m).identity), bool)]
                                         + [e[m][1] for e in embedded.values()]) for m in ("face", "voice")}
        for m in ("face", "voice"):
            result["refused"].setdefault(f"{m} (by a served model)", []).extend(
                f"{corpus.name}/{getattr(split, m).item_ids[k]}" for k in np.flatnonzero(~keep[m]))
        split = subset(split, keep)
        hmodel = corpus_people(corpus)[0]
        reads, tgt = {}, {}
        for modality in ("face", "voice"):
            tgt[modality] = targets(split, modality, cpeople, hmodel, groups, accents)
            reads[modality] = predict(*nets[modality], getattr(split, modality).data, modality, samples)
            names = list(FACE_VALUES if modality == "face" else VOICE_VALUES)
            for k, n in enumerate(names):
                link_r.setdefault(modality, {}).setdefault(n, {}).setdefault("read-out", []).append(
                    within_gender_r(reads[modality][0][:, k], tgt[modality].values[:, k], tgt[modality].gender))
            for k in n_classes[modality]:
                acc = float((reads[modality][1][k].argmax(1) == tgt[modality].classes[k]).mean())
                link_r.setdefault(modality, {}).setdefault(k, {}).setdefault("accuracy", []).append(acc)
        for repo, train_emb in served.items():
            emb = {m: v[keep[m]] for m, (v, _) in embedded[repo].items()}
            for modality in ("face", "voice"):
                names = list(FACE_VALUES if modality == "face" else VOICE_VALUES)
                for k, n in enumerate(names):
                    link_r[modality][n].setdefault(repo, []).append(ridge_r(
                        train_emb[modality], train_t[repo][modality].values[:, k], train_t[repo][modality].gender,
                        emb[modality], tgt[modality].values[:, k], tgt[modality].gender))
            served_emb = Embeddings(emb["face"], emb["voice"])
            for d in ARROW:
                for c in CONTROLS:
                    found = matching_outcomes(served_emb, split, d, c, opts.trials, seed=0)
                    if found is not None:
                        cells[repo][d][c].append(found)
        fr = face_readout(*reads["face"], cal["face"], conf["face"], prevalence)
        vr = voice_readout(*reads["voice"], cal["voice"], conf["voice"])
        for name, (f, v) in (("media oracle", (fr, vr)), ("parameter oracle", item_exact(hmodel, split, cpeople))):
            for d, e in oracle_embeddings(hmodel, f, v).items():
                for c in CONTROLS:
                    found = matching_outcomes(e, split, d, c, opts.trials, seed=0)
                    if found is not None:
                        cells[name][d][c].append(found)
    result["links"] = {m: {n: {k: float(np.mean(v)) for k, v in per.items()} for n, per in cells_.items()}
                       for m, cells_ in link_r.items()}
    result["matching"] = pooled(cells)
    result["seconds"] = round(time.monotonic() - t0, 1)
    done = EvalMediaCeilingResult(opts.out, result, report(result))
    done.write()
    return done


def run(args: argparse.Namespace) -> int:
    print(eval_media_ceiling(options(EvalMediaCeilingOptions, args)).summary())
    return 0


def report(result: dict) -> str:
    repos = [k for k in result["matching"] if k not in ("parameter oracle", "media oracle")]
    lines = [f"Read-outs trained on {result['train_identities']} people of `{result['train_corpus']}`, faces at "
             f"{result['face_size']} px, voices' first {result['voice_seconds']:g} s; scored on "
             f"{', '.join(result['corpora'])}.", "",
             "| side | link | read-out r | " + " | ".join(f"`{Path(r).name}` embeddings r" for r in repos) + " |",
             "|---|---|---|" + "---|" * len(repos)]
    for m, names in (("face", FACE_VALUES), ("voice", VOICE_VALUES)):
        for n, label in names.items():
            cell = result["links"][m][n]
            lines.append(f"| {m} | {label} | {cell['read-out']:.2f} | "
                         + " | ".join(f"{cell.get(r, float('nan')):.2f}" for r in repos) + " |")
        for n in (FACE_CLASSES if m == "face" else VOICE_CLASSES):
            lines.append(f"| {m} | {n.replace('_', ' ')} (accuracy) | {100 * result['links'][m][n]['accuracy']:.1f}% | "
                         + " | ".join("" for _ in repos) + " |")
    lines += ["", "| 1:2 on held-out people | direction | " + " | ".join(CONTROLS) + " |",
              "|---|---|" + "---|" * len(CONTROLS)]
    for k, by_d in result["matching"].items():
        label = f"`{Path(k).name}`" if k in repos else k
        lines += [matching_row(f"{label} | {ARROW[d]}", by_d[d]) for d in ARROW]
    lines.append("| chance | both | " + " | ".join("50.0" for _ in CONTROLS) + " |")
    return "\n".join(lines) + "\n"
