"""The t-SNE figures of `eval association` (Kim et al. 2018 sec. 4.5-4.6 and supplement A.2.1):

- Fig. 1 (fig1_tsne.png): both modalities by identity (10 people), gender, age group, the
  person's age in years (a colormap, where the corpus records it) and appearance group;
- Fig. 2 (fig2_tsne_prosody.png): by each clip's measured F0 (YIN's median; a face takes its
  speaker's mean), its loudness, and where the corpus records it the generator's pitch setting;
- Figs. A.6 / A.7 (figA6_tsne_voice.png, figA7_tsne_face.png): voices, then faces, by gender,
  first language, age (years where recorded, else the group) and ethnicity (appearance group);
- Fig. 3 (fig3_cross_corpus_tsne.png): two corpora's faces in one t-SNE and their voices in
  another, coloured by corpus (`eval association --cross-corpus`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facevoice.training.association import plots
from facevoice.training.association.data import SplitData
from facevoice.training.association.protocol import Embeddings

# identities.csv columns with a person's age in years, best first: the age itself (what Kim's
# Figs. A.6 / A.7 colour both modalities by), then the apparent age the face shows
AGE_COLUMNS = ("age", "face_age")
MAX_POINTS = 2000  # per corpus and modality in Fig. 3 (Kim's figures draw 1,000 samples)


def tsne(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    return TSNE(2, perplexity=min(30, max(5, len(x) // 4)), init="pca", random_state=seed).fit_transform(x)


def per_item(split: SplitData, values: list) -> dict[str, list]:
    """Per-identity values spread over each modality's items."""
    return {m: [values[i] for i in getattr(split, m).identity] for m in ("face", "voice")}


def _number(row: dict[str, str] | None, columns: tuple[str, ...]) -> float | None:
    for c in columns:
        if row and row.get(c):
            return float(row[c])
    return None


def age_years(split: SplitData, people: dict[str, dict[str, str]]) -> list[float | None] | None:
    """Each identity's age in years (AGE_COLUMNS), or None when the corpus records none."""
    ages = [_number(people.get(i), AGE_COLUMNS) for i in split.identities]
    return ages if any(a is not None for a in ages) else None


def measured_f0_colouring(split: SplitData, f0: np.ndarray) -> dict[str, list]:
    """Each clip's F0 (None where unvoiced); each face its speaker's mean clip F0."""
    mean = [float(np.nanmean(v)) if np.isfinite(v := f0[split.voice.identity == i]).any() else None
            for i in range(len(split.identities))]
    return {"face": [mean[i] for i in split.face.identity],
            "voice": [float(v) if np.isfinite(v) else None for v in f0]}


def tsne_figures(emb: Embeddings, split: SplitData, people: dict[str, dict[str, str]], out: Path, seed: int,
                 f0: np.ndarray, loudness: np.ndarray) -> list[Path]:
    """Figs. 1, 2, A.6 and A.7 on one t-SNE per modality. `people` is identities.csv by identity
    ({} without one); f0 and loudness are per voice clip (Hz, NaN unvoiced; dBFS)."""
    xy = {m: tsne(emb.of(m), seed) for m in ("face", "voice")}
    rng = np.random.default_rng(seed)
    shown = set(rng.choice(len(split.identities), size=min(10, len(split.identities)), replace=False).tolist())
    attr = {a: per_item(split, [p.get(a, "") for p in split.attributes])
            for a in ("gender", "age_group", "appearance_group", "first_language")}
    ages = age_years(split, people)
    age = {"age (years)": per_item(split, ages)} if ages else {}
    fig1 = {"identity (10)": per_item(split, [split.identities[i] if i in shown else None
                                             for i in range(len(split.identities))]),
            "gender": attr["gender"], "age_group": attr["age_group"], **age,
            "appearance_group": attr["appearance_group"]}
    paths = [plots.tsne_panels(xy, fig1, out / "fig1_tsne.png", "t-SNE of test representations (Fig. 1)")]

    speaker_loud = [float(loudness[split.voice.identity == i].mean()) if (split.voice.identity == i).any() else None
                    for i in range(len(split.identities))]
    prosody = {"measured F0 (Hz, YIN)": measured_f0_colouring(split, f0),
               "voice loudness (dBFS)": {"face": [speaker_loud[i] for i in split.face.identity],
                                         "voice": loudness.tolist()}}
    pitch = [_number(people.get(i), ("voice_pitch",)) for i in split.identities]
    if any(p is not None for p in pitch):
        prosody["generator pitch (espeak -p)"] = per_item(split, pitch)
    paths.append(plots.tsne_panels(xy, prosody, out / "fig2_tsne_prosody.png",
                                   "t-SNE coloured by prosody: measured F0 and loudness (Fig. 2)"))

    a6 = {"gender": attr["gender"], "first language": attr["first_language"],
          **(age or {"age group": attr["age_group"]}), "ethnicity (appearance group)": attr["appearance_group"]}
    for modality, name, fig in (("voice", "figA6_tsne_voice.png", "Fig. A.6"),
                                ("face", "figA7_tsne_face.png", "Fig. A.7")):
        paths.append(plots.tsne_panels({modality: xy[modality]}, {k: {modality: v[modality]} for k, v in a6.items()},
                                       out / name, f"t-SNE of the {modality} representations ({fig})"))
    return paths


def cross_corpus_figure(embs: dict[str, Embeddings], out: Path, seed: int) -> Path:
    """Fig. 3: each modality's representations of the named corpora in one t-SNE, coloured by
    corpus (at most MAX_POINTS random items of each)."""
    rng = np.random.default_rng(seed)
    points, labels = {}, {}
    for modality in ("face", "voice"):
        rows, names = [], []
        for name, emb in embs.items():
            x = emb.of(modality)
            keep = np.sort(rng.permutation(len(x))[:MAX_POINTS])
            rows.append(x[keep])
            names += [name] * len(keep)
        points[modality], labels[modality] = tsne(np.concatenate(rows), seed), names
    return plots.corpus_tsne(points, labels, out / "fig3_cross_corpus_tsne.png",
                             "Two corpora in one t-SNE per modality (Fig. 3)")
