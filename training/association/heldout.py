"""`facevoice eval heldout`: association runs on corpora of people no run has seen.

Kim et al. 2018 test on identities disjoint from training (sec. 4.2); on a synthetic corpus a
run's own test split is one draw of 60 such people. This command generates (or reuses) whole
corpora of new people from seeds of the caller's choosing, each split entirely into `test`,
evaluates every run on each under Table 3's controls (G/E/F/A over every such group, not only
Kim's largest), pools the trials of all corpora for one identity-bootstrap interval per cell,
and probes the within-gender links. With runs trained on different numbers of identities
(train.identities) it also draws the learning curve.

    facevoice eval heldout --run runs/a --run runs/b --seeds 7101 7102 7103 --identities 200 \\
        --corpora corpora/ --out reports/heldout --curve
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facevoice.cli import options
from facevoice.service.corpus import CorpusInfo
from facevoice.service.errors import FormatError, UsageError
from facevoice.training.association.checkpoints import load_run
from facevoice.training.association.data import EXACT, load_split
from facevoice.training.association.embed import split_embeddings
from facevoice.training.association.evaluate import corpus_oracle, people_table
from facevoice.training.association.protocol import MATCH_CONTROLS, link_probes, matching_outcomes, outcome_cell
from facevoice.training.association.report import ARROW, LINK_NAMES, _pct
from facevoice.training.runs import RunInfo, pick_device

CONTROLS = tuple(c for c in MATCH_CONTROLS if c != "largest group")


HELDOUT_RESULTS = "heldout.json"


@dataclass(frozen=True)
class EvalHeldoutOptions:
    out: Path  # the report directory
    run: Sequence[Path] = ()  # run directories
    results: Sequence[Path] = ()  # heldout.json files of earlier evaluations, tabulated without evaluating again
    seeds: Sequence[int] = (7101, 7102, 7103)  # corpus seeds; seeds no training corpus was generated with
    identities: int = 200  # people per held-out corpus
    corpora: Path | None = None  # where the held-out corpora are (heldout-SEED-N/, generated when missing)
    trials: int = 4000  # 1:2 trials per cell and corpus
    probe_trials: int = 20
    curve: bool = False  # also plot pooled accuracy against each run's training identities (curve.png)
    device: str = "auto"
    workers: int = 2
    no_progress: bool = False


@dataclass(frozen=True)
class HeldoutResults:
    """heldout.json: each run's results on the held-out corpora (evaluate_run's dicts), read and
    written only here; `eval heldout --results` tabulates earlier ones from it."""

    runs: list[dict] = field(default_factory=list)

    def write(self, out: Path) -> Path:
        path = Path(out) / HELDOUT_RESULTS
        tmp = path.with_name(f".{HELDOUT_RESULTS}.tmp")
        tmp.write_text(json.dumps(self.runs, indent=2, default=float))
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: Path) -> HeldoutResults:
        """From a heldout.json (or the report directory holding one); FormatError naming the file
        when it is missing or not one."""
        path = Path(path) / HELDOUT_RESULTS if Path(path).is_dir() else Path(path)
        try:
            found = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise FormatError(f"{path}: not a {HELDOUT_RESULTS} ({e})") from e
        if not isinstance(found, list) or not all(isinstance(r, dict) and "pooled" in r for r in found):
            raise FormatError(f"{path}: not a {HELDOUT_RESULTS} (a list of run results)")
        return cls(found)


@dataclass(frozen=True)
class EvalHeldoutResult:
    out: Path
    runs: list[dict]  # each run's results, the earlier ones (--results) first, as heldout.json holds them
    corpora: list[str]  # the held-out corpora's names
    report: Path  # OUT/heldout.md
    figure: Path | None = None  # OUT/curve.png, when drawn

    def summary(self) -> str:
        return "\n".join([f"held-out evaluation of {len(self.runs)} run(s) on {len(self.corpora)} corpora "
                          f"-> {self.out}", *table(self.runs)])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, action="append", default=list(EvalHeldoutOptions.run),
                   help="a run directory (repeatable)")
    p.add_argument("--results", type=Path, nargs="+", default=list(EvalHeldoutOptions.results),
                   help="heldout.json files of earlier runs of this command: tabulated (and with --curve "
                        "plotted) with the --run results, without evaluating them again")
    p.add_argument("--seeds", type=int, nargs="+", default=list(EvalHeldoutOptions.seeds),
                   help="corpus seeds; use seeds no training corpus was generated with")
    p.add_argument("--identities", type=int, default=EvalHeldoutOptions.identities, help="people per held-out corpus")
    p.add_argument("--corpora", type=Path,
                   help="where the held-out corpora are (heldout-SEED-N/, generated when missing)")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--trials", type=int, default=EvalHeldoutOptions.trials, help="1:2 trials per cell and corpus")
    p.add_argument("--probe-trials", type=int, default=EvalHeldoutOptions.probe_trials)
    p.add_argument("--curve", action="store_true",
                   help="also plot pooled accuracy against each run's training identities (curve.png)")
    p.add_argument("--device", default=EvalHeldoutOptions.device)
    p.add_argument("--workers", type=int, default=EvalHeldoutOptions.workers)
    p.add_argument("--no-progress", action="store_true")


def heldout_corpus(root: Path, seed: int, identities: int, progress: bool) -> Path:
    """A synthetic corpus of `identities` new people drawn with `seed`, all in the test split."""
    from facevoice.training.corpus.faces import FACE_RENDER
    from facevoice.training.corpus.synth import SynthConfig, build_corpus

    path = root / f"heldout-{seed}-{identities}"
    info = CorpusInfo.find(path)
    if info is not None and info.face_render != FACE_RENDER:
        print(f"{path}: drawn by face painter {info.face_render}, not today's {FACE_RENDER}; building it again",
              flush=True)
        info = None
    if info is None:
        build_corpus(path, SynthConfig(identities=identities, seed=seed, splits=(0.0, 0.0, 1.0)), force=True,
                     progress=progress)
    return path


def training_seeds(run: Path) -> tuple[int | None, int]:
    """The seed of the corpus a run trained on (None when unknown) and its training identities."""
    record = RunInfo.read(run)
    info = CorpusInfo.find(Path(record.corpus))
    return (info.seed if info else None), record.train_identities


def evaluate_run(run: Path, corpora: list[Path], trials: int, probe_trials: int, device, workers: int,
                 progress: bool) -> dict:
    model, cfg, state = load_run(run, "best.pt", device)
    seed, train_ids = training_seeds(run)
    pooled: dict = {d: {c: ([], []) for c in CONTROLS} for d in ARROW}
    result: dict = {"run": str(run), "step": state["step"], "direction": state["direction"],
                    "train_identities": train_ids, "training_corpus_seed": seed, "trials": trials, "corpora": {}}
    for k, corpus in enumerate(corpora):
        split = load_split(corpus, "test", cfg, corpus / "cache", workers, progress,
                           voice_frontend=cfg.voice.frontend(), store=EXACT, skip_refused=True)
        emb = split_embeddings(model, cfg, split, device)
        cells: dict = {d: {} for d in ARROW}
        for d in ARROW:
            for c in CONTROLS:
                found = matching_outcomes(emb, split, d, c, trials, seed=0)
                if found is None:
                    cells[d][c] = None
                    continue
                cells[d][c] = outcome_cell(*found)
                pooled[d][c][0].append(found[0])
                pooled[d][c][1].append(found[1] + 1_000_000 * k)  # identities of different corpora differ
        result["corpora"][corpus.name] = {"identities": len(split.identities), "matching": cells,
                                          "refused": split.refused,
                                          "oracle": corpus_oracle(corpus, "test"),
                                          "links": link_probes(emb, split, people_table(corpus), probe_trials)}
    result["pooled"] = {d: {c: outcome_cell(np.concatenate(r), np.concatenate(a)) if r else None
                            for c, (r, a) in pooled[d].items()} for d in ARROW}
    result["pooled_oracle"] = {d: {c: _mean([(v["oracle"] or {}).get(d, {}).get(c)
                                             for v in result["corpora"].values()]) for c in CONTROLS} for d in ARROW}
    result["pooled_links"] = _mean_links([v["links"] for v in result["corpora"].values()])
    return result


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _mean_links(per_corpus: list[dict]) -> dict:
    out: dict = {}
    for links in per_corpus:
        for m, cells in links.items():
            for name, cell in cells.items():
                out.setdefault(m, {}).setdefault(name, []).append(cell["r"])
    return {m: {name: float(np.mean(rs)) for name, rs in cells.items()} for m, cells in out.items()}


def table(results: list[dict]) -> list[str]:
    lines = ["| run (training identities) | direction | corpus | people | " + " | ".join(CONTROLS) + " |",
             "|---|---|---|---|" + "---|" * len(CONTROLS)]
    for r in results:
        name = f"`{Path(r['run']).name}` ({r['train_identities']})"
        for d in ARROW:
            for corpus, v in r["corpora"].items():
                lines.append(f"| {name} | {ARROW[d]} | {corpus} | {v['identities']} | " + " | ".join(
                    _pct(c["accuracy"]) if c else "–" for c in (v["matching"][d][k] for k in CONTROLS)) + " |")
            people = sum(v["identities"] for v in r["corpora"].values())
            lines.append(f"| {name} | {ARROW[d]} | **pooled** | {people} | " + " | ".join(
                "–" if c is None else f"**{_pct(c['accuracy'])}** ({_pct(c['ci95_identity_bootstrap'][0])}–"
                f"{_pct(c['ci95_identity_bootstrap'][1])})" for c in (r["pooled"][d][k] for k in CONTROLS)) + " |")
    first = results[0]
    for d in ARROW:
        lines.append(f"| oracle (mean of the corpora) | {ARROW[d]} | | | "
                     + " | ".join(_pct(first["pooled_oracle"][d][c]) for c in CONTROLS) + " |")
    lines.append("| chance | both | | | " + " | ".join("50.0" for _ in CONTROLS) + " |")
    return lines


def link_table(results: list[dict]) -> list[str]:
    names = [(m, n) for m in ("face", "voice") for n in results[0]["pooled_links"].get(m, {})]
    lines = ["| run | " + " | ".join(f"{m}: {LINK_NAMES.get(n, n)}" for m, n in names) + " |",
             "|---|" + "---|" * len(names)]
    for r in results:
        lines.append(f"| `{Path(r['run']).name}` | " + " | ".join(
            f"{r['pooled_links'].get(m, {}).get(n, float('nan')):.2f}" for m, n in names) + " |")
    return lines


def curve(results: list[dict], path: Path) -> Path:
    """Pooled 1:2 accuracy (with its interval) against training identities, one line per control
    and direction; the oracle's G as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = sorted(results, key=lambda r: r["train_identities"])
    x = [r["train_identities"] for r in rs]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, d in zip(axes, ARROW, strict=True):
        for c, colour in zip(("-", "G", "G/E"), ("tab:blue", "tab:orange", "tab:green"), strict=True):
            cells = [r["pooled"][d][c] for r in rs]
            y = [100 * cell["accuracy"] for cell in cells]
            lo = [100 * cell["ci95_identity_bootstrap"][0] for cell in cells]
            hi = [100 * cell["ci95_identity_bootstrap"][1] for cell in cells]
            ax.plot(x, y, "o-", color=colour, label=f"model, {c}")
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15)
            oracle = rs[0]["pooled_oracle"][d][c]
            if oracle is not None:
                ax.axhline(100 * oracle, color=colour, ls="--", lw=1, label=f"oracle, {c}")
        ax.axhline(50, color="grey", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_xticks(x, [str(v) for v in x])
        ax.set_xlabel("training identities")
        ax.set_title(f"{ARROW[d]} on {sum(v['identities'] for v in rs[0]['corpora'].values())} held-out people")
        ax.set_ylabel("1:2 accuracy %")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left")
    fig.suptitle("Learning curve: 1:2 matching on people never seen, against the number of training identities")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def eval_heldout(opts: EvalHeldoutOptions) -> EvalHeldoutResult:
    """`eval heldout`: every run evaluated on the held-out corpora of `seeds` (generated where
    missing), with the earlier results of `results` -> OUT/heldout.json, heldout.md (and curve.png)."""
    if not opts.run and not opts.results:
        raise UsageError("give --run RUN (repeatable) or --results heldout.json ...")
    if opts.run and opts.corpora is None:
        raise UsageError("--corpora DIR is needed to evaluate runs")
    device = pick_device(opts.device, local_rank=0)
    progress = not opts.no_progress
    used = {training_seeds(r)[0] for r in opts.run}
    clash = sorted(s for s in opts.seeds if s in used)
    if clash:
        raise UsageError(f"seed(s) {clash} generated a training corpus of these runs; "
                         "held-out people need seeds of their own")
    earlier = [r for path in opts.results for r in HeldoutResults.read(path).runs]
    corpora = []
    if opts.run:
        opts.corpora.mkdir(parents=True, exist_ok=True)
        corpora = [heldout_corpus(opts.corpora, s, opts.identities, progress) for s in opts.seeds]
    results = earlier + [
        evaluate_run(r, corpora, opts.trials, opts.probe_trials, device, opts.workers, progress)
        for r in tqdm(opts.run, desc="runs", disable=not progress)]
    corpora_names = sorted({c for r in results for c in r["corpora"]})
    opts.out.mkdir(parents=True, exist_ok=True)
    HeldoutResults(results).write(opts.out)
    figure = curve(results, opts.out / "curve.png") if opts.curve and len(results) > 1 else None
    text = ["# Association on held-out people", "",
            f"Corpora of new people ({', '.join(corpora_names)}, all test); "
            f"{'/'.join(str(t) for t in sorted({r.get('trials', opts.trials) for r in results}))} 1:2 trials "
            "per cell and corpus; pooled intervals resample people (95%).", "",
            *table(results), "", "## Within-gender links (Pearson r of a ridge read-out, mean of the corpora)", "",
            *link_table(results), "", *([f"![learning curve]({figure.name})", ""] if figure else [])]
    report = opts.out / "heldout.md"
    report.write_text("\n".join(text))
    return EvalHeldoutResult(opts.out, results, corpora_names, report, figure)


def run(args: argparse.Namespace) -> int:
    print(eval_heldout(options(EvalHeldoutOptions, args)).summary())
    return 0
