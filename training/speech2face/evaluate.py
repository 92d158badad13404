"""`facevoice eval s2f`: the evaluation of Oh et al. 2019 sec. 4 on test identities. Writes
report.md, metrics.json and PNG figures:

- feature similarity (Table 2): angle, L2 and L1 between v_s and v_f, per input duration;
- S2F -> face retrieval (Table 3): recall@1/2/5/10 over galleries of test faces, L1 / L2 / cosine,
  with random and (synthetic corpora) the generator's oracle;
- attribute agreement (Fig. 4(a)): confusion matrices between the attributes of the original photo
  and of the S2F reconstruction, from two stand-ins for Face++ trained on the training faces: a
  logistic read-out of the face network's features, and a small CNN on pixels, independent of the
  model (pixel_attributes.py); the dataset's statistics (Fig. 4(b));
- geometry (Fig. 5): Pearson r between geometry read off F2F and S2F reconstructions (synthetic
  corpora: a ridge regressor for the generator's face parameters), with a random-pair baseline;
- pictures: true | F2F | S2F for 16 people (Fig. 3), the same clips at each duration (Fig. 6),
  retrieval examples (Fig. 7), several clips of one person (Fig. 9), the training curves (Fig. 8);
- a cross-check with the association task: 1:2 V->F by distance to the S2F reconstruction.

The measures themselves are in measures.py (the pixel classifier in pixel_attributes.py, Fig.
4(b), 6 and 7 in figures.py); `eval_s2f` computes the features they take, runs them and writes
what they give.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from facevoice.cli import options
from facevoice.service.errors import FormatError, UsageError
from facevoice.training.association.data import EXACT
from facevoice.training.corpus.oracle import corpus_people, face_render, identity_scores
from facevoice.training.runs import RunInfo, pick_device
from facevoice.training.speech2face.checkpoints import load_s2f_run
from facevoice.training.speech2face.data import S2FSplit, load_s2f_split, rows_tensor, to_normalised, to_rgb
from facevoice.training.speech2face.features import face_features
from facevoice.training.speech2face.figures import (
    FIG4A_PIXELS,
    FIG4B,
    FIG6,
    FIG7,
    dataset_statistics,
    fig4b,
    fig6,
    fig7,
    retrieval_examples,
)
from facevoice.training.speech2face.measures import (
    age_trend,
    attribute_agreement,
    cross_check,
    feature_similarity,
    geometry,
    reconstruction_variation,
    retrieval,
    segment_consistency,
    voice_hearing,
    voice_parameter_readout,
)
from facevoice.training.speech2face.model import FaceDecoder
from facevoice.training.speech2face.pixel_attributes import (
    classifier_record,
    pixel_agreement,
    train_pixel_classifier,
)
from facevoice.training.speech2face.train import voice_features

METRICS = "metrics.json"

@dataclass(frozen=True)
class EvalS2FOptions:
    run: Path  # a `train s2f` run directory
    corpus: Path | None = None  # default: the run's corpus (its run.json)
    out: Path | None = None  # the report directory (default RUN/report)
    checkpoint: str = "best.pt"
    split: str = "test"
    seconds: tuple[float, ...] = (3.0, 6.0)  # input durations (Table 2); the last is the main one
    trials: int = 4000  # 1:2 cross-check trials
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    cache_dir: Path | None = None  # decoded arrays (default RUN/cache)
    classifier_steps: int = 0  # training steps of Fig. 4's pixel attribute classifier (0: 75 passes, <= 5,000)
    no_progress: bool = False

    def __post_init__(self):
        object.__setattr__(self, "seconds", tuple(self.seconds))  # argparse's nargs="+" gives a list


@dataclass(frozen=True)
class EvalS2FResult:
    """The evaluation, as OUT/metrics.json holds it: written and read only here."""

    out: Path  # the report directory
    metrics: dict  # what metrics.json holds
    report: Path  # report.md
    figures: list[Path]

    def summary(self) -> str:
        from facevoice.training.speech2face.report import format_summary
        return format_summary(self.metrics, self.out)

    def write(self) -> Path:
        path = self.out / METRICS
        path.write_text(json.dumps(self.metrics, indent=2))
        return path

    @classmethod
    def read(cls, out: Path) -> EvalS2FResult:
        """OUT/metrics.json; FormatError naming the file when it is missing or not one."""
        path = Path(out) / METRICS
        try:
            metrics = json.loads(path.read_text())
            if not isinstance(metrics, dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise FormatError(f"{path}: not an `eval s2f` {METRICS} ({type(e).__name__}: {e})") from e
        return cls(Path(out), metrics, Path(out) / "report.md", [Path(out) / f for f in metrics.get("figures", [])])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, required=True, help="a `train s2f` run directory")
    p.add_argument("--corpus", type=Path, help="default: the run's corpus")
    p.add_argument("--out", type=Path, help="report directory (default RUN/report)")
    p.add_argument("--checkpoint", default=EvalS2FOptions.checkpoint)
    p.add_argument("--split", default=EvalS2FOptions.split)
    p.add_argument("--seconds", type=float, nargs="+", default=list(EvalS2FOptions.seconds),
                   help="input durations (Table 2)")
    p.add_argument("--trials", type=int, default=EvalS2FOptions.trials, help="1:2 cross-check trials")
    p.add_argument("--seed", type=int, default=EvalS2FOptions.seed)
    p.add_argument("--device", default=EvalS2FOptions.device)
    p.add_argument("--workers", type=int, default=EvalS2FOptions.workers)
    p.add_argument("--cache-dir", type=Path, help="decoded arrays (default RUN/cache)")
    p.add_argument("--classifier-steps", type=int, default=EvalS2FOptions.classifier_steps,
                   help="training steps of Fig. 4's attribute classifier on pixels (0: 75 passes over the "
                   "training photos, 50 to 5,000 steps)")
    p.add_argument("--no-progress", action="store_true")


@torch.no_grad()
def decode(decoder: FaceDecoder, v: torch.Tensor, device, batch: int = 64) -> torch.Tensor:
    return torch.cat([decoder(v[i:i + batch].to(device)).cpu() for i in range(0, len(v), batch)])


def eval_s2f(opts: EvalS2FOptions) -> EvalS2FResult:
    """`eval s2f`: the run's voice encoder, face network and decoder on the corpus's test identities
    -> OUT/report.md, metrics.json and the figures."""
    device = pick_device(opts.device)
    encoder, net, decoder, cfg, state = load_s2f_run(opts.run, opts.checkpoint, device)
    record = RunInfo.find(opts.run)
    if opts.corpus is None and record is None:
        raise UsageError(f"{opts.run} has no run.json to name its corpus: pass --corpus")
    corpus = opts.corpus or Path(record.corpus)
    out = opts.out or opts.run / "report"
    out.mkdir(parents=True, exist_ok=True)
    cache = opts.cache_dir or opts.run / "cache"
    progress = not opts.no_progress
    frontend = cfg.face.frontend()
    steps = tqdm(total=9 + len(opts.seconds), desc="evaluate s2f", disable=not progress)

    train = load_s2f_split(corpus, "train", cfg, cache, opts.workers, progress, modalities=("face",))
    test = {s: load_s2f_split(corpus, opts.split, cfg, cache, opts.workers, progress, seconds=s, store=EXACT)
            for s in opts.seconds}
    split = test[opts.seconds[-1]]
    train_vf = face_features(net, train.face.data, device)
    v_f = face_features(net, split.face.data, device)
    steps.update()
    metrics: dict = {"run": str(opts.run), "checkpoint": opts.checkpoint, "step": state.get("step"),
                     "config": cfg.name, "corpus": str(corpus), "split": opts.split,
                     "identities": len(split.identities), "faces": len(split.face.item_ids),
                     "voices": len(split.voice.item_ids), "similarity": {}}
    v_s = {}
    for s in opts.seconds:
        v_s[s] = voice_features(encoder, test[s].voice.data, device)
        metrics["similarity"][f"{s:g}s"] = feature_similarity(v_s[s], v_f, split)
        steps.update()
    main_s = v_s[opts.seconds[-1]]
    generator = corpus_people(corpus)  # synthetic corpora only: the oracle and the readout
    oracle = identity_scores(generator[0], [generator[1][i] for i in split.identities], "v2f") if generator else None
    metrics["retrieval"] = retrieval(main_s, v_f, split, oracle)
    metrics["consistency"] = segment_consistency(main_s, split)
    # Table 3 has rows for 3 s and 6 s of speech: every duration's L1 / L2 / cosine recalls
    metrics["retrieval_by_seconds"] = {f"{s:g}s": metrics["retrieval"] if s == opts.seconds[-1] else
                                       retrieval(v_s[s], v_f, split) for s in opts.seconds}
    readout = voice_parameter_readout(generator[1], train, train_vf, split) if generator else None
    if generator:  # the same galleries queried by the parameter readout: keep its cosine rows
        r = retrieval(readout, v_f, split)
        metrics["retrieval"]["voice_params"] = r["cosine"]
        metrics["retrieval"]["all_photos"]["voice_params"] = r["all_photos"]["cosine"]
        train_voice = load_s2f_split(corpus, "train", cfg, cache, opts.workers, progress,
                                     seconds=opts.seconds[-1], modalities=("voice",))
        train_vs = voice_features(encoder, train_voice.voice.data, device)
        metrics["hearing"] = voice_hearing(generator[1], train_voice, train_vs, split, main_s)
    steps.update()
    f2f = decode(decoder, v_f, device)
    s2f = decode(decoder, main_s, device)
    s2f_vf = face_features(net, to_normalised(s2f, frontend).numpy(), device)
    steps.update()
    metrics["attributes"] = attribute_agreement(train, train_vf, split, v_f, s2f_vf)
    pixels = train_pixel_classifier(train, frontend, opts.classifier_steps, opts.seed, progress)
    if pixels is not None:
        metrics["attributes_pixels"] = pixel_agreement(pixels, split, s2f, f2f)
        metrics["pixel_classifier"] = classifier_record(pixels)
    steps.update()
    metrics["age_trend"] = age_trend(train, train_vf, split, v_f, {
        "reconstruction": s2f_vf, "feature": main_s, **({"voice_params": readout} if readout is not None else {})},
        opts.seed)
    steps.update()
    metrics["geometry"] = geometry(generator, split, f2f.numpy(), s2f.numpy(), frontend, opts.seed,
                                   version=face_render(corpus))
    steps.update()
    metrics["cross_check"] = cross_check(split, s2f_vf, main_s, v_f, opts.trials, opts.seed)
    f2f_vf = face_features(net, to_normalised(f2f, frontend).numpy(), device)
    metrics["variation"] = {"s2f": reconstruction_variation(split, s2f, s2f_vf, "voice", opts.seed),
                            "f2f": reconstruction_variation(split, f2f, f2f_vf, "face", opts.seed)}
    steps.update()
    figures = pictures(split, f2f, s2f, frontend, out, opts.seed)
    if (opts.run / "training.png").exists():
        shutil.copy(opts.run / "training.png", out / "training.png")
        figures.append(out / "training.png")
    figures.append(confusion_figure(metrics["attributes"], out / "attributes.png"))
    if "attributes_pixels" in metrics:
        figures.append(confusion_figure(metrics["attributes_pixels"], out / FIG4A_PIXELS,
                                        "Fig. 4(a) by a CNN on pixels, trained on the training photos"))
    metrics["dataset"] = dataset_statistics(corpus)
    figures.append(fig4b(metrics["dataset"], out / FIG4B))
    figures.append(fig6(test, v_s, lambda v: decode(decoder, v, device), frontend, out / FIG6))
    metrics["retrieval_examples"] = retrieval_examples(main_s, v_f, split)
    figures.append(fig7(metrics["retrieval_examples"], split, s2f, frontend, out / FIG7))
    steps.update()
    metrics["figures"] = [p.name for p in figures]
    steps.update()
    steps.close()
    from facevoice.training.speech2face.report import write_report

    result = EvalS2FResult(out, metrics, out / "report.md", figures)
    result.write()
    write_report(metrics, result.report)
    return result


def run(args: argparse.Namespace) -> int:
    print(eval_s2f(options(EvalS2FOptions, args)).summary())
    return 0


def pictures(split: S2FSplit, f2f: torch.Tensor, s2f: torch.Tensor, frontend, out: Path, seed: int) -> list[Path]:
    """Fig. 3 (true | F2F | S2F for up to 16 people) and Fig. 9 (one person, each clip)."""
    from facevoice.training.speech2face.plots import face_grid
    hwc = lambda t: t.permute(0, 2, 3, 1).numpy()  # noqa: E731
    people = range(min(16, len(split.identities)))
    photo = [int(split.items_of("face", i)[0]) for i in people]
    clip = [int(split.items_of("voice", i)[0]) for i in people]
    labels = [f"{split.identities[i]} {split.attributes[i].get('gender', '')[:1]} "
              f"{split.attributes[i].get('age_group', '')}" for i in people]
    true = to_rgb(rows_tensor(split.face.data, photo), frontend)
    figs = [face_grid({"photo": hwc(true), "F2F": hwc(f2f[photo]), "S2F": hwc(s2f[clip])}, out / "faces.png",
                      labels)]
    clips = split.items_of("voice", 0)
    figs.append(face_grid({f"clip {k}": hwc(s2f[[c]]) for k, c in enumerate(clips)} |
                          {"photo": hwc(true[:1])}, out / "one_person.png", [labels[0]]))
    return figs


def confusion_figure(attributes: dict, path: Path, title: str = "") -> Path:
    from facevoice.training.association.plots import _save, plt
    fig, axes = plt.subplots(1, max(1, len(attributes)), figsize=(4 * max(1, len(attributes)), 3.6), squeeze=False)
    for ax, (attr, a) in zip(axes[0], attributes.items(), strict=False):
        m = np.array(a["confusion"], dtype=float)
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(range(len(a["classes"])), a["classes"], rotation=45, fontsize=7)
        ax.set_yticks(range(len(a["classes"])), a["classes"], fontsize=7)
        ax.set(xlabel="S2F reconstruction", ylabel="original photo",
               title=f"{attr}: agreement {100 * a['agreement']:.0f}%")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
