"""The corpus commands' summaries: what every corpus command prints of the corpus it wrote. The
format itself (manifest.csv, identities.csv) is defined once, in facevoice.service.corpus."""

from __future__ import annotations

from collections import Counter

from facevoice.service.corpus import Item


def corpus_counts(items: list[Item], split_of: dict[str, str], splits: list[str],
                  modalities: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Identities per split and items per modality, in the orders given."""
    per_split, per_modality = Counter(split_of.values()), Counter(i.modality for i in items)
    return {"identities": {s: per_split[s] for s in splits},
            "items": {m: per_modality[m] for m in modalities}}


def count_lines(counts: dict[str, dict[str, int]]) -> list[str]:
    """The two summary lines every corpus command prints."""
    return ["identities: " + ", ".join(f"{k} {v}" for k, v in counts["identities"].items()),
            "items:      " + ", ".join(f"{k} {v}" for k, v in counts["items"].items())]
