"""`facevoice study analyze --study STUDY_DIR --out REPORT_DIR [--export DIR] [--sources SOURCE ...]
[--model-repo DIR | --service HOST:PORT]`.

The analysis of Kim et al. sec. 3.3 on the study's database, or on its tidy export (`study export`):
- Table 1: per experiment, the mean and SD of participants' accuracy on the 16 matching tasks
  (controls left out), and a one-sample t-test against 50% (t, n, p);
- a one-way ANOVA across the experiments, and Tukey's HSD between each two;
- the per-model difficulty of Experiment 3 (sec. 3.3's figure): for each person, the share of
  trials answered right among those where their face was shown, as the match or as the foil;
- exclusions with their reasons (two or more failed controls; took part in the recording);
- humans against the machine on the same trials: our association model answers, through the
  service's own Match RPC, exactly the tasks the included participants answered;
- the study's power: participants needed for 80% power to tell 55% from 50% at the observed SD.
Writes report.md, report.json and PNG figures."""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facevoice.cli import options
from facevoice.service.errors import UsageError
from facevoice.study.config import EXPERIMENTS, Study
from facevoice.study.design import stimulus_people
from facevoice.study.rules import exclusion
from facevoice.study.store import SOURCES, Store, opened

PAPER_TABLE1 = {1: (71.4, 13.6, 13.17, 70), 2: (65.0, 13.0, 9.65, 70), 3: (58.4, 13.8, 5.20, 73),
                4: (55.2, 12.2, 3.69, 75)}  # Kim et al. Table 1: mean %, SD %, t, n


def label(e: int) -> str:
    direction, letters = EXPERIMENTS[e]
    return f"{e}: {'/'.join(letters)}, {direction.replace('->', '→')}"


def collect(study: Study, store: Store, sources: tuple[str, ...] = ("participant",)) -> dict:
    """Finished matchers' accuracy per experiment, and why the others were left out. Only
    participants of `sources` count (real participants by default); the matchers of other
    sources are counted in `left_out`, by source."""
    trials_of = defaultdict(list)
    for t in store.trials():
        trials_of[t["code"]].append(t)
    included, excluded, left_out = defaultdict(dict), defaultdict(int), defaultdict(int)
    unfinished = 0
    for p in store.participants():
        if p.role != "match":
            continue
        if p.source not in sources:
            left_out[p.source] += 1
            continue
        if p.finished_at is None:
            unfinished += 1
            continue
        ts = trials_of[p.code]
        why = p.excluded or exclusion(study, p.survey, ts)
        if why:
            excluded[why.split(" (")[0]] += 1
            continue
        matching = [t for t in ts if t["kind"] == "match"]
        included[p.experiment][p.code] = matching
    return {"included": included, "excluded": dict(excluded), "unfinished": unfinished, "sources": list(sources),
            "left_out": dict(left_out)}


def accuracy(trials: list[dict]) -> float:
    return float(np.mean([t["chosen"] == t["correct"] for t in trials]))


# the fewest participants an experiment needs before Table 1 gives its 95% interval (at n = 2
# the t interval of a typical SD ran from -182% to 294%); the interval is clipped to 0-100%
MIN_N_INTERVAL = 5


def table1(included: dict) -> dict[int, dict]:
    from scipy import stats

    out = {}
    for e, by_code in sorted(included.items()):
        acc = np.array([accuracy(ts) for ts in by_code.values()]) * 100
        sd = float(acc.std(ddof=1)) if len(acc) > 1 else float("nan")
        row = {"n": len(acc), "mean": float(acc.mean()), "sd": sd}
        if len(acc) > 1 and row["sd"] > 0:
            t = stats.ttest_1samp(acc, 50.0)
            row.update(t=float(t.statistic), p=float(t.pvalue))
            if len(acc) >= MIN_N_INTERVAL:  # below it a t interval spans far beyond 0-100%: said, not printed
                half = stats.t.ppf(0.975, len(acc) - 1) * row["sd"] / math.sqrt(len(acc))
                row["ci"] = (max(0.0, row["mean"] - half), min(100.0, row["mean"] + half))
        out[e] = row
    return out


def anova(included: dict) -> dict | None:
    from scipy import stats

    groups = {e: [accuracy(ts) * 100 for ts in by.values()] for e, by in sorted(included.items()) if len(by) > 1}
    if len(groups) < 2:
        return None
    f = stats.f_oneway(*groups.values())
    hsd = stats.tukey_hsd(*groups.values())
    names = list(groups)
    pairs = [{"a": names[i], "b": names[j], "diff": float(hsd.statistic[i, j]), "p": float(hsd.pvalue[i, j])}
             for i in range(len(names)) for j in range(i + 1, len(names))]
    return {"F": float(f.statistic), "p": float(f.pvalue), "tukey": pairs}


def difficulty(included: dict, experiment: int = 3) -> list[tuple[str, float, int]]:
    """(person, % right, trials) for each person whose face was shown in the experiment."""
    right, seen = defaultdict(int), defaultdict(int)
    direction = EXPERIMENTS[experiment][0]
    for ts in included.get(experiment, {}).values():
        for t in ts:
            faces = (t["option0"], t["option1"]) if direction == "V->F" else (t["query"],)
            for person in set(faces):
                seen[person] += 1
                right[person] += t["chosen"] == t["correct"]
    return sorted(((p, 100 * right[p] / seen[p], seen[p]) for p in seen), key=lambda r: r[1])


def machine_answers(study: Study, included: dict, model_repo: Path | None, service: str | None) -> dict[tuple, int]:
    """(direction, query, option0, option1) -> the option our model's Match ranks first, for every
    task an included participant answered."""
    import grpc

    from facevoice.v1 import facevoice_pb2 as pb
    from facevoice.v1 import facevoice_pb2_grpc

    people = stimulus_people(study)
    tasks = {(EXPERIMENTS[e][0], t["query"], t["option0"], t["option1"])
             for e, by in included.items() for ts in by.values() for t in ts}
    running = None
    if service is None:
        from facevoice.service.serve import Running, ServeConfig

        running = Running(ServeConfig(model_repo=model_repo, index_root=None, port=0, metrics_port=-1, grace_s=0.5))
        service = f"127.0.0.1:{running.port}"
    channel = grpc.insecure_channel(service)
    stub = facevoice_pb2_grpc.FaceVoiceStub(channel)

    def media(identity: str, face: bool):
        path = study.corpus / (people[identity].face if face else people[identity].voice)
        data = path.read_bytes()
        return pb.Media(image=pb.Image(data=data)) if face else pb.Media(audio=pb.Audio(data=data))

    out = {}
    try:
        for direction, q, a, b in sorted(tasks):
            vf = direction == "V->F"
            r = stub.Match(pb.MatchRequest(probe=media(q, not vf), candidates=[media(a, vf), media(b, vf)]), timeout=60)
            out[(direction, q, a, b)] = r.ranking[0].index
    finally:
        channel.close()
        if running is not None:
            running.stop(0.5)
    return out


def machine_table(included: dict, answers: dict) -> dict[int, dict]:
    """The model's accuracy on each experiment's answered tasks (each as often as it was shown),
    with a 95% Wilson interval."""
    out = {}
    for e, by in sorted(included.items()):
        right = [answers[(EXPERIMENTS[e][0], t["query"], t["option0"], t["option1"])] == t["correct"]
                 for ts in by.values() for t in ts]
        n, k = len(right), sum(right)
        z = 1.96
        centre = (k + z * z / 2) / (n + z * z)
        half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
        out[e] = {"trials": n, "accuracy": 100 * k / n, "ci": (100 * (centre - half), 100 * (centre + half))}
    return out


def participants_needed(sd_percent: float, target: float = 55.0, power: float = 0.8, alpha: float = 0.05) -> int:
    """Smallest n for a two-sided one-sample t-test at `alpha` to reach `power` against 50%."""
    from scipy import stats

    d = (target - 50.0) / sd_percent
    for n in range(3, 100_000):
        crit = stats.t.ppf(1 - alpha / 2, n - 1)
        nc = d * math.sqrt(n)
        if stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc) >= power:
            return n
    return 100_000


def figures(out: Path, t1: dict, machine: dict | None, hard: list) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(7, 3.6))
    es = sorted(t1)
    x = np.arange(len(es))
    means = [t1[e]["mean"] for e in es]
    ax.bar(x - 0.2, means, 0.38, label="participants (mean, 95% CI)", color="#4c72b0")
    # an interval only where Table 1 gives one (n >= MIN_N_INTERVAL); below, the bar says its n
    with_ci = [k for k, e in enumerate(es) if "ci" in t1[e]]
    if with_ci:
        ax.errorbar(x[with_ci] - 0.2, [means[k] for k in with_ci], fmt="none", ecolor="k", capsize=3,
                    yerr=[[means[k] - t1[es[k]]["ci"][0] for k in with_ci],
                          [t1[es[k]]["ci"][1] - means[k] for k in with_ci]])
    for k, e in enumerate(es):
        note = f"n={t1[e]['n']}" + ("" if "ci" in t1[e] else ", no CI")
        ax.text(x[k] - 0.2, 2, note, ha="center", va="bottom", fontsize=6, color="white")
    if machine:
        m = [machine[e]["accuracy"] for e in es]
        merr = [[machine[e]["accuracy"] - machine[e]["ci"][0] for e in es],
                [machine[e]["ci"][1] - machine[e]["accuracy"] for e in es]]
        ax.bar(x + 0.2, m, 0.38, yerr=merr, capsize=3, label="our model, same trials (95% CI)", color="#dd8452")
    ax.scatter(x - 0.2, [PAPER_TABLE1[e][0] for e in es], marker="D", s=28, color="k", zorder=3,
               label="Kim et al. Table 1")
    ax.axhline(50, ls="--", color="grey", lw=1)
    ax.set_xticks(x, [label(e) for e in es], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "table1.png", dpi=120)
    plt.close(fig)
    names.append("table1.png")
    if hard:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.bar(range(len(hard)), [h[1] for h in hard], color=["#c44e52" if h[1] < 50 else "#55a868" for h in hard])
        ax.axhline(50, ls="--", color="grey", lw=1)
        ax.set_xlabel("person (sorted)")
        ax.set_ylabel("% right when their face was shown")
        ax.set_title("Experiment 3: per-model difficulty (Kim et al. sec. 3.3)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "difficulty.png", dpi=120)
        plt.close(fig)
        names.append("difficulty.png")
    return names


def report(study: Study, data: dict, t1: dict, aov: dict | None, hard: list, machine: dict | None,
           needed: dict, figs: list[str]) -> str:
    lines = [f"# {study.title}: analysis", "",
             "Kim et al. 2018 sec. 3.3 on this study's answers (`facevoice study analyze`). Accuracy is on the 16",
             "matching tasks; the 4 controls only decide exclusions. Chance is 50%.", "",
             "## Table 1", "",
             "| experiment | n | mean | SD | t | p | 95% CI | Kim et al. (mean, SD, t (n)) |",
             "|---|---|---|---|---|---|---|---|"]
    for e, r in t1.items():
        paper = PAPER_TABLE1[e]
        t = f"{r['t']:.2f}" if "t" in r else "–"
        p = (f"{r['p']:.2g}" if r["p"] >= 0.001 else "< 0.001") if "p" in r else "–"
        ci = (f"{r['ci'][0]:.1f}–{r['ci'][1]:.1f}%" if "ci" in r
              else f"none at n < {MIN_N_INTERVAL}" if r["n"] < MIN_N_INTERVAL else "–")
        lines.append(f"| {label(e)} | {r['n']} | {r['mean']:.1f}% | {r['sd']:.1f}% | {t} | {p} | {ci} | "
                     f"{paper[0]}%, {paper[1]}%, {paper[2]} ({paper[3]}) |")
    lines += ["", "## Across experiments", ""]
    if aov:
        lines.append(f"One-way ANOVA: F = {aov['F']:.2f}, p = {aov['p']:.2g} (Kim et al.: F = 21.36, p < 0.001).")
        lines += ["", "Tukey's HSD:", "", "| | difference (points) | p |", "|---|---|---|"]
        lines += [f"| {label(r['a'])} vs {label(r['b'])} | {r['diff']:+.1f} | {r['p']:.2g} |" for r in aov["tukey"]]
    else:
        lines.append("Fewer than two experiments have two or more participants: no ANOVA.")
    lines += ["", "## Humans and the machine on the same trials", ""]
    if machine:
        lines += ["| experiment | participants (mean, 95% CI) | our model (trials, accuracy, 95% CI) |",
                  "|---|---|---|"]
        for e in t1:
            h, m = t1[e], machine[e]
            hci = f"{h['ci'][0]:.1f}–{h['ci'][1]:.1f}" if "ci" in h else f"n = {h['n']}, no interval"
            lines.append(f"| {label(e)} | {h['mean']:.1f}% ({hci}) | {m['trials']}, {m['accuracy']:.1f}% "
                         f"({m['ci'][0]:.1f}–{m['ci'][1]:.1f}) |")
        lines += ["", "The model answered, through the service's Match RPC, each task an included participant saw,",
                  "counted as often as it was shown."]
    else:
        lines.append("No model was given (--model-repo or --service).")
    lines += ["", "## Experiment 3: per-model difficulty", ""]
    if hard:
        above = sum(h[1] > 50 for h in hard)
        lines.append(f"{above} of {len(hard)} people ({100 * above / len(hard):.0f}%) were matched above 50% "
                     "when their face was shown (Kim et al.: 34 of 42, 80%).")
    else:
        lines.append("No answers in Experiment 3.")
    lines += ["", "## Participants", "",
              f"Included: {sum(r['n'] for r in t1.values())}. Unfinished: {data['unfinished']}. Excluded: "
              + (", ".join(f"{n} ({why})" for why, n in sorted(data["excluded"].items())) or "none")
              + " (Kim et al.: 9 of 301 for controls, 4 for having recorded).", "",
              f"Sources counted: {', '.join(data['sources'])}; left out: {_held_out(data) or 'none'} "
              "(`--sources` chooses).", "",
              "## Planning", "",
              "Participants an experiment needs for 80% power to tell 55% from 50% (two-sided t-test, α = 0.05):", ""]
    lines += [f"- {label(e)}: {n} (at this experiment's SD, {t1[e]['sd']:.1f}%)" for e, n in needed.items()]
    lines += [f"- at Kim et al.'s SDs (12.2-13.8%): {participants_needed(12.2)}-{participants_needed(13.8)}"]
    lines += ["", *[f"![{f}]({f})" for f in figs], ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class StudyAnalyzeOptions:
    study: Path
    out: Path  # the report directory
    database: str | None = None  # default STUDY_DIR's SQLite
    export: Path | None = None  # analyse this `study export` directory instead of the database
    sources: tuple[str, ...] = ("participant",)  # whose answers count
    model_repo: Path | None = None  # answer the trials with this model repository (embedded service)
    service: str | None = None  # or through a running service's Match (HOST:PORT)


@dataclass(frozen=True)
class StudyAnalyzeResult:
    out: Path
    report: dict  # report.json's content: table1, anova, excluded, sources, left_out, machine, ...
    note: str | None = None  # said before the results (an export made under another study.toml)

    def summary(self) -> str:
        lines = [self.note] if self.note else []
        for e, r in self.report["table1"].items():
            machine = self.report["machine"].get(e)
            extra = f"; model {machine['accuracy']:.1f}% on the same {machine['trials']} trials" if machine else ""
            lines.append(f"experiment {label(int(e))}: {r['mean']:.1f}% ± {r['sd']:.1f} (n = {r['n']}){extra}")
        lines.append(f"excluded: {self.report['excluded'] or 'none'}{_left_out(self.report)}; "
                     f"report: {self.out / 'report.md'}")
        return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="the report directory")
    p.add_argument("--database", help="default STUDY_DIR's SQLite")
    p.add_argument("--export", type=Path, help="analyse this `study export` directory instead of the database")
    p.add_argument("--sources", nargs="+", choices=SOURCES, default=StudyAnalyzeOptions.sources,
                   help="whose answers count: real participants (default), pilots (the preview link), simulated")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model-repo", type=Path, help="answer the trials with this model repository (embedded service)")
    g.add_argument("--service", help="answer the trials through a running service's Match (HOST:PORT)")


def analyze(study: Study, store: Store, out: Path, model_repo: Path | None = None, service: str | None = None,
            sources: tuple[str, ...] = ("participant",)) -> dict:
    data = collect(study, store, sources)
    if not data["included"]:
        raise UsageError(f"no finished, included matching participant of source {', '.join(sources)} yet: nothing "
                         f"to analyse{_left_out(data)}")
    out.mkdir(parents=True, exist_ok=True)
    t1 = table1(data["included"])
    aov = anova(data["included"])
    hard = difficulty(data["included"])
    machine = None
    if model_repo or service:
        machine = machine_table(data["included"], machine_answers(study, data["included"], model_repo, service))
    needed = {e: participants_needed(r["sd"]) for e, r in t1.items() if r["sd"] == r["sd"] and r["sd"] > 0}
    figs = figures(out, t1, machine, hard)
    (out / "report.md").write_text(report(study, data, t1, aov, hard, machine, needed, figs), encoding="utf-8")
    result = {"table1": {str(e): r for e, r in t1.items()}, "anova": aov, "excluded": data["excluded"],
              "sources": data["sources"], "left_out": data["left_out"],
              "unfinished": data["unfinished"], "machine": {str(e): r for e, r in (machine or {}).items()},
              "difficulty": hard, "participants_needed": {str(e): n for e, n in needed.items()}}
    (out / "report.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def _held_out(data: dict) -> str:
    """The matchers of the sources not counted, by source ("3 pilot matchers, ..."); empty if none."""
    return ", ".join(f"{n} {source} matchers" for source, n in sorted(data["left_out"].items()))


def _left_out(data: dict) -> str:
    """What other sources held, and how to include them; empty when nothing was left out."""
    return f" (left out: {_held_out(data)}; --sources to include them)" if data["left_out"] else ""


def study_analyze(opts: StudyAnalyzeOptions) -> StudyAnalyzeResult:
    """`study analyze`: `analyze` on the study's database, or on its export (`opts.export`)."""
    sources, note = tuple(opts.sources), None
    if opts.export is not None:
        from facevoice.study.config import load_study
        from facevoice.study.export import ExportReader

        reader = ExportReader(opts.export)
        study = load_study(opts.study)
        if reader.manifest.study_toml_sha256 != study.digest:
            note = f"note: {opts.export} was exported under another study.toml than {opts.study}'s present one"
        report = analyze(study, reader, opts.out, opts.model_repo, opts.service, sources)
    else:
        with opened(opts.study, opts.database) as (study, store):
            report = analyze(study, store, opts.out, opts.model_repo, opts.service, sources)
    return StudyAnalyzeResult(opts.out, report, note)


def run(args: argparse.Namespace) -> int:
    print(study_analyze(options(StudyAnalyzeOptions, args)).summary())
    return 0
