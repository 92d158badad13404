"""The oracle: 1-of-2 matching with the generator's own parameters under the true joint model.

It sees the face-side and voice-side parameters (never the media) and picks the candidate with
the higher posterior under `PopulationModel`. No model that sees only media can beat it on
average, so it is the ceiling next to chance in docs/corpus.md and docs/results.md.

Trials follow Kim et al. 2018 sec. 3 / Table 3: an anchor from one modality, the true match and
one impostor from the other; the impostor may be constrained to share gender (G), appearance
group (E, the ethnicity analogue), both (G/E), or gender, group, first language and age group
(G/E/F/A).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from facevoice.service.corpus import CorpusInfo, read_identities
from facevoice.training.corpus.people import (
    ENGLISH_ACCENTS,
    FEMALE_VARIANTS,
    GENDERS,
    MALE_VARIANTS,
    FaceParams,
    Person,
    PopulationModel,
    VoiceParams,
    person_from_row,
    population_model_from_dict,
    variant_bins,
)
from facevoice.training.metrics import recall_at_k

CONTROLS: dict[str, tuple[str, ...]] = {
    "-": (),
    "G": ("gender",),
    "E": ("appearance_group",),
    "G/E": ("gender", "appearance_group"),
    "G/E/F/A": ("gender", "appearance_group", "first_language", "age_group"),
}
DIRECTIONS = ("v2f", "f2v")


def _lognorm(x, mean, sd):
    """log N(x; mean, sd), elementwise (scipy's logpdf is 10x slower on small arrays)."""
    z = (np.asarray(x) - mean) / sd
    return -0.5 * z * z - np.log(sd) - 0.5 * np.log(2 * np.pi)


def logsumexp(a) -> float:
    """log(sum(exp(a))) over all elements, stable; -inf for all -inf (scipy's is slow here)."""
    a = np.asarray(a, dtype=float)
    top = a.max()
    if not np.isfinite(top):
        return float(top)
    return float(top + np.log(np.exp(a - top).sum()))


def _ages(model: PopulationModel) -> np.ndarray:
    return np.arange(model.age_min, model.age_max + 1, dtype=float)


def _log_accent(model: PopulationModel, accent: str, group_index: int) -> np.ndarray:
    """log P(L, accent | group) for L = (native, non-native)."""
    grp = model.groups[group_index]
    p_nat = (1 - grp.p_non_native) * (
        model.accent_probs(grp)[ENGLISH_ACCENTS.index(accent)] if accent in ENGLISH_ACCENTS else 0)
    p_non = grp.p_non_native * (
        1 / len(grp.foreign_voices) if accent in grp.foreign_voices else 0)
    with np.errstate(divide="ignore"):
        return np.log([p_nat, p_non])


def _log_speed(model: PopulationModel, speed: float, ages: np.ndarray) -> np.ndarray:
    """log p(speed | age, L) as [ages, 2]."""
    mean = model.speed_base + model.speed_age_slope * (ages - 45)
    means = mean[:, None] + np.array([0.0, model.speed_non_native])[None, :]
    return _lognorm(speed, means, model.speed_sd)


def _log_variant(model: PopulationModel, v: VoiceParams, nose_width: float | None) -> float:
    """log P(variant | nose width); the marginal 1/n when nose_width is None."""
    names = MALE_VARIANTS if v.gender == "male" else FEMALE_VARIANTS
    if nose_width is None:
        return -np.log(len(names))
    r = model.nasal_face_r * model.nasal_voice_r
    edges = np.concatenate([[-np.inf], variant_bins(len(names)), [np.inf]])
    k = names.index(v.variant)
    mu, sd = r * nose_width, np.sqrt(1 - r * r)
    return float(np.log(ndtr((edges[k + 1] - mu) / sd) - ndtr((edges[k] - mu) / sd)))


def _log_pitch(model: PopulationModel, v: VoiceParams, ages: np.ndarray,
               face_width: float | None) -> np.ndarray:
    """log p(pitch | age, face width) over ages; marginal over z_size when face_width is None."""
    g = GENDERS.index(v.gender)
    mean = model.pitch_base[g] + model.pitch_age_slope[g] * (ages - 45)
    r = 0.0 if face_width is None else model.size_face_r * model.size_voice_r
    fw = 0.0 if face_width is None else face_width
    return _lognorm(v.pitch, mean - model.pitch_sd * r * fw, model.pitch_sd * np.sqrt(1 - r * r))


def log_voice_given_face(model: PopulationModel, v: VoiceParams, f: FaceParams) -> float:
    """log p(voice params | face params) under the joint model."""
    if v.gender != f.gender:
        return -np.inf
    ages = _ages(model)
    log_age = _lognorm(f.face_age, ages, model.face_age_sd)
    log_age = log_age - logsumexp(log_age)
    gi = [g.name for g in model.groups].index(f.appearance_group)
    joint = (log_age[:, None] + _log_pitch(model, v, ages, f.face_width)[:, None]
             + _log_speed(model, v.speed, ages) + _log_accent(model, v.accent, gi)[None, :])
    return float(logsumexp(joint) + _log_variant(model, v, f.nose_width))


def log_voice_marginal(model: PopulationModel, v: VoiceParams) -> float:
    """log p(voice params) given its gender, marginal over everything else."""
    ages = _ages(model)
    log_age = np.full(len(ages), -np.log(len(ages)))
    prev = np.array([g.prevalence for g in model.groups])
    log_group = np.log(prev / prev.sum())
    per_group = [logsumexp(_log_accent(model, v.accent, i)[None, :] + _log_speed(model, v.speed, ages)
                           + (log_age + _log_pitch(model, v, ages, None))[:, None]) + log_group[i]
                 for i in range(len(model.groups))]
    return float(logsumexp(per_group) + _log_variant(model, v, None))


@dataclass
class Trials:
    """1-of-2 trials as identity indices: anchor (= true match) and impostor."""

    anchor: np.ndarray
    impostor: np.ndarray


def sample_trials(attrs: list[dict[str, str]], control: str, n: int,
                  rng: np.random.Generator) -> Trials:
    """n trials whose impostor shares the control's attributes with the anchor."""
    keys = CONTROLS[control]
    cohort: dict[tuple, list[int]] = {}
    for i, a in enumerate(attrs):
        cohort.setdefault(tuple(a[k] for k in keys), []).append(i)
    anchors = [i for i, a in enumerate(attrs) if len(cohort[tuple(a[k] for k in keys)]) > 1]
    if not anchors:
        raise ValueError(f"no two identities share {control!r}: cannot make trials")
    anchor = rng.choice(anchors, size=n)
    impostor = np.empty(n, dtype=int)
    for t, a in enumerate(anchor):
        peers = cohort[tuple(attrs[a][k] for k in keys)]
        j = int(rng.integers(len(peers) - 1))
        impostor[t] = peers[j] if peers[j] != a else peers[-1]
    return Trials(anchor, impostor)


def shared_attrs(people: list[Person]) -> list[dict[str, str]]:
    return [{k: getattr(p.shared, k) for k in CONTROLS["G/E/F/A"]} for p in people]


def oracle_accuracy(model: PopulationModel, people: list[Person], direction: str, control: str,
                    n_trials: int, seed: int = 0) -> float:
    """Fraction of 1-of-2 trials the oracle gets right (ties count one half)."""
    trials = sample_trials(shared_attrs(people), control, n_trials, np.random.default_rng(seed))
    cache: dict[tuple[int, int], float] = {}

    def score(voice: int, face: int) -> float:
        if (voice, face) not in cache:
            cache[(voice, face)] = log_voice_given_face(model, people[voice].voice, people[face].face)
        return cache[(voice, face)]

    marginal = {}
    right = 0.0
    for a, b in zip(trials.anchor, trials.impostor, strict=True):
        if direction == "v2f":
            true, false = score(a, a), score(a, b)
        else:
            for i in (a, b):
                if i not in marginal:
                    marginal[i] = log_voice_marginal(model, people[i].voice)
            true, false = score(a, a) - marginal[a], score(b, a) - marginal[b]
        right += 1.0 if true > false else 0.5 if true == false else 0.0
    return right / len(trials.anchor)


def oracle_table(model: PopulationModel, people: list[Person], n_trials: int = 4000,
                 seed: int = 0) -> dict[str, dict[str, float | None]]:
    """Oracle accuracy for every direction x control, as in Kim et al. Table 3; None where no
    two identities share the control's attributes."""
    table: dict[str, dict[str, float | None]] = {}
    for d in DIRECTIONS:
        table[d] = {}
        for c in CONTROLS:
            try:
                table[d][c] = oracle_accuracy(model, people, d, c, n_trials, seed)
            except ValueError:
                table[d][c] = None
    return table


def identity_scores(model: PopulationModel, people: list[Person], direction: str) -> np.ndarray:
    """[query, candidate] oracle scores over `people` in both roles, higher = more likely the match.

    V->F: log p(v_q | f_c); F->V: log p(v_c | f_q) - log p(v_c), the posterior ratio that clip c's
    speaker has face q. Ranking the candidates by it is Bayes-optimal for recall@K."""
    n = len(people)
    s = np.array([[log_voice_given_face(model, people[q].voice, people[c].face) if direction == "v2f"
                   else log_voice_given_face(model, people[c].voice, people[q].face)
                   for c in range(n)] for q in range(n)])
    if direction == "f2v":
        s = s - np.array([log_voice_marginal(model, p.voice) for p in people])[None, :]
    return s


def oracle_recall_at_k(scores: np.ndarray, query_identity: np.ndarray, gallery_identity: np.ndarray,
                       ks: tuple[int, ...]) -> dict[int, float]:
    """Recall@K of the oracle on the same queries and gallery as a model (identity indices into
    the rows and columns of `identity_scores`): the ceiling next to `random_recall_at_k`. Every
    photo of a person has the same parameters, so a person's photos tie and stay together; ties
    between people (gender mismatch, -inf) are always below the true match."""
    q, g = np.asarray(query_identity), np.asarray(gallery_identity)
    return recall_at_k(-scores[np.ix_(q, g)], q, g, ks)


def corpus_people(corpus: Path) -> tuple[PopulationModel, dict[str, Person]] | None:
    """The generator's model and people of a synthetic corpus (None for any other corpus)."""
    info = CorpusInfo.find(corpus)
    if info is None or info.population_model is None:
        return None
    people = {row["identity"]: person_from_row(row) for row in read_identities(Path(corpus))}
    return population_model_from_dict(info.population_model), people


def face_render(corpus: Path) -> int:
    """The face painter's version a synthetic corpus was drawn with (1 for corpora made before
    corpus.json recorded it; training.corpus.faces.FACE_RENDER)."""
    info = CorpusInfo.find(corpus)
    return 1 if info is None else info.face_render


def split_oracle(corpus: Path, identities: list[str], directions=DIRECTIONS) -> dict[str, np.ndarray]:
    """`identity_scores` per direction over these identities of a synthetic corpus; {} for any
    other corpus (the reports then show no oracle)."""
    generator = corpus_people(corpus)
    if generator is None:
        return {}
    model, people = generator
    chosen = [people[i] for i in identities]
    return {d: identity_scores(model, chosen, d) for d in directions}
