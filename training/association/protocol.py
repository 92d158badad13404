"""Kim et al. 2018's evaluation protocols on test embeddings: 1:2 matching under demographic
controls (Table 3), 1:N, verification, retrieval recall@K (Table 6) and linear attribute probes
(Table 4). Inputs are embeddings; nothing here touches a model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facevoice.training.association.data import SplitData
from facevoice.training.association.trials import LARGEST_GROUP, REFERENCE, annotated, largest_group, matching_trials
from facevoice.training.corpus.oracle import CONTROLS, oracle_recall_at_k
from facevoice.training.metrics import (
    auc_eer,
    cluster_bootstrap_interval,
    first_is_closest,
    mean_interval,
    pairwise_l2,
    random_map,
    random_recall_at_k,
    recall_at_k,
    retrieval_map,
    roc,
    wilson_interval,
)

MATCH_CONTROLS = (*CONTROLS, LARGEST_GROUP)
RECALL_KS = (1, 5, 10, 50, 100)
SET_SIZES = (250, 1000, 5000)
PROBE_ATTRIBUTES = ("gender", "age_group", "appearance_group", "first_language")


@dataclass
class Embeddings:
    """Each test item's representation; `cross`, when a model scores pairs instead of embedding
    (Table 7's classification network), holds the distance of every (voice, face) pair."""

    face: np.ndarray
    voice: np.ndarray
    cross: np.ndarray | None = None  # [voices, faces]

    def of(self, modality: str) -> np.ndarray:
        return self.face if modality == "face" else self.voice

    def distance(self, voices: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Elementwise (broadcast) distances between voice rows and face rows: L2 of the
        representations (sec. 4.4), or the pair model's."""
        if self.cross is not None:
            return self.cross[voices, faces]
        return np.linalg.norm(np.asarray(self.voice[voices], np.float64) - np.asarray(self.face[faces], np.float64),
                              axis=-1)

    def cross_distance(self, voices: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """[len(voices), len(faces)] distances."""
        if self.cross is not None:
            return self.cross[np.ix_(voices, faces)]
        return pairwise_l2(self.voice[voices], self.face[faces])


def matching_outcomes(emb: Embeddings, split: SplitData, direction: str, control: str, n: int,
                      seed: int, n_way: int = 2) -> tuple[np.ndarray, np.ndarray] | None:
    """Each trial's outcome (True: the true match is closest) and its anchor's identity index;
    None when the split cannot form the trials."""
    if control != "-" and not annotated(split, control):
        return None
    try:
        t = matching_trials(split, direction, control, n, seed, n_way)
    except ValueError:
        return None
    ref, _ = REFERENCE[direction]
    probe = np.broadcast_to(np.asarray(t.probe)[:, None], np.shape(t.candidates))
    voices, faces = (probe, t.candidates) if ref == "voice" else (t.candidates, probe)
    return first_is_closest(emb.distance(voices, faces)), np.asarray(t.anchor_identity)


def outcome_cell(right: np.ndarray, anchor_identity: np.ndarray) -> dict:
    """Accuracy, Wilson 95% CI over trials, identity-bootstrap 95% CI, trial and identity counts."""
    return {"accuracy": float(right.mean()), "ci95": wilson_interval(right.sum(), len(right)),
            "ci95_identity_bootstrap": cluster_bootstrap_interval(right, anchor_identity),
            "trials": len(right), "identities": len(np.unique(anchor_identity))}


def matching_cell(emb: Embeddings, split: SplitData, direction: str, control: str, n: int,
                  seed: int, n_way: int = 2) -> dict | None:
    """Accuracy, Wilson 95% CI over trials, identity-bootstrap 95% CI, trial and identity counts."""
    found = matching_outcomes(emb, split, direction, control, n, seed, n_way)
    return None if found is None else outcome_cell(*found)


def matching_table(emb: Embeddings, split: SplitData, n: int, seed: int) -> dict:
    """Table 3: both directions x every control (None where the test set cannot form the trials)."""
    table = {d: {c: matching_cell(emb, split, d, c, n, seed) for c in MATCH_CONTROLS} for d in REFERENCE}
    if annotated(split, "G/E/F/A"):
        name, members = largest_group(split)
        table["largest_group"] = {"attributes": dict(zip(CONTROLS["G/E/F/A"], name, strict=True)),
                                  "identities": len(members)}
    return table


def one_of_n(emb: Embeddings, split: SplitData, n: int, seed: int, ns=range(2, 11)) -> dict:
    """1:N accuracy without demographic control, N = 2..10."""
    out: dict[str, dict[int, float]] = {}
    for d in REFERENCE:
        out[d] = {}
        for k in ns:
            cell = matching_cell(emb, split, d, "-", n, seed, n_way=k)
            if cell is not None:
                out[d][k] = cell["accuracy"]
    return out


def verification(emb: Embeddings, split: SplitData) -> dict:
    """Every (voice, face) pair of the test set; score = -L2 distance; ROC AUC and EER."""
    d = emb.cross_distance(np.arange(len(emb.voice)), np.arange(len(emb.face)))
    same = split.voice.identity[:, None] == split.face.identity[None, :]
    fpr, tpr = roc(-d.ravel(), same.ravel())
    auc, eer = auc_eer(fpr, tpr)
    keep = np.unique(np.linspace(0, len(fpr) - 1, 300).astype(int))
    return {"auc": auc, "eer": eer, "pairs": int(same.size), "positives": int(same.sum()),
            "roc": {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}}


def _pairs_by_identity(split: SplitData, rng: np.random.Generator) -> list[np.ndarray]:
    """Per identity, its (voice row, face row) pairs in random order: as many as it has of both."""
    out = []
    for i in range(len(split.identities)):
        v = rng.permutation(np.flatnonzero(split.voice.identity == i))
        f = rng.permutation(np.flatnonzero(split.face.identity == i))
        out.append(np.array(list(zip(v, f, strict=False)), dtype=int).reshape(-1, 2))
    return out


def set_size(requested: int, identities: int, fewest: int) -> int:
    """The size of the set Table 6 can build for a requested size: the same number of samples from
    each identity (fewest = the fewest pairs any identity has), so a multiple of `identities`, or
    fewer identities than there are, one sample each."""
    if requested < identities:
        return requested
    return identities * min(fewest, requested // identities)


def retrieval_sets(split: SplitData, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Table 6's sets: disjoint sets of `size` pairs with the same number of samples per identity
    ("the number of samples per identity was kept the same", sec. 4.5). With at least as many
    pairs as identities a set takes size // identities pairs from every identity that has them;
    with fewer, one pair each from `size` random identities. A set never reuses a pair."""
    by_id = [p for p in _pairs_by_identity(split, rng) if len(p)]
    if size < len(by_id):  # one sample each from `size` identities, as many sets as that allows
        rounds = min(len(p) for p in by_id)
        sets = []
        for r in range(rounds):
            order = rng.permutation(len(by_id))
            sets += [np.stack([by_id[i][r] for i in order[k:k + size]])
                     for k in range(0, len(order) - size + 1, size)]
        return sets
    per = size // len(by_id)
    rounds = min(len(p) for p in by_id) // per
    return [rng.permutation(np.concatenate([p[r * per:(r + 1) * per] for p in by_id])) for r in range(rounds)]


def retrieval(emb: Embeddings, split: SplitData, seed: int, sizes=SET_SIZES, ks=RECALL_KS,
              oracle: dict[str, np.ndarray] | None = None) -> dict:
    """Table 6: the test pairs split into disjoint sets of each size (all pairs when fewer), each
    with the same number of samples per identity (`retrieval_sets`); in a set each voice queries
    the set's faces (V->F) and back, and random is that set's own expected recall; recall@K and mAP averaged over sets.
    `oracle` = {"v2f": scores, "f2v": scores} (`identity_scores` over split.identities) adds the
    generator's Bayes-optimal ranking on the same sets (`oracle_v2f`, `oracle_f2v`): the ceiling."""
    rng = np.random.default_rng(seed)
    # pairs per identity: as many as it has of both modalities (the identities with none drop out)
    counts = [int(c) for c in np.minimum(np.bincount(split.voice.identity, minlength=len(split.identities)),
                                    np.bincount(split.face.identity, minlength=len(split.identities))) if c]
    usable = sorted({set_size(s, len(counts), min(counts)) for s in sizes})
    directions = ("v2f", "f2v", "random") + (("oracle_v2f", "oracle_f2v") if oracle else ())
    out = {"sizes": usable, "sets": {}, **{d: {} for d in directions}, "map": {"v2f": {}, "f2v": {}},
           "random_map": {}}
    for size in usable:
        sets = retrieval_sets(split, size, rng)
        acc = {**{d: [] for d in directions}, "map_v2f": [], "map_f2v": [], "random_map": []}
        for s in sets:
            vid, fid = split.voice.identity[s[:, 0]], split.face.identity[s[:, 1]]
            d = emb.cross_distance(s[:, 0], s[:, 1])
            acc["v2f"].append(recall_at_k(d, vid, fid, ks))
            acc["f2v"].append(recall_at_k(d.T, fid, vid, ks))
            acc["random"].append(random_recall_at_k(fid, vid, ks))
            if oracle:
                acc["oracle_v2f"].append(oracle_recall_at_k(oracle["v2f"], vid, fid, ks))
                acc["oracle_f2v"].append(oracle_recall_at_k(oracle["f2v"], fid, vid, ks))
            acc["map_v2f"].append(retrieval_map(d, vid, fid))
            acc["map_f2v"].append(retrieval_map(d.T, fid, vid))
            acc["random_map"].append(random_map(fid, vid))
        for key in directions:
            out[key][size] = {k: float(np.mean([r[k] for r in acc[key]])) for k in ks}
        out["map"]["v2f"][size] = float(np.mean(acc["map_v2f"]))
        out["map"]["f2v"][size] = float(np.mean(acc["map_f2v"]))
        out["random_map"][size] = float(np.mean(acc["random_map"]))
        out["sets"][size] = len(sets)
    return out


def linear_probes(emb: Embeddings, split: SplitData, trials: int = 20, seed: int = 0) -> dict:
    """Table 4: one-vs-rest linear SVMs predict each attribute from each modality's representation;
    average precision per class, mean and 99% CI over `trials` holdouts. Holdouts split identities
    (not items) in half, so a probe cannot recognise a person it was trained on."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import average_precision_score
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(seed)
    out: dict = {}
    for attr in PROBE_ATTRIBUTES:
        values = [a.get(attr, "") for a in split.attributes]
        classes = sorted({v for v in values if v})
        if len(classes) < 2:
            continue
        out[attr] = {}
        for modality in ("face", "voice"):
            m = getattr(split, modality)
            y = np.array([values[i] for i in m.identity])
            x = emb.of(modality)
            per_class: dict[str, list[float]] = {c: [] for c in classes}
            idents = np.unique(m.identity)
            for _ in range(trials):
                train_ids = rng.permutation(idents)[: len(idents) // 2]
                tr = np.isin(m.identity, train_ids)
                if len(set(y[tr])) < 2:
                    continue
                scaler = StandardScaler().fit(x[tr])
                with warnings.catch_warnings():  # a not-quite-converged linear SVM is still a probe
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    svm = LinearSVC(C=1.0, max_iter=5000).fit(scaler.transform(x[tr]), y[tr])
                scores = svm.decision_function(scaler.transform(x[~tr]))
                if scores.ndim == 1:  # binary: the score is for svm.classes_[1]
                    scores = np.stack([-scores, scores], 1)
                for k, c in enumerate(svm.classes_):
                    if (y[~tr] == c).any():
                        per_class[c].append(average_precision_score(y[~tr] == c, scores[:, k]))
            cells = {}
            for c in classes:
                if per_class[c]:
                    mean, half = mean_interval(np.array(per_class[c]), 0.99)
                    cells[c] = {"ap": mean, "ci99": half, "chance": float(np.mean(y == c))}
            out[attr][modality] = cells
    return out


# The generator's per-person numbers a within-gender match can use (identities.csv of a synthetic
# corpus), read by ridge from each side's representation: on the face side the parameters it
# draws (face width <- z_size, nose width <- z_nasal, apparent age), on the voice side pitch
# (<- z_size and age), the variant score (<- z_nasal) and speed (<- age), and on both sides the
# shared latents themselves, whose best possible r from one side is that side's link (0.55).
LINKS = {"face": ("face_width", "face_nose_width", "face_age", "z_size", "z_nasal", "age"),
         "voice": ("voice_pitch", "voice_variant_score", "voice_speed", "z_size", "z_nasal", "age")}
# Numbers measured from the media, which need no generator (any corpus, VoxCeleb included): the
# speaker's median F0 over its clips (YIN, log Hz; evaluate.py measures it), read from both sides
MEASURED_LINKS = ("measured_f0",)


def _link_r(x: np.ndarray, ident: np.ndarray, value: np.ndarray, gender: np.ndarray, trials: int,
            rng: np.random.Generator) -> dict | None:
    """Mean Pearson r (and 99% CI) of ridge from x to per-identity `value` (NaN: left out), fitted
    on half of one gender's identities and scored on the other half's items."""
    from sklearn.linear_model import Ridge

    rs = []
    for _ in range(trials):
        for g in np.unique(gender):
            ids = rng.permutation(np.flatnonzero((gender == g) & np.isfinite(value)))
            if len(ids) < 6:
                continue
            tr, te = np.isin(ident, ids[: len(ids) // 2]), np.isin(ident, ids[len(ids) // 2:])
            mean, sd = x[tr].mean(0), x[tr].std(0) + 1e-9
            reg = Ridge(alpha=10.0).fit((x[tr] - mean) / sd, value[ident[tr]])
            guess, truth = reg.predict((x[te] - mean) / sd), value[ident[te]]
            if guess.std() > 0 and truth.std() > 0:
                rs.append(float(np.corrcoef(guess, truth)[0, 1]))
    if not rs:
        return None
    r, half = mean_interval(np.array(rs), 0.99)
    return {"r": r, "ci99": half}


def link_probes(emb: Embeddings, split: SplitData, people: dict[str, dict[str, str]], trials: int = 20,
                seed: int = 0, measured: dict[str, np.ndarray] | None = None) -> dict:
    """Within gender, how well each side's representation linearly predicts the generator's
    continuous per-person numbers (LINKS): ridge regression fitted on half of one gender's
    identities, Pearson r on the other half's items, averaged over genders and `trials` holdouts
    (mean and 99% CI). Chance is r = 0. Gender alone predicts nothing here, so a representation
    that only separates gender reads about 0: this is what shows whether within-gender cues were
    learnt. `measured` adds numbers measured from the media ({name: [identities] values, NaN
    where unmeasured}, MEASURED_LINKS), read from both sides after the generator's (whose
    figures it leaves as they were). {modality: {name: {"r", "ci99"}}}; {} when there is
    neither a generator table (a corpus without these columns) nor a measured number."""
    have_people = bool(people) and all(i in people for i in split.identities)
    if not have_people and not measured:
        return {}
    rng = np.random.default_rng(seed)
    gender = np.array([a.get("gender", "") for a in split.attributes])
    out: dict = {m: {} for m in LINKS}
    for modality, names in LINKS.items() if have_people else ():
        m = getattr(split, modality)
        x = np.asarray(emb.of(modality), np.float64)
        for name in names:
            if any(not people[i].get(name) for i in split.identities):
                continue
            value = np.array([float(people[i][name]) for i in split.identities])
            cell = _link_r(x, m.identity, value, gender, trials, rng)
            if cell:
                out[modality][name] = cell
    for modality in LINKS:
        m = getattr(split, modality)
        x = np.asarray(emb.of(modality), np.float64)
        for name, value in (measured or {}).items():
            cell = _link_r(x, m.identity, np.asarray(value, np.float64), gender, trials, rng)
            if cell:
                out[modality][name] = cell
    return out
