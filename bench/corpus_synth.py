"""How long the demo corpus takes: 1 worker (the baseline) against 2, same identities, same run.

    python -m bench.corpus_synth --identities 300 [--smoke] [--doc PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.report import machine, parse, publish
from facevoice.cli import run_script
from facevoice.training.corpus.synth import SynthConfig, build_corpus


def timed(cfg: SynthConfig) -> float:
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        build_corpus(Path(d) / "c", cfg, progress=True)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--identities", type=int, default=300)
    p.add_argument("--oracle-trials", type=int, default=SynthConfig.oracle_trials, help="the default row's oracle")
    p.add_argument("--oracle-population", type=int, default=SynthConfig.oracle_population)
    args = parse(p, argv, smoke={"identities": 4, "oracle_trials": 100, "oracle_population": 200})
    base = SynthConfig(identities=args.identities, oracle_trials=0)
    t1 = timed(replace(base, workers=1))
    t2 = timed(replace(base, workers=2))
    full = timed(replace(base, workers=2, oracle_trials=args.oracle_trials, oracle_population=args.oracle_population))
    n = args.identities
    body = f"""## Demo corpus build (`facevoice corpus synth`)

Command: `python -m bench.corpus_synth --identities {n}` on {machine()}.
Each identity: 4 face images + 1 canonical face (128x128) and 4 voice clips (espeak-ng).

| configuration | wall time | per identity | ratio to baseline |
|---|---|---|---|
| 1 worker, no oracle (baseline) | {t1:.1f} s | {1000 * t1 / n:.0f} ms | 1.00 |
| 2 workers, no oracle | {t2:.1f} s | {1000 * t2 / n:.0f} ms | {t1 / t2:.2f}x faster |
| 2 workers + oracle (the default) | {full:.1f} s | {1000 * full / n:.0f} ms | {t1 / full:.2f}x |

Target (issue 2): 300 identities in under 3 minutes on this 2-core machine."""
    publish("corpus-synth", body, args)
    return 0


if __name__ == "__main__":
    run_script(main, "python -m bench.corpus_synth")
