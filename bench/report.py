"""Write one benchmark's section of docs/benchmarks.md, leaving the other sections alone."""

from __future__ import annotations

import re
from pathlib import Path

from facevoice.release import machine  # noqa: F401  (the benches' machine line)

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = ("# Benchmarks\n\nEach section is written by the script it names; these machines are shared "
          "and noisy, so read the ratios against the baseline measured in the same run, not the "
          "absolute times.\n")


def write_section(name: str, body: str, doc: Path = DOC) -> Path:
    """Replaces (or appends) the section between `<!-- bench:NAME -->` markers of `doc`."""
    text = doc.read_text() if doc.exists() else HEADER
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = f"{begin}\n{body.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text(text)
    return doc


def sections_of(text: str) -> str:
    """Every `<!-- bench:NAME -->` section of a document, in order (what a script that rewrites the
    rest of the document keeps)."""
    return "\n\n".join(m.group(0) for m in re.finditer(r"<!-- bench:([\w-]+) -->.*?<!-- /bench:\1 -->", text, re.S))


def ratio_table(results: list[tuple[str, float]], unit: str, digits: int = 1) -> str:
    """A markdown table of (configuration, rate) rows with each rate's ratio to the first row, the
    baseline measured in the same run."""
    base = results[0][1]
    return "\n".join([f"| configuration | {unit} | ratio to baseline |", "|---|---|---|",
                      *(f"| {name} | {r:.{digits}f} | {r / base:.{digits + 1}f} |" for name, r in results)])


def publish(name: str, body: str) -> None:
    """Print a benchmark's section and write it into docs/benchmarks.md."""
    print(body)
    print(f"written to {write_section(name, body)}")


def add_demo_arguments(p) -> None:
    """The served release a service bench runs on: `make demo`'s models, indexes and corpus."""
    from pathlib import Path as P

    p.add_argument("--model-repo", type=P, default=P("models/demo"))
    p.add_argument("--index-root", type=P, default=P("demo/indexes"))
    p.add_argument("--corpus", type=P, default=P("demo/corpus"))
