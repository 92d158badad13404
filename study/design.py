"""The matching experiments' trials, as Kim et al. sec. 3.2 gives them.

- Stimuli: one face photo and one voice clip per person of the study corpus's chosen splits.
- Pairs: each person is paired with `partners` (8) others drawn at random within the
  experiment's demographic constraint (Exp. 1: same gender; 2: same gender and ethnicity; 3 and
  4: same gender, ethnicity, first language and age group). Pairs are fixed per study (seed), so
  every replica of the server builds the same ones.
- A participant gets 8 male and 8 female pairs drawn from their experiment's pairs; which of
  the two people is the voice (V->F) or the face (F->V) is drawn per trial, as is the order of the
  two options.
- Controls (4): two repeat a matching task exactly (consistency), two pair a man with a woman
  (correctness). All 20 are shuffled.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from facevoice.service.corpus import read_manifest
from facevoice.service.errors import UsageError
from facevoice.study.config import EXPERIMENTS, Study


@dataclass(frozen=True)
class Person:
    identity: str
    face: str  # paths inside the corpus
    voice: str
    attributes: dict[str, str]


@dataclass(frozen=True)
class Trial:
    """One task as shown: a query (a voice for V->F, a face for F->V) and two options of the
    other modality; `correct` is the option (0 or 1) of the query's own person."""

    index: int
    kind: str  # "match", "consistency" (repeat of `repeat_of`), "correctness"
    query: str  # identity
    options: tuple[str, str]
    correct: int
    repeat_of: int | None = None


def stimulus_people(study: Study) -> dict[str, Person]:
    """identity -> Person for every identity of the chosen splits with a face and a voice (its
    first of each, by item id), in identity order."""
    faces, voices, attrs = {}, {}, {}
    for item in sorted(read_manifest(study.corpus), key=lambda i: i.item_id):
        if item.split not in study.splits:
            continue
        if item.modality == "face":
            faces.setdefault(item.identity, item.path)
        elif item.modality == "voice":
            voices.setdefault(item.identity, item.path)
        attrs.setdefault(item.identity, item.attributes())
    people = {i: Person(i, faces[i], voices[i], attrs[i]) for i in sorted(faces) if i in voices}
    if len(people) < 4:
        raise UsageError(f"{study.corpus}: only {len(people)} people with a face and a voice in splits "
                         f"{list(study.splits)}; a study needs at least 4")
    return people


def constraint_key(study: Study, person: Person, letters: str) -> tuple[str, ...]:
    return tuple(person.attributes.get(study.constraints[c], "") for c in letters)


def experiment_pairs(study: Study, people: dict[str, Person], experiment: int) -> list[tuple[str, str]]:
    """Every (a, b) pair, a < b, of the experiment: each person with up to `partners` others of
    the same constraint group, drawn with the study's seed."""
    letters = EXPERIMENTS[experiment][1]
    rng = random.Random(f"{study.seed}-pairs-{experiment}")
    groups: dict[tuple, list[str]] = defaultdict(list)
    for p in people.values():
        groups[constraint_key(study, p, letters)].append(p.identity)
    pairs: set[tuple[str, str]] = set()
    for members in groups.values():
        for a in members:
            others = [b for b in members if b != a]
            for b in rng.sample(others, min(study.design.partners, len(others))):
                pairs.add((min(a, b), max(a, b)))
    return sorted(pairs)


def participant_trials(study: Study, people: dict[str, Person], pairs: list[tuple[str, str]],
                       seed: int) -> list[Trial]:
    """The participant's 16 matching tasks and 4 controls, shuffled (sec. 3.2)."""
    rng = random.Random(seed)
    d = study.design
    by_gender: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for a, b in pairs:
        by_gender[people[a].attributes.get("gender", "")].append((a, b))
    chosen = []
    for gender in ("male", "female"):
        pool = by_gender.get(gender, [])
        chosen += rng.sample(pool, min(d.pairs_per_gender, len(pool)))
    if not chosen:
        raise UsageError("the experiment has no pairs of men or of women to show")
    specs = []
    for a, b in chosen:
        query = rng.choice((a, b))
        options = [a, b]
        rng.shuffle(options)
        specs.append(("match", query, tuple(options), None))
    for k in rng.sample(range(len(specs)), min(d.consistency_controls, len(specs))):
        specs.append(("consistency", specs[k][1], specs[k][2], k))
    men = [p for p in people.values() if p.attributes.get("gender") == "male"]
    women = [p for p in people.values() if p.attributes.get("gender") == "female"]
    for _ in range(d.correctness_controls if men and women else 0):
        m, w = rng.choice(men).identity, rng.choice(women).identity
        options = [m, w]
        rng.shuffle(options)
        specs.append(("correctness", rng.choice(options), tuple(options), None))
    order = list(range(len(specs)))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    trials = []
    for new, old in enumerate(order):
        kind, query, options, repeat_of = specs[old]
        trials.append(Trial(new, kind, query, options, options.index(query),
                            position[repeat_of] if repeat_of is not None else None))
    return trials


def pool_summary(people: dict[str, Person], pairs: dict[int, list[tuple[str, str]]]) -> dict[int, dict[str, int]]:
    """Per experiment: how many pairs of men and of women it can show."""
    out = {}
    for e, its_pairs in pairs.items():
        counts = {"male": 0, "female": 0}
        for a, _ in its_pairs:
            g = people[a].attributes.get("gender", "")
            if g in counts:
                counts[g] += 1
        out[e] = counts
    return out
