"""`facevoice demo`: the main job on the embedded default (no Triton, Redis or GPU needed).

Today it builds the demo corpus and prints its summary; each capability adds its stage here
(train, export, index, query).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.corpus.synth import SynthConfig, build_corpus, format_summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo"), help="working directory")
    p.add_argument("--identities", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    corpus = args.out / "corpus"
    summary = build_corpus(corpus, SynthConfig(identities=args.identities, seed=args.seed),
                           force=True)
    print(format_summary(summary))
    return 0
