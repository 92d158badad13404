"""The media oracle: the parameter oracle's posterior, fed what the media show instead of the
generator's parameters.

`training.corpus.oracle` scores a (voice, face) pair with the true parameters. A model sees only
pixels and samples, so its ceiling is lower by whatever the media blur. Here each parameter is
replaced by a read-out of one item (a face image, a voice clip) with its measured error:

- continuous read-outs (face width, nose width, apparent age; pitch, speaking rate) follow the
  classical error model `read = true + e`, e ~ N(0, sd^2), and the joint model's Gaussians are
  widened by it in closed form (a standard-normal score seen with error has posterior mean
  read / (1 + sd^2) and variance sd^2 / (1 + sd^2));
- categorical read-outs (gender, appearance group, accent, variant) carry a likelihood over the
  true class, a row of the read-out's confusion matrix measured on training people.

With every sd 0 and every likelihood one-hot, `pair_scores` is exactly
`oracle.log_voice_given_face` and `voice_marginals` is `oracle.log_voice_marginal`
(tests/test_media_ceiling.py): the media oracle is the parameter oracle, seeing less.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from facevoice.training.corpus.oracle import _lognorm
from facevoice.training.corpus.people import (
    ENGLISH_ACCENTS,
    FEMALE_VARIANTS,
    GENDERS,
    MALE_VARIANTS,
    Person,
    PopulationModel,
    variant_bins,
)

VARIANTS = max(len(MALE_VARIANTS), len(FEMALE_VARIANTS))
# far below any real pair's score, finite so that arithmetic on it stays defined
MISMATCH = -1e6


def all_accents(model: PopulationModel) -> tuple[str, ...]:
    """Every accent a voice of this model can have: the English ones, then each group's voices."""
    foreign = [v for g in model.groups for v in g.foreign_voices if v not in ENGLISH_ACCENTS]
    return ENGLISH_ACCENTS + tuple(dict.fromkeys(foreign))


def accent_table(model: PopulationModel) -> np.ndarray:
    """P(accent, first language | group) as [groups, accents, 2] (L = native, non-native)."""
    accents = all_accents(model)
    t = np.zeros((len(model.groups), len(accents), 2))
    for gi, grp in enumerate(model.groups):
        t[gi, :len(ENGLISH_ACCENTS), 0] = (1 - grp.p_non_native) * model.accent_probs(grp)
        for v in grp.foreign_voices:
            t[gi, accents.index(v), 1] += grp.p_non_native / len(grp.foreign_voices)
    return t


def variant_names(gender: int) -> tuple[str, ...]:
    return MALE_VARIANTS if GENDERS[gender] == "male" else FEMALE_VARIANTS


@dataclass
class FaceReadout:
    """Per face item: read gender (GENDERS index), P(group | image) [N, groups], and the
    continuous read-outs with their error sd (0: exact)."""

    gender: np.ndarray
    group: np.ndarray
    width: np.ndarray
    nose: np.ndarray
    age: np.ndarray
    width_sd: float = 0.0
    nose_sd: float = 0.0
    age_sd: float = 0.0
    gender_error: float = 0.0  # P(read gender is wrong)


@dataclass
class VoiceReadout:
    """Per voice item: read gender, P(read accent | accent a) [N, accents], P(read variant |
    variant k) [N, VARIANTS] (k over the read gender's variants), and pitch and rate with error."""

    gender: np.ndarray
    accent: np.ndarray
    variant: np.ndarray
    pitch: np.ndarray
    speed: np.ndarray
    pitch_sd: float = 0.0
    speed_sd: float = 0.0
    gender_error: float = 0.0


def exact_readouts(model: PopulationModel, people: list[Person]) -> tuple[FaceReadout, VoiceReadout]:
    """The parameters themselves as read-outs with no error (one item per person)."""
    groups = [g.name for g in model.groups]
    accents = all_accents(model)
    gender = np.array([GENDERS.index(p.face.gender) for p in people])
    face = FaceReadout(gender, np.eye(len(groups))[[groups.index(p.face.appearance_group) for p in people]],
                       np.array([p.face.face_width for p in people]), np.array([p.face.nose_width for p in people]),
                       np.array([p.face.face_age for p in people]))
    variant = np.zeros((len(people), VARIANTS))
    for i, p in enumerate(people):
        variant[i, variant_names(gender[i]).index(p.voice.variant)] = 1.0
    voice = VoiceReadout(np.array([GENDERS.index(p.voice.gender) for p in people]),
                         np.eye(len(accents))[[accents.index(p.voice.accent) for p in people]], variant,
                         np.array([p.voice.pitch for p in people]), np.array([p.voice.speed for p in people]))
    return face, voice


def _shrunk(read: np.ndarray, sd: float) -> tuple[np.ndarray, float]:
    """Posterior mean and variance of a standard-normal score seen as read = score + N(0, sd^2)."""
    return read / (1 + sd * sd), sd * sd / (1 + sd * sd)


def _scores(model: PopulationModel, v: VoiceReadout, vi: np.ndarray, log_age: np.ndarray,
            width_mean: np.ndarray, width_var, nose_mean: np.ndarray, nose_var, group: np.ndarray) -> np.ndarray:
    """log p(voice read-outs | face evidence) for voice rows vi, each with its face evidence:
    log_age [P, ages] (normalised), posterior mean/var of face width and nose width, P(group) [P, G]."""
    ages = np.arange(model.age_min, model.age_max + 1, dtype=float)
    g = v.gender[vi]
    base = np.asarray(model.pitch_base)[g][:, None] + np.asarray(model.pitch_age_slope)[g][:, None] * (ages - 45)
    size_r = model.size_face_r * model.size_voice_r
    psd = model.pitch_sd
    pitch_sd = np.sqrt(psd * psd * (1 - size_r ** 2 + size_r ** 2 * np.asarray(width_var)) + v.pitch_sd ** 2)
    pitch = _lognorm(v.pitch[vi][:, None], base - psd * size_r * np.asarray(width_mean)[:, None],
                     np.reshape(pitch_sd, (-1, 1)))
    speed_mean = model.speed_base + model.speed_age_slope * (ages - 45)
    speed = _lognorm(v.speed[vi][:, None, None],
                     speed_mean[None, :, None] + np.array([0.0, model.speed_non_native])[None, None, :],
                     np.sqrt(model.speed_sd ** 2 + v.speed_sd ** 2))
    with np.errstate(divide="ignore"):
        # P(read accent, L | face) = sum_g P(g | face) sum_a P(read | a) P(a, L | g)
        accent = np.log(np.einsum("pg,pa,gal->pl", group, v.accent[vi], accent_table(model)))
    joint = log_age[:, :, None] + pitch[:, :, None] + speed + accent[:, None, :]
    top = joint.max(axis=(1, 2), keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        total = np.log(np.exp(joint - top).sum(axis=(1, 2))) + top[:, 0, 0]
    # the variant given the nose: the score's bins, seen through the read-out's confusion
    nasal_r = model.nasal_face_r * model.nasal_voice_r
    mu, sd = nasal_r * np.asarray(nose_mean), np.sqrt(1 - nasal_r ** 2 + nasal_r ** 2 * np.asarray(nose_var))
    lik = np.zeros(len(vi))
    for gender in (0, 1):
        rows = g == gender
        if not rows.any():
            continue
        n = len(variant_names(gender))
        edges = np.concatenate([[-np.inf], variant_bins(n), [np.inf]])
        sd_g = np.reshape(np.broadcast_to(sd, mu.shape)[rows], (-1, 1))
        p = ndtr((edges[None, 1:] - mu[rows, None]) / sd_g) - ndtr((edges[None, :-1] - mu[rows, None]) / sd_g)
        lik[rows] = (p * v.variant[vi[rows], :n]).sum(axis=1)
    with np.errstate(divide="ignore"):
        return total + np.log(lik)


def pair_scores(model: PopulationModel, face: FaceReadout, voice: VoiceReadout, vi: np.ndarray,
                fi: np.ndarray) -> np.ndarray:
    """log p(voice vi's read-outs | face fi's read-outs), elementwise over the pairs."""
    vi, fi = np.asarray(vi), np.asarray(fi)
    ages = np.arange(model.age_min, model.age_max + 1, dtype=float)
    log_age = _lognorm(face.age[fi][:, None], ages[None, :], np.sqrt(model.face_age_sd ** 2 + face.age_sd ** 2))
    log_age = log_age - np.log(np.exp(log_age - log_age.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - log_age.max(1, keepdims=True)
    wm, wv = _shrunk(face.width[fi], face.width_sd)
    nm, nv = _shrunk(face.nose[fi], face.nose_sd)
    s = _scores(model, voice, vi, log_age, wm, wv, nm, nv, face.group[fi])
    same = voice.gender[vi] == face.gender[fi]
    error = face.gender_error + voice.gender_error
    if error <= 0:
        return np.where(same, s, MISMATCH)
    return s + np.where(same, np.log1p(-min(error, 0.5)), np.log(min(error, 0.5)))


def voice_marginals(model: PopulationModel, voice: VoiceReadout) -> np.ndarray:
    """log p(voice read-outs) given the read gender: the pair score against a face that shows
    nothing (every age alike, width and nose unknown, groups at their prevalence)."""
    n = len(voice.pitch)
    ages = model.age_max - model.age_min + 1
    prev = np.array([g.prevalence for g in model.groups])
    return _scores(model, voice, np.arange(n), np.full((n, ages), -np.log(ages)), np.zeros(n), 1.0,
                   np.zeros(n), 1.0, np.broadcast_to(prev / prev.sum(), (n, len(prev))))


def score_matrix(model: PopulationModel, face: FaceReadout, voice: VoiceReadout, direction: str,
                 chunk: int = 64) -> np.ndarray:
    """[voices, faces] scores, higher = more likely the same person: log p(v | f) for V->F, and
    for F->V the posterior ratio log p(v | f) - log p(v) (as oracle.identity_scores)."""
    nv, nf = len(voice.pitch), len(face.width)
    out = np.empty((nv, nf))
    for start in range(0, nv, chunk):
        rows = np.arange(start, min(nv, start + chunk))
        vi, fi = np.repeat(rows, nf), np.tile(np.arange(nf), len(rows))
        out[rows] = pair_scores(model, face, voice, vi, fi).reshape(len(rows), nf)
    if direction == "f2v":
        out -= voice_marginals(model, voice)[:, None]
    return out
