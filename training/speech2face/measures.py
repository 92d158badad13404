"""The measures of `facevoice eval s2f` (evaluate.py), each on features and splits already
computed: Oh et al. 2019's Table 2 (feature similarity), Table 3 (retrieval), Fig. 4 (attribute
agreement, the age trend), Fig. 5 (geometry, on synthetic corpora) and Fig. 9 (consistency), with
our checks beside them: how reconstructions vary with the person, what the voice encoder hears of
the generator's voice parameters, the parameter readout, and the 1:2 cross-check."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from sklearn.linear_model import LogisticRegression, Ridge

from facevoice.service.media import FaceImage
from facevoice.service.media.image import normalise
from facevoice.training.association.trials import matching_trials
from facevoice.training.corpus.faces import FACE_RENDER, FaceNuisance, render_face
from facevoice.training.corpus.oracle import oracle_recall_at_k
from facevoice.training.corpus.people import AGE_GROUPS, Person, PopulationModel, ordered, sample_population
from facevoice.training.metrics import (
    cluster_bootstrap_correlation,
    cluster_bootstrap_interval,
    first_hit,
    one_per_identity_galleries,
    random_recall_at_k,
    recall_from_first_hit,
    wilson_interval,
)
from facevoice.training.speech2face.data import S2FSplit, to_rgb

KS = (1, 2, 5, 10)
ATTRS = ("gender", "age_group", "appearance_group")
AGE_YEARS = {g: 25.0 + 10 * k for k, g in enumerate(AGE_GROUPS)}  # a year for each of the paper's age bins
GEOMETRY = ("face_width", "face_height", "jaw", "nose_width", "nose_length", "eye_spacing", "eye_size",
            "mouth_width", "lip_thickness")



def feature_similarity(v_s: torch.Tensor, v_f: torch.Tensor, split: S2FSplit) -> dict:
    """Table 2: over every (clip, photo of the same person) pair, and over (clip, photo of someone
    else) pairs as the baseline; mean and standard deviation, as the paper reports them.

    The paper does not say how its L2 and L1 are normalised. Eq. (1) compares features divided by
    their L2 norm, so `l2_unit` / `l1_unit` use that; `l2` / `l1` are on the raw features. Its
    L2 of 0.18 at 45.75 degrees does not fit unit vectors (2 sin(45.75 / 2) = 0.78), so only the
    angle, which no scaling changes, compares with the paper directly."""
    same = split.voice.identity[:, None] == split.face.identity[None, :]
    unit_s, unit_f = torch.nn.functional.normalize(v_s, dim=1), torch.nn.functional.normalize(v_f, dim=1)
    angle = torch.rad2deg(torch.acos((unit_s @ unit_f.T).clamp(-1, 1))).numpy()
    measures = {"angle_deg": angle, "l2": torch.cdist(v_s, v_f).numpy(), "l1": torch.cdist(v_s, v_f, p=1).numpy(),
                "l2_unit": torch.cdist(unit_s, unit_f).numpy(), "l1_unit": torch.cdist(unit_s, unit_f, p=1).numpy()}
    return {name: {"same_person": float(m[same].mean()), "same_person_sd": float(m[same].std()),
                   "other_people": float(m[~same].mean())} for name, m in measures.items()}


def distances(q: torch.Tensor, g: torch.Tensor, metric: str) -> np.ndarray:
    if metric == "cosine":
        return (1 - torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).T).numpy()
    return torch.cdist(q, g, p=1 if metric == "l1" else 2).numpy()


def retrieval(v_s: torch.Tensor, v_f: torch.Tensor, split: S2FSplit, oracle: np.ndarray | None = None) -> dict:
    """Table 3: each clip's v_s queries test photos' v_f by L1, L2 and cosine distance.

    The paper's protocol (top level): "the chance of retrieving the true image of a speaker", one
    true image in "a database of 5,000 images", so random R@K = K / gallery (Table 3 prints its
    random row as 1.00 / 2.00 / 5.00 / 10.00 % for R@1/2/5/10, i.e. K / 100, not K / 5,000: see
    report.PAPER_RANDOM_PRINTED). Here a gallery holds one photo per test identity; the result is
    averaged over draws that together use every photo (`one_per_identity_galleries`).
    `all_photos` is the looser variant where every photo is in the gallery and any photo of the
    speaker is a hit. `oracle`, the V->F `identity_scores` over
    split.identities, adds the generator's Bayes-optimal ranking: the ceiling."""
    dist = {m: distances(v_s, v_f, m) for m in ("l1", "l2", "cosine")}
    qid, gid = split.voice.identity, split.face.identity

    def scores(rows: np.ndarray) -> tuple[dict, np.ndarray]:
        """Recall@K per metric on these gallery rows, and each query's cosine first-hit rank."""
        first = {m: first_hit(d[:, rows], qid, gid[rows]) for m, d in dist.items()}
        out = {m: recall_from_first_hit(f, KS) for m, f in first.items()}
        out["random"] = random_recall_at_k(gid[rows], qid, KS)
        if oracle is not None:
            out["oracle"] = oracle_recall_at_k(oracle, qid, gid[rows], KS)
        return out, first["cosine"]

    draws, firsts = zip(*(scores(rows) for rows in one_per_identity_galleries(gid)), strict=True)
    paper = {key: {k: float(np.mean([d[key][k] for d in draws])) for k in KS} for key in draws[0]}
    # 95% interval of cosine R@K, resampling whole speakers (their clips are not independent)
    ci = {k: cluster_bootstrap_interval((np.stack(firsts) < k).mean(0), qid) for k in KS}
    everything, _ = scores(np.arange(len(gid)))
    return {**paper, "cosine_ci": ci, "gallery": len(split.identities), "draws": len(draws),
            "all_photos": {**everything, "gallery": len(gid)}}


def segment_consistency(v_s: torch.Tensor, split: S2FSplit) -> dict:
    """Fig. 9, temporal and cross-video consistency, as numbers: the mean cosine between the
    predicted features of two clips of the same speaker from the same video, from different
    videos (where the manifest records videos; otherwise "any"), and of two different speakers."""
    unit = torch.nn.functional.normalize(v_s, dim=1)
    cos = (unit @ unit.T).numpy()
    ident = split.voice.identity
    video = split.voice.video if split.voice.video is not None else np.array([""] * len(ident))
    pair = ~np.eye(len(ident), dtype=bool)
    same = (ident[:, None] == ident[None, :]) & pair
    known = (video[:, None] != "") & (video[None, :] != "")
    groups = {"same_speaker_same_video": same & known & (video[:, None] == video[None, :]),
              "same_speaker_other_video": same & known & (video[:, None] != video[None, :]),
              "same_speaker_any": same, "different_speakers": (ident[:, None] != ident[None, :])}
    return {k: {"cosine": float(cos[m].mean()), "pairs": int(m.sum() // 2)} for k, m in groups.items() if m.any()}


VARIATION_ROWS = 400  # reconstructions compared pairwise (a seeded sample of them past this)


def reconstruction_variation(split: S2FSplit, pictures: torch.Tensor, features: torch.Tensor, modality: str,
                             seed: int = 0) -> dict:
    """Does a reconstruction follow the person? The mean distance between reconstructions of
    different people of the same gender over the mean distance between reconstructions of two
    rows (clips for S2F, photos for F2F) of the same person, in pixels (RMS) and in the face
    feature (cosine distance). A decoder that draws one face per gender scores near 1; one that
    draws each person's own face, well above it. Not a figure of Oh et al.: a check on the decoder."""
    ident = getattr(split, modality).identity
    rows = np.arange(len(ident))
    if len(rows) > VARIATION_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, VARIATION_ROWS, replace=False))
    ident = ident[rows]
    gender = np.array([split.attributes[i].get("gender", "") for i in ident])
    x = pictures[rows].reshape(len(rows), -1).double()
    sq = (x * x).sum(1)
    pixel = ((sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp(min=0) / x.shape[1]).sqrt().numpy()
    unit = torch.nn.functional.normalize(features[rows].double(), dim=1)
    feature = (1 - unit @ unit.T).numpy()
    pair = ~np.eye(len(rows), dtype=bool)
    same = (ident[:, None] == ident[None, :]) & pair
    others = (ident[:, None] != ident[None, :]) & (gender[:, None] == gender[None, :])
    if not same.any() or not others.any():
        return {}
    out = {"pairs": {"same_person": int(same.sum() // 2), "different_people_same_gender": int(others.sum() // 2)}}
    for name, d in (("pixel", pixel), ("feature", feature)):
        within, between = float(d[same].mean()), float(d[others].mean())
        out[name] = {"same_person": within, "different_people_same_gender": between,
                     "ratio": between / max(within, 1e-12)}
    return out


def _labels(split: S2FSplit, attr: str, rows_identity: np.ndarray) -> np.ndarray:
    return np.array([split.attributes[i].get(attr, "") for i in rows_identity])


def same_person_pairs(test: S2FSplit) -> tuple[np.ndarray, np.ndarray]:
    """(clip row, photo row) for every clip and every photo of the same person."""
    pairs = [(c, f) for c in range(len(test.voice.identity)) for f in test.items_of("face", test.voice.identity[c])]
    c, f = map(np.array, zip(*pairs, strict=True))
    return c, f


def attribute_agreement(train: S2FSplit, train_vf: torch.Tensor, test: S2FSplit, photo_vf: torch.Tensor,
                        s2f_vf: torch.Tensor) -> dict:
    """Fig. 4: a logistic classifier on face features, trained on training photos (our Face++),
    labels each test photo and the S2F reconstruction of each of the person's clips; the
    confusion matrix counts (photo class, reconstruction class) over same-person pairs."""
    out = {}
    c, f = same_person_pairs(test)
    for attr in ATTRS:
        y = _labels(train, attr, train.face.identity)
        if len(set(y)) < 2 or "" in set(y):
            continue
        clf = LogisticRegression(max_iter=2000, C=1.0).fit(train_vf.numpy(), y)
        classes = ordered(list(clf.classes_))
        photo = clf.predict(photo_vf.numpy())
        recon = clf.predict(s2f_vf.numpy())
        matrix = np.zeros((len(classes), len(classes)), dtype=int)
        for a, b in zip(photo[f], recon[c], strict=True):
            matrix[classes.index(a), classes.index(b)] += 1
        truth = _labels(test, attr, test.face.identity)
        out[attr] = {"classes": classes, "confusion": matrix.tolist(),
                     "agreement": float(np.trace(matrix) / matrix.sum()),
                     "photo_accuracy": float((photo == truth).mean()),
                     "s2f_accuracy": float((recon[c] == truth[f]).mean()),
                     "majority": float(max((truth == k).mean() for k in classes))}
    return out


def age_trend(train: S2FSplit, train_vf: torch.Tensor, test: S2FSplit, photo_vf: torch.Tensor,
              queries: dict[str, torch.Tensor], seed: int) -> dict | None:
    """Fig. 4's age trend as a number, which five-way agreement hides: a ridge regressor from v_f to
    age (each training photo's age group as a year, AGE_YEARS: our Face++ age estimate) reads an
    age off every test photo and off every clip's query feature (`queries`: name -> one v_f-space
    feature per clip, e.g. the S2F reconstruction's). Per query: Pearson r between the age read off
    the clip's query and off each photo of the same person, its 95% interval resampling speakers
    (`ci95`; scipy's `p` treats the pairs as independent), r over random pairs (the baseline), and
    the mean age read. None when the corpus has no age groups."""
    groups = [a.get("age_group", "") for a in train.attributes]
    if not set(groups) <= set(AGE_GROUPS) or len(set(groups)) < 2:
        return None
    reg = Ridge(alpha=10.0).fit(train_vf.numpy(), np.array([AGE_YEARS[g] for g in groups])[train.face.identity])
    photo_age = reg.predict(photo_vf.numpy())
    c, f = same_person_pairs(test)
    shuffled = np.random.default_rng(seed).permutation(f)
    truth = np.array([AGE_YEARS.get(test.attributes[i].get("age_group", ""), np.nan) for i in test.face.identity])
    known = ~np.isnan(truth)
    out = {"regressor_r_on_photos": float(stats.pearsonr(photo_age[known], truth[known])[0]) if known.sum() > 2
           else None, "photo_mean_years": float(photo_age.mean())}
    for name, q in queries.items():
        age = reg.predict(q.numpy())
        r, p = stats.pearsonr(age[c], photo_age[f])
        out[name] = {"r": float(r), "p": float(p), "random_r": float(stats.pearsonr(age[c], photo_age[shuffled])[0]),
                     "ci95": list(cluster_bootstrap_correlation(age[c], photo_age[f], test.voice.identity[c])),
                     "mean_years": float(age.mean())}
    return out


HEARD = ("pitch", "speed", "pitch_range", "variant_score")  # VoiceParams the voice encoder could recover


def voice_hearing(people: dict[str, Person], train: S2FSplit, train_vs: torch.Tensor, test: S2FSplit,
                  test_vs: torch.Tensor) -> dict:
    """What the voice encoder hears, on synthetic corpora: a ridge regressor from v_s to each of the
    generator's continuous voice parameters and the speaker's age, fitted on training clips; Pearson
    r between its reading and the truth on test clips (new speakers) and on the training clips. A
    gap between the two is the encoder memorising its training speakers."""
    def truth(split: S2FSplit, name: str) -> np.ndarray:
        who = [people[split.identities[i]] for i in split.voice.identity]
        return np.array([p.shared.age if name == "age" else getattr(p.voice, name) for p in who], dtype=float)

    out = {}
    for name in (*HEARD, "age"):
        y = truth(train, name)
        reg = Ridge(alpha=10.0).fit(train_vs.numpy(), y)
        out[name] = {"test_r": float(stats.pearsonr(reg.predict(test_vs.numpy()), truth(test, name))[0]),
                     "train_r": float(stats.pearsonr(reg.predict(train_vs.numpy()), y)[0])}
    return out


AUDIBLE = ("gender", "accent", "variant", "pitch", "pitch_range", "speed")  # VoiceParams espeak-ng hears


def voice_parameters(people: dict[str, Person], train: S2FSplit, test: S2FSplit) -> tuple[np.ndarray, np.ndarray]:
    """The generator's audible voice parameters (one-hot accent and variant, pitch, range, speed) of
    each training and test identity, standardised by the training identities."""
    voices = [people[i].voice for i in (*train.identities, *test.identities)]
    levels = {k: sorted({getattr(v, k) for v in voices}) for k in AUDIBLE if isinstance(getattr(voices[0], k), str)}

    def x(identities: list[str]) -> np.ndarray:
        rows = []
        for name in identities:
            v = people[name].voice
            rows.append([float(getattr(v, k) == level) for k in levels for level in levels[k]]
                        + [float(getattr(v, k)) for k in AUDIBLE if k not in levels])
        return np.array(rows)

    x_train, x_test = x(train.identities), x(test.identities)
    mean, sd = x_train.mean(0), x_train.std(0) + 1e-9
    return (x_train - mean) / sd, (x_test - mean) / sd


def voice_parameter_readout(people: dict[str, Person], train: S2FSplit, train_vf: torch.Tensor,
                            test: S2FSplit) -> torch.Tensor:
    """A diagnostic for synthetic corpora: ridge regression from the generator's audible voice
    parameters (`voice_parameters`) to v_f, fitted on training photos, then one prediction per test
    clip. It is what a voice encoder that heard those parameters perfectly and mapped them linearly
    would give: retrieval with it separates what the face feature space allows from what the voice
    encoder misses. `people`: the generator's people by identity (`corpus_people`)."""
    x_train, x_test = voice_parameters(people, train, test)
    reg = Ridge(alpha=10.0).fit(x_train[train.face.identity], train_vf.numpy())
    return torch.from_numpy(reg.predict(x_test)[test.voice.identity]).float()


def geometry(generator: tuple[PopulationModel, dict[str, Person]] | None, test: S2FSplit, f2f: np.ndarray,
             s2f: np.ndarray, frontend: FaceImage, seed: int, renders: int = 1000, version: int = FACE_RENDER
             ) -> dict | None:
    """Fig. 5 on a synthetic corpus (`generator`: `corpus_people`; None elsewhere gives None).

    The paper measures face geometry with landmarks on the reconstructions. Our measuring tool is a
    ridge regressor from pixels to the generator's geometry scores (GEOMETRY), fitted on canonical
    faces of `renders` new people drawn from the corpus's population and drawn by the generator:
    a landmark detector trained where the truth is known. It reads every parameter off each test
    clip's S2F reconstruction and off the F2F reconstruction of a photo of the same person. Per
    parameter: Pearson r between the two with p and its 95% interval resampling speakers, r for
    random pairs (the baseline), and the tool's r
    against the truth on held-out renders (can it measure at all?), on the F2F reconstructions (what
    the face feature and decoder keep) and on the S2F ones."""
    if generator is None:
        return None
    model, people = generator
    drawn = sample_population(renders, seed=seed + 1_000_003, model=model).people
    side = f2f.shape[-1]
    pixels = np.stack([normalise(render_face(p.face, FaceNuisance.canonical(), 2 * side, version=version),
                                 frontend) for p in drawn])
    pixels = to_rgb(torch.from_numpy(pixels), frontend).numpy().reshape(renders, -1)
    truth_drawn = np.array([[getattr(p.face, k) for k in GEOMETRY] for p in drawn])
    fit = int(0.8 * renders)
    reg = Ridge(alpha=1.0).fit(pixels[:fit], truth_drawn[:fit])
    held_out = reg.predict(pixels[fit:])
    read_f2f = reg.predict(f2f.reshape(len(f2f), -1))
    read_s2f = reg.predict(s2f.reshape(len(s2f), -1))
    rng = np.random.default_rng(seed)
    photo = np.array([rng.choice(test.items_of("face", i)) for i in test.voice.identity])
    shuffled = rng.permutation(photo)
    def truth(rows: np.ndarray, k: str) -> np.ndarray:
        return np.array([getattr(people[test.identities[i]].face, k) for i in rows])

    out = {}
    for j, k in enumerate(GEOMETRY):
        r, p = stats.pearsonr(read_f2f[photo, j], read_s2f[:, j])
        ci = cluster_bootstrap_correlation(read_f2f[photo, j], read_s2f[:, j], test.voice.identity)
        out[k] = {"r": float(r), "p": float(p), "ci95": list(ci),
                  "random_r": float(stats.pearsonr(read_f2f[shuffled, j], read_s2f[:, j])[0]),
                  "tool_r_on_renders": float(stats.pearsonr(held_out[:, j], truth_drawn[fit:, j])[0]),
                  "tool_r_on_f2f": float(stats.pearsonr(read_f2f[:, j], truth(test.face.identity, k))[0]),
                  "tool_r_on_s2f": float(stats.pearsonr(read_s2f[:, j], truth(test.voice.identity, k))[0])}
    return out


def cross_check(split: S2FSplit, recon_vf: torch.Tensor, v_s: torch.Tensor, v_f: torch.Tensor, n: int,
                seed: int) -> dict:
    """1:2 V->F without control: pick the photo whose feature is nearer (cosine) to the S2F
    reconstruction's feature, or directly to v_s."""
    t = matching_trials(split, "v2f", "-", n, seed)
    out = {}
    for name, q in (("via_reconstruction", recon_vf), ("via_feature", v_s)):
        d = distances(q[t.probe], v_f, "cosine")
        right = d[np.arange(n), t.candidates[:, 0]] < d[np.arange(n), t.candidates[:, 1]]
        out[name] = {"accuracy": float(right.mean()), "ci95": list(wilson_interval(float(right.sum()), n)),
                     "trials": n}
    return out
