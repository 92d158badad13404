"""`facevoice eval frozen`: what a user would pick instead of training a model (issue 30).

Two encoders that ship, trained, inside their packages, used frozen:

- faces: dlib's face descriptor (`dlib_face_recognition_resnet_model_v1`, 128-D, from
  face-recognition-models), on the chip that dlib's 5-point landmarks align inside the face box
  (the corpus's drawn box, else the service's detector);
- voices: resemblyzer's speaker encoder (GE2E, 256-D, resemblyzer 0.1.4), on the clip after its
  own preprocessing (16 kHz, volume normalised, long silences cut).

A linear head joins them, fitted on the person means of the training people of a corpus:

- `ridge`: each side regressed from the other (V->F maps the voice into face space, F->V the
  face into voice space), compared by cosine;
- `cca`: canonical correlation analysis (k components), both sides projected, cosine;
- `pls`: partial least squares in its canonical form (k components), the same way.

k and the ridge's alpha are chosen on the corpus's validation people (unconstrained 1:2 of both
directions). Each head is scored on held-out corpora with the same 1:2 trials as `eval
heldout` and `eval media-ceiling` (Kim et al. Table 3's controls; G/E/F/A over every such
group, where Kim et al. take the largest), pooled over the corpora with identity-bootstrap
intervals. A within-gender ridge from each frozen embedding to the generator's values (as
`eval media-ceiling` probes the served embeddings) says which links each encoder reads from
our media. No media is written or logged; the embeddings of each corpus are kept in
OUT/embeddings so that a rerun does not compute them again.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from tqdm import tqdm

from facevoice.cli import options
from facevoice.service.corpus import Item, read_manifest
from facevoice.service.errors import UsageError
from facevoice.training.association.ceiling import (
    FACE_VALUES,
    VOICE_VALUES,
    ReportFiles,
    matching_row,
    pooled,
    ridge_r,
    subset,
    targets,
)
from facevoice.training.association.config import load_config
from facevoice.training.association.data import STORE, SplitData, load_split
from facevoice.training.association.heldout import CONTROLS, heldout_corpus
from facevoice.training.association.protocol import Embeddings, matching_outcomes
from facevoice.training.association.report import ARROW

HEADS = ("ridge", "cca", "pls")
COMPONENTS = (4, 8, 16, 32)
ALPHAS = (1.0, 10.0, 100.0, 1000.0)


@dataclass(frozen=True)
class EvalFrozenOptions:
    train_corpus: Path  # its train split fits the heads, its val split chooses their size
    corpora: Path  # where the held-out corpora are (heldout-SEED-N/, generated when missing)
    out: Path
    seeds: Sequence[int] = (7101, 7102, 7103)
    identities: int = 300  # people per held-out corpus
    heads: Sequence[str] = HEADS
    trials: int = 4000  # 1:2 trials per cell and corpus
    config: str = "small"  # association config whose splits and front ends say which items the service takes
    workers: int = 2
    threads: int = 2  # torch threads (resemblyzer)
    no_progress: bool = False


@dataclass(frozen=True)
class EvalFrozenResult(ReportFiles):
    STEM: ClassVar[str] = "frozen"
    out: Path
    record: dict  # what OUT/frozen.json holds: encoders, heads, links, pooled matching, refused items, seconds
    text: str  # what OUT/frozen.md holds, report(record)

    def summary(self) -> str:
        r = self.record
        refused = sum(len(v) for v in r["refused"].values())
        return (f"{self.text}\nfrozen encoders: heads fitted on {r['train_identities']} people, scored on "
                f"{len(r['corpora'])} held-out corpora ({refused} items refused), {r['seconds']:.0f} s -> {self.out}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    o = EvalFrozenOptions
    p.add_argument("--train-corpus", type=Path, required=True,
                   help="a corpus whose train split fits the heads and val split chooses their size")
    p.add_argument("--corpora", type=Path, required=True,
                   help="where the held-out corpora are (heldout-SEED-N/, generated when missing)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(o.seeds))
    p.add_argument("--identities", type=int, default=o.identities, help="people per held-out corpus")
    p.add_argument("--heads", nargs="+", choices=HEADS, default=list(o.heads))
    p.add_argument("--trials", type=int, default=o.trials, help="1:2 trials per cell and corpus")
    p.add_argument("--config", default=o.config, help="association config whose splits and front ends say "
                                                      "which items the service takes")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int, default=o.workers)
    p.add_argument("--threads", type=int, default=o.threads, help="torch threads (resemblyzer)")
    p.add_argument("--no-progress", action="store_true")


# ---------------------------------------------------------------- the frozen encoders


class DlibFaces:
    """dlib's 128-D face descriptor on the 5-landmark chip inside a face box."""

    name = "dlib face descriptor (128-D)"

    def __init__(self):
        import dlib

        from facevoice.service.media.faces import models_dir

        self.dlib = dlib
        self.landmarks = dlib.shape_predictor(str(models_dir() / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(str(models_dir() / "dlib_face_recognition_resnet_model_v1.dat"))

    def __call__(self, path: Path, box: tuple[float, float, float, float] | None) -> np.ndarray | None:
        from PIL import Image

        img = np.asarray(Image.open(path).convert("RGB"))
        if box is None:
            from facevoice.service.media.faces import GUARD, detect_faces

            found = detect_faces(Image.fromarray(img), GUARD, 0.0)
            if not found:
                return None
            box = max(found, key=lambda f: f.area).box
        x, y, w, h = box
        rect = self.dlib.rectangle(round(x), round(y), round(x + w), round(y + h))
        return np.asarray(self.net.compute_face_descriptor(img, self.landmarks(img, rect)), np.float32)


class ResemblyzerVoices:
    """resemblyzer's 256-D speaker embedding of a whole clip (its own partial-window average)."""

    name = "resemblyzer speaker encoder (256-D)"

    def __init__(self):
        from resemblyzer import VoiceEncoder

        self.encoder = VoiceEncoder("cpu", verbose=False)

    def __call__(self, path: Path, box=None) -> np.ndarray | None:
        import soundfile as sf
        from resemblyzer import preprocess_wav

        wav, rate = sf.read(path, dtype="float32", always_2d=True)
        wav = wav.mean(1)
        if not len(wav) or np.abs(wav).max() < 1e-4:  # digital silence: nothing to normalise or embed
            return None
        wav = preprocess_wav(wav, rate)
        if len(wav) < 16000 // 4:  # under a quarter second of voice left: nothing to embed
            return None
        return np.asarray(self.encoder.embed_utterance(wav), np.float32)


def embed(corpus: Path, split: SplitData, encoders: dict, out: Path, name: str, progress: bool
          ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per modality: every item's frozen embedding (a zero row where the encoder found nothing)
    and which it took. Kept in OUT/embeddings/NAME.npz, keyed by item id."""
    saved = out / "embeddings" / f"{name}.npz"
    known: dict[str, np.ndarray] = dict(np.load(saved)) if saved.exists() else {}
    items: dict[str, Item] = {i.item_id: i for i in read_manifest(corpus)}
    got = {}
    for modality, encoder in encoders.items():
        ids = getattr(split, modality).item_ids
        vecs = []
        for item_id in tqdm(ids, desc=f"{encoder.name}: {corpus.name}", disable=not progress, leave=False):
            if item_id not in known:
                item = items[item_id]
                v = encoder(corpus / item.path, item.face_box() if modality == "face" else None)
                known[item_id] = np.zeros(0, np.float32) if v is None else v
            vecs.append(known[item_id])
        dim = max((len(v) for v in vecs), default=1)
        ok = np.array([len(v) == dim for v in vecs])
        got[modality] = (np.stack([v if len(v) == dim else np.zeros(dim, np.float32) for v in vecs]), ok)
    saved.parent.mkdir(parents=True, exist_ok=True)
    np.savez(saved, **known)
    return got


# ---------------------------------------------------------------- the linear heads


@dataclass
class Head:
    """A fitted head: each side's standardisation, then its map into the space compared."""

    kind: str
    size: float  # components (cca, pls) or alpha (ridge)
    mean: dict[str, np.ndarray]
    sd: dict[str, np.ndarray]
    model: dict

    def embeddings(self, face: np.ndarray, voice: np.ndarray, direction: str) -> Embeddings:
        """Both sides in the compared space, unit length (L2 then ranks as cosine)."""
        f = (face - self.mean["face"]) / self.sd["face"]
        v = (voice - self.mean["voice"]) / self.sd["voice"]
        if self.kind == "ridge":
            if direction == "v2f":
                v = self.model["v2f"].predict(v)
            else:
                f = self.model["f2v"].predict(f)
        else:
            v, f = self.model["joint"].transform(v, f)
        return Embeddings(_unit(f), _unit(v))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def person_means(x: np.ndarray, identity: np.ndarray, people: int) -> np.ndarray:
    out = np.zeros((people, x.shape[1]))
    np.add.at(out, identity, x)
    return out / np.maximum(np.bincount(identity, minlength=people), 1)[:, None]


def fit_head(kind: str, size: float, face: np.ndarray, face_id: np.ndarray, voice: np.ndarray,
             voice_id: np.ndarray, people: int) -> Head:
    """The head fitted on the person means of standardised items (people with both sides)."""
    from sklearn.cross_decomposition import CCA, PLSCanonical
    from sklearn.linear_model import Ridge

    mean = {"face": face.mean(0), "voice": voice.mean(0)}
    sd = {"face": face.std(0) + 1e-6, "voice": voice.std(0) + 1e-6}
    f = person_means((face - mean["face"]) / sd["face"], face_id, people)
    v = person_means((voice - mean["voice"]) / sd["voice"], voice_id, people)
    both = np.isin(np.arange(people), face_id) & np.isin(np.arange(people), voice_id)
    f, v = f[both], v[both]
    if kind == "ridge":
        model = {"v2f": Ridge(alpha=size).fit(v, f), "f2v": Ridge(alpha=size).fit(f, v)}
    else:
        k = int(min(size, f.shape[1], v.shape[1], len(f) - 1))
        joint = (CCA if kind == "cca" else PLSCanonical)(n_components=k, max_iter=1000)
        model = {"joint": joint.fit(v, f)}
    return Head(kind, size, mean, sd, model)


def head_accuracy(head: Head, face: np.ndarray, voice: np.ndarray, split: SplitData, trials: int) -> float:
    """Unconstrained 1:2, both directions averaged: what chooses a head's size."""
    accs = []
    for d in ARROW:
        found = matching_outcomes(head.embeddings(face, voice, d), split, d, "-", trials, seed=1)
        if found is not None:
            accs.append(found[0].mean())
    return float(np.mean(accs)) if accs else float("nan")


# ---------------------------------------------------------------- the command


def eval_frozen(opts: EvalFrozenOptions) -> EvalFrozenResult:
    """`eval frozen`: heads fitted on TRAIN_CORPUS's train split over the frozen encoders, scored
    on held-out corpora -> OUT/frozen.json and frozen.md (report() renders the first as the second)."""
    import warnings

    import torch

    from facevoice.training.association.evaluate import people_table
    from facevoice.training.corpus.oracle import corpus_people

    unknown = sorted(set(opts.heads) - set(HEADS))
    if unknown:
        raise UsageError(f"heads must be among {', '.join(HEADS)}, not {', '.join(unknown)}")
    train_corpus, corpora, out, progress = opts.train_corpus, opts.corpora, opts.out, not opts.no_progress
    torch.set_num_threads(opts.threads)
    t0 = time.monotonic()
    cfg = load_config(opts.config)
    generator = corpus_people(train_corpus)
    groups = tuple(g.name for g in generator[0].groups) if generator else ()
    from facevoice.training.corpus import media_oracle as mo

    accents = mo.all_accents(generator[0]) if generator else ()
    encoders = {"face": DlibFaces(), "voice": ResemblyzerVoices()}
    result: dict = {"encoders": {m: e.name for m, e in encoders.items()}, "refused": {}, "heads": {},
                    "links": {}, "matching": {}}

    def load(corpus: Path, split: str):
        data = load_split(corpus, split, cfg, corpus / "cache" / "ceiling", opts.workers, progress, store=STORE,
                          skip_refused=True)
        got = embed(corpus, data, encoders, out, f"{corpus.name}-{split}", progress)
        for modality, (_, ok) in got.items():
            result["refused"].setdefault(modality, []).extend(
                f"{corpus.name}/{getattr(data, modality).item_ids[k]}" for k in np.flatnonzero(~ok))
        data = subset(data, {m: ok for m, (_, ok) in got.items()})
        vecs = {m: v[ok] for m, (v, ok) in got.items()}
        return data, vecs, people_table(corpus) if generator else None

    train, train_v, train_people = load(train_corpus, "train")
    val, val_v, _ = load(train_corpus, "val")
    people = len(train.identities)
    heads: dict[str, Head] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's convergence notes on the largest k
        for kind in opts.heads:
            scores = {}
            for size in (ALPHAS if kind == "ridge" else COMPONENTS):
                head = fit_head(kind, size, train_v["face"], train.face.identity, train_v["voice"],
                                train.voice.identity, people)
                scores[size] = head_accuracy(head, val_v["face"], val_v["voice"], val, 2000)
            best = max(scores, key=scores.get)
            heads[kind] = fit_head(kind, best, train_v["face"], train.face.identity, train_v["voice"],
                                   train.voice.identity, people)
            result["heads"][kind] = {"chosen": best, "val_1:2": scores}
    train_t = ({m: targets(train, m, train_people, generator[0], groups, accents) for m in ("face", "voice")}
               if generator else None)
    corpora.mkdir(parents=True, exist_ok=True)
    held = [heldout_corpus(corpora, s, opts.identities, progress) for s in opts.seeds]
    result |= {"train_corpus": str(train_corpus), "train_identities": people,
               "corpora": [c.name for c in held]}
    cells = {k: {d: {c: [] for c in CONTROLS} for d in ARROW} for k in heads}
    link_r: dict = {}
    for corpus in tqdm(held, desc="held-out corpora", disable=not progress):
        split, vecs, cpeople = load(corpus, "test")
        for kind, head in heads.items():
            for d in ARROW:
                emb = head.embeddings(vecs["face"], vecs["voice"], d)
                for c in CONTROLS:
                    found = matching_outcomes(emb, split, d, c, opts.trials, seed=0)
                    if found is not None:
                        cells[kind][d][c].append(found)
        if train_t is not None:
            hmodel = corpus_people(corpus)[0]
            for m in ("face", "voice"):
                t = targets(split, m, cpeople, hmodel, groups, accents)
                for k, n in enumerate(FACE_VALUES if m == "face" else VOICE_VALUES):
                    link_r.setdefault(m, {}).setdefault(n, []).append(ridge_r(
                        train_v[m], train_t[m].values[:, k], train_t[m].gender, vecs[m], t.values[:, k], t.gender))
    result["links"] = {m: {n: float(np.mean(v)) for n, v in per.items()} for m, per in link_r.items()}
    result["matching"] = pooled(cells)
    result["seconds"] = round(time.monotonic() - t0, 1)
    done = EvalFrozenResult(out, result, report(result))
    done.write()
    return done


def run(args: argparse.Namespace) -> int:
    print(eval_frozen(options(EvalFrozenOptions, args)).summary())
    return 0


def report(result: dict) -> str:
    lines = [f"Frozen encoders, {result['encoders']['face']} and {result['encoders']['voice']}, joined by linear "
             f"heads fitted on the {result['train_identities']} training people of `{result['train_corpus']}`; "
             f"scored on {', '.join(result['corpora'])}.", "",
             "| head (size chosen on val) | direction | " + " | ".join(CONTROLS) + " |",
             "|---|---|" + "---|" * len(CONTROLS)]
    for kind, by_d in result["matching"].items():
        chosen = result["heads"][kind]["chosen"]
        label = f"{kind} (alpha {chosen:g})" if kind == "ridge" else f"{kind} ({chosen:g} components)"
        lines += [matching_row(f"{label} | {ARROW[d]}", by_d[d]) for d in ARROW]
    lines.append("| chance | both | " + " | ".join("50.0" for _ in CONTROLS) + " |")
    if result["links"]:
        lines += ["", "| side | link | frozen embedding r (within-gender ridge) |", "|---|---|---|"]
        for m, names in (("face", FACE_VALUES), ("voice", VOICE_VALUES)):
            for n, label in names.items():
                lines.append(f"| {m} | {label} | {result['links'][m][n]:.2f} |")
    return "\n".join(lines) + "\n"
