"""`facevoice eval association`: the whole Kim et al. 2018 evaluation of a run on the test
identities -> REPORT_DIR/report.md, metrics.json, demographics.md (Table 2) and PNG figures; with
`--cross-corpus`, a second corpus's test split too (Table 8 and Fig. 3)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facevoice.cli import options
from facevoice.service.corpus import CorpusInfo, read_identities
from facevoice.service.errors import FormatError
from facevoice.training.association import plots
from facevoice.training.association.checkpoints import load_run
from facevoice.training.association.data import EXACT, load_split
from facevoice.training.association.demographics import demographics, write_demographics
from facevoice.training.association.embed import split_embeddings
from facevoice.training.association.figures import cross_corpus_figure, tsne_figures
from facevoice.training.association.measures import clip_f0, speaker_f0
from facevoice.training.association.protocol import (
    linear_probes,
    link_probes,
    matching_table,
    one_of_n,
    retrieval,
    verification,
)
from facevoice.training.association.report import format_summary, write_report
from facevoice.training.corpus.oracle import split_oracle
from facevoice.training.runs import RunInfo, pick_device


@dataclass(frozen=True)
class EvalAssociationOptions:
    run: Path  # a `facevoice train association` run directory
    corpus: Path | None = None  # test corpus (default: the run's training corpus)
    out: Path | None = None  # report directory (default RUN/report)
    checkpoint: str = "best.pt"  # file in RUN (best.pt or checkpoints/last.pt)
    split: str = "test"
    trials: int = 4000  # trials per 1:2 and 1:N cell
    probe_trials: int = 20  # holdout trials per linear probe
    cross_corpus: Path | None = None  # a second corpus: its split's 1:2 table (Table 8) and Fig. 3
    trial_list: Path | None = None  # score a trial list instead (probe A B label lines)
    media_root: Path | None = None  # where the trial list's paths are (default: corpus)
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    cache_dir: Path | None = None  # decoded arrays (default RUN/cache)
    no_progress: bool = False


METRICS, TRIAL_LIST, DEMOGRAPHICS = "metrics.json", "trial_list.json", "demographics.md"


@dataclass(frozen=True)
class EvalAssociationResult:
    """The evaluation, as OUT/metrics.json holds it, or a trial list's score, as OUT/trial_list.json
    holds it; those files are written and read only here (report.md renders the metrics)."""

    out: Path  # the report directory
    metrics: dict | None = None  # the evaluation (None when a trial list was scored)
    trial_list: dict | None = None  # a trial list's score

    def summary(self) -> str:
        return self.trial_list["summary"] if self.trial_list is not None else format_summary(self.metrics, self.out)

    def write(self) -> Path:
        path = self.out / (TRIAL_LIST if self.trial_list is not None else METRICS)
        path.write_text(json.dumps(self.trial_list if self.trial_list is not None else self.metrics, indent=2,
                                   default=float))
        return path

    @classmethod
    def read(cls, out: Path, trial_list: bool = False) -> EvalAssociationResult:
        """OUT/metrics.json (or with `trial_list` OUT/trial_list.json); FormatError naming the file
        when it is missing or not one."""
        path = Path(out) / (TRIAL_LIST if trial_list else METRICS)
        try:
            found = json.loads(path.read_text())
            if not isinstance(found, dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise FormatError(f"{path}: not an `eval association` {path.name} ({type(e).__name__}: {e})") from e
        return cls(Path(out), None, found) if trial_list else cls(Path(out), found)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, required=True, help="a `facevoice train association` run directory")
    p.add_argument("--corpus", type=Path, help="test corpus (default: the run's training corpus)")
    p.add_argument("--out", type=Path, help="report directory (default RUN/report)")
    p.add_argument("--checkpoint", default=EvalAssociationOptions.checkpoint,
                   help="file in RUN (best.pt or checkpoints/last.pt)")
    p.add_argument("--split", default=EvalAssociationOptions.split)
    p.add_argument("--trials", type=int, default=EvalAssociationOptions.trials, help="trials per 1:2 and 1:N cell")
    p.add_argument("--probe-trials", type=int, default=EvalAssociationOptions.probe_trials,
                   help="holdout trials per linear probe")
    p.add_argument("--cross-corpus", type=Path,
                   help="a second corpus (e.g. another population): its split's 1:2 table beside the first "
                        "(Kim's Table 8) and both corpora in one t-SNE (Fig. 3)")
    p.add_argument("--trial-list", type=Path, help="score a trial list instead (probe A B label lines)")
    p.add_argument("--media-root", type=Path, help="where the trial list's paths are (default: corpus)")
    p.add_argument("--seed", type=int, default=EvalAssociationOptions.seed)
    p.add_argument("--device", default=EvalAssociationOptions.device)
    p.add_argument("--workers", type=int, default=EvalAssociationOptions.workers)
    p.add_argument("--cache-dir", type=Path, help="decoded arrays (default RUN/cache)")
    p.add_argument("--no-progress", action="store_true")


def corpus_oracle(corpus: Path, split: str) -> dict | None:
    """The generator's exact oracle for this split, when the corpus is synthetic."""
    info = CorpusInfo.find(corpus)
    return None if info is None else info.oracle.get(f"{split}_split", {}).get("accuracy")


def people_table(corpus: Path) -> dict[str, dict[str, str]]:
    """identities.csv by identity ({} for a corpus without it, e.g. VoxCeleb)."""
    if not (corpus / "identities.csv").exists():
        return {}
    return {r["identity"]: r for r in read_identities(corpus)}


def loudness_dbfs(waves: np.ndarray, batch: int = 256) -> np.ndarray:
    """Each clip's RMS level in dB relative to full scale (the input window the encoder sees)."""
    out = []
    for start in range(0, len(waves), batch):
        x = np.asarray(waves[start:start + batch], np.float64)
        out.append(20 * np.log10(np.maximum(np.sqrt((x ** 2).mean(axis=1)), 1e-10)))
    return np.concatenate(out) if out else np.zeros(0)


def eval_association(opts: EvalAssociationOptions) -> EvalAssociationResult:
    """`eval association`: Kim et al.'s evaluation of a run on a split -> OUT/report.md,
    metrics.json and the figures; or, with `trial_list`, that list scored -> OUT/trial_list.json."""
    device = pick_device(opts.device, local_rank=0)
    model, cfg, state = load_run(opts.run, opts.checkpoint, device)
    run_info = RunInfo.find(opts.run)
    corpus = opts.corpus or Path(run_info.corpus if run_info else "")
    out = opts.out or opts.run / "report"
    out.mkdir(parents=True, exist_ok=True)
    if opts.trial_list:
        from facevoice.training.association.trial_list import score_trial_list
        try:
            scored = score_trial_list(model, cfg, opts.trial_list, opts.media_root or corpus, device)
        except ValueError as e:  # the list's own errors (a line it cannot parse, mixed kinds, nothing decoded)
            raise FormatError(str(e)) from e
        done = EvalAssociationResult(out, None, scored)
        done.write()
        return done

    cache = opts.cache_dir or opts.run / "cache"
    split = load_split(corpus, opts.split, cfg, cache, opts.workers, not opts.no_progress,
                       voice_frontend=cfg.voice.frontend(), store=EXACT)
    emb = split_embeddings(model, cfg, split, device)
    oracle = split_oracle(corpus, split.identities) or None
    people = people_table(corpus)
    f0 = clip_f0(split.voice.data, cfg.voice.sample_rate, not opts.no_progress)
    speaker = speaker_f0(f0, split.voice.identity, len(split.identities))
    steps = [("1:2 matching", lambda: matching_table(emb, split, opts.trials, opts.seed)),
             ("1:N matching", lambda: one_of_n(emb, split, opts.trials, opts.seed)),
             ("verification", lambda: verification(emb, split)),
             ("retrieval", lambda: retrieval(emb, split, opts.seed, oracle=oracle)),
             ("linear probes", lambda: linear_probes(emb, split, opts.probe_trials, opts.seed)),
             ("link probes", lambda: link_probes(emb, split, people, opts.probe_trials, opts.seed,
                                                 measured={"measured_f0": np.log(speaker)}))]
    metrics: dict = {"run": str(opts.run), "checkpoint": opts.checkpoint, "trained_direction": state["direction"],
                     "step": state["step"], "config": cfg.name, "corpus": str(corpus), "split": opts.split,
                     "identities": len(split.identities), "faces": len(split.face.item_ids),
                     "voices": len(split.voice.item_ids), "oracle": corpus_oracle(corpus, opts.split),
                     "backbones": run_info.details.get("backbones", {}) if run_info else {},
                     "f0": f0_summary(f0, speaker, split.identities, split.attributes, people)}
    keys = ["matching", "one_of_n", "verification", "retrieval", "probes", "links"]
    bar = tqdm(steps, desc="evaluate", disable=opts.no_progress)
    for key, (name, fn) in zip(keys, bar, strict=True):
        bar.set_postfix_str(name)
        metrics[key] = fn()
    names = corpus_names(corpus, opts.cross_corpus)
    tables = [(names[0], demographics(corpus))]
    figures = [
        plots.matching_bars({d: metrics["matching"][d] for d in ("v2f", "f2v")}, metrics["oracle"],
                            out / "matching.png"),
        plots.one_of_n_curve(metrics["one_of_n"], out / "one_of_n.png"),
        plots.roc_curves({"voice-face": (np.array(metrics["verification"]["roc"]["fpr"]),
                                         np.array(metrics["verification"]["roc"]["tpr"]),
                                         metrics["verification"]["auc"])}, out / "roc.png"),
        plots.recall_curves({d: metrics["retrieval"][d] for d in ("v2f", "f2v")},
                            metrics["retrieval"]["random"], out / "recall.png"),
        *tsne_figures(emb, split, people, out, opts.seed, f0, loudness_dbfs(split.voice.data)),
    ]
    if opts.cross_corpus:
        other = load_split(opts.cross_corpus, opts.split, cfg, cache, opts.workers, not opts.no_progress,
                           voice_frontend=cfg.voice.frontend(), store=EXACT)
        other_emb = split_embeddings(model, cfg, other, device)
        metrics["cross_corpus"] = {"name": names[1], "corpus": str(opts.cross_corpus),
                                   "identities": len(other.identities), "faces": len(other.face.item_ids),
                                   "voices": len(other.voice.item_ids),
                                   "oracle": corpus_oracle(opts.cross_corpus, opts.split),
                                   "matching": matching_table(other_emb, other, opts.trials, opts.seed)}
        tables.append((names[1], demographics(opts.cross_corpus)))
        figures.append(cross_corpus_figure({names[0]: emb, names[1]: other_emb}, out, opts.seed))
    metrics["demographics"] = [{"name": n, **d} for n, d in tables]
    metrics["figures"] = [f.name for f in figures]
    metrics["tables"] = [write_demographics(tables, out / DEMOGRAPHICS).name]
    done = EvalAssociationResult(out, metrics)
    done.write()
    write_report(metrics, out / "report.md")
    return done


def corpus_names(corpus: Path, cross: Path | None) -> list[str]:
    """How the report and Fig. 3 call the corpora: their directories' names, or their paths when
    those are the same."""
    if cross is None:
        return [Path(corpus).name or str(corpus)]
    a, b = Path(corpus), Path(cross)
    return [a.name, b.name] if a.name != b.name else [str(a), str(b)]


def f0_summary(f0: np.ndarray, speaker: np.ndarray, identities: list[str], attributes: list[dict[str, str]],
               people: dict[str, dict[str, str]]) -> dict:
    """What the measured F0 found: clips voiced, the speakers' median F0 by gender and, where the
    corpus records the generator's pitch setting, Pearson r of log F0 on it by gender (the check
    of the estimator on the corpus, docs/association.md)."""
    gender = np.array([a.get("gender", "") for a in attributes])
    ok = np.isfinite(speaker)
    pitch = np.array([float(people[i]["voice_pitch"]) if people.get(i, {}).get("voice_pitch") else np.nan
                      for i in identities])
    out = {"estimator": "YIN (service.media.pitch)", "clips": len(f0), "voiced_clips": int(np.isfinite(f0).sum()),
           "speakers": int(ok.sum()), "median_hz": {}, "r_generator_pitch": {}}
    for g in sorted(set(gender)):
        mine = ok & (gender == g)
        if mine.any():
            out["median_hz"][g or "all"] = float(np.median(speaker[mine]))
        both = mine & np.isfinite(pitch)
        if both.sum() >= 3 and np.log(speaker[both]).std() > 0 and pitch[both].std() > 0:
            out["r_generator_pitch"][g or "all"] = float(np.corrcoef(np.log(speaker[both]), pitch[both])[0, 1])
    return out


def run(args: argparse.Namespace) -> int:
    print(eval_association(options(EvalAssociationOptions, args)).summary())
    return 0
