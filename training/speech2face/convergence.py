"""Oh et al. Fig. 8, training convergence: the loss curves of several `train s2f` runs on one plot
(with and without batch norm, `voice.batch_norm`; 3 s and 6 s inputs, `voice.seconds`).

    python -m facevoice.training.speech2face.convergence --run "6 s, BN=runs/s2f" \\
        --run "6 s, no BN=runs/s2f-nobn" --out fig8.png
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from facevoice.cli import run_script
from facevoice.service.errors import UsageError
from facevoice.training.association.plots import _save, plt
from facevoice.training.runs import read_metrics

CURVES = (("loss", "training loss (eq. (1))"), ("val_loss", "validation loss"))


def convergence_figure(runs: dict[str, Path], path: Path) -> Path:
    """One panel per curve in CURVES, one line per run (label -> run directory)."""
    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.5), squeeze=False)
    for label, run in runs.items():
        rows = read_metrics(Path(run) / "metrics.csv")
        for ax, (key, _) in zip(axes[0], CURVES, strict=True):
            pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=label)
    for ax, (_, title) in zip(axes[0], CURVES, strict=True):
        ax.set(xlabel="iteration", title=title)
        ax.legend(fontsize=7)
    fig.suptitle("Speech2Face voice encoder convergence (Oh et al. Fig. 8)")
    return _save(fig, path)


@dataclass(frozen=True)
class ConvergenceResult:
    figure: Path
    runs: dict[str, Path]  # label -> run directory

    def summary(self) -> str:
        return f"Fig. 8: {len(self.runs)} runs -> {self.figure}"


def convergence(runs: list[str], out: Path) -> ConvergenceResult:
    """Fig. 8 from `LABEL=RUN_DIR` specs (each RUN_DIR with a metrics.csv) -> the PNG `out`."""
    found = {}
    for spec in runs:
        label, sep, run = spec.partition("=")
        if not sep or not (Path(run) / "metrics.csv").exists():
            raise UsageError(f"--run {spec!r}: expected LABEL=RUN_DIR with a metrics.csv in RUN_DIR")
        found[label] = Path(run)
    return ConvergenceResult(convergence_figure(found, out), found)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, metavar="LABEL=RUN_DIR")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = p.parse_args(argv)
    print(convergence(args.run, args.out).summary())
    return 0


if __name__ == "__main__":
    run_script(main, "python -m facevoice.training.speech2face.convergence")
