"""How much S2F retrieval a face feature space allows on a synthetic corpus, whatever the voice
encoder: `python -m facevoice.training.speech2face.ceiling --corpus demo/corpus --face-net FACE_NET.pt`.

Every row queries the paper's galleries (one photo per test person, `measures.retrieval`) by cosine
with a prediction made from the generator's audible voice parameters, i.e. from a voice encoder that
heard them perfectly:

- `ridge`: the ridge readout `eval s2f` reports (`voice_parameter_readout`), the conditional mean of v_f;
- `ranking`: a linear map trained for the ranking itself (MSE to the speaker's mean v_f plus a softmax
  over all training photos by cosine), in case the conditional mean is a poor cosine query;
- `ideal:*`: no network at all. The face feature is made of the generator's own face parameters
  (`IDEAL_PARTS`), one feature per person, read out by ridge: what a face network that encoded
  exactly those and nothing else would allow.

The oracle on the same galleries (the generator's joint model) is the last row."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from facevoice.cli import run_script
from facevoice.service.errors import CorpusError
from facevoice.training.association.data import Modality
from facevoice.training.corpus.oracle import corpus_people, identity_scores
from facevoice.training.corpus.people import APPEARANCE_GROUPS, Person
from facevoice.training.speech2face.checkpoints import load_face_net
from facevoice.training.speech2face.data import S2FSplit, load_s2f_split
from facevoice.training.speech2face.features import face_features
from facevoice.training.speech2face.measures import retrieval, voice_parameter_readout, voice_parameters

# face parameters by what a voice carries of them (training/corpus/people.py): demographics,
# the two geometry scores linked to the voice, and parameters drawn independently of the voice
IDEAL_PARTS = {
    "demographics": lambda f: [float(f.gender == "male"), *(float(f.appearance_group == g) for g in APPEARANCE_GROUPS),
                               f.face_age / 15],
    "linked geometry": lambda f: [f.face_width, f.nose_width],
    "unlinked": lambda f: [float(f.glasses), float(f.beard), f.hair_style / 2, f.face_height, f.jaw, f.eye_size,
                           f.lip_thickness],
}
IDEAL = {"demographics": ("demographics",), "demographics + linked geometry": ("demographics", "linked geometry"),
         "all": ("demographics", "linked geometry", "unlinked")}


def ideal_features(people: list[Person], parts: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([[v for p in parts for v in IDEAL_PARTS[p](person.face)] for person in people],
                        dtype=torch.float32)


def ranking_readout(people: dict[str, Person], train: S2FSplit, train_vf: torch.Tensor, test: S2FSplit,
                    temperature: float = 0.05, steps: int = 600, seed: int = 0) -> torch.Tensor:
    """A linear map from the audible voice parameters to v_f, trained with MSE to each training
    speaker's mean v_f (scaled by its variance) plus a softmax over all training photos by cosine
    at `temperature`; one prediction per test clip."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_train, x_test = voice_parameters(people, train, test)
    x_train, x_test = torch.from_numpy(x_train).float(), torch.from_numpy(x_test).float()
    ident = torch.from_numpy(train.face.identity)
    mean_vf = train.face_means(train_vf)
    gallery = F.normalize(train_vf, dim=1)
    m = torch.nn.Linear(x_train.shape[1], train_vf.shape[1])
    opt = torch.optim.Adam(m.parameters(), 1e-2, weight_decay=1e-4)
    for _ in range(steps):
        who = torch.from_numpy(rng.integers(len(train.identities), size=64))
        pred = m(x_train[who])
        logits = F.normalize(pred, dim=1) @ gallery.T / temperature
        own = ident[None, :] == who[:, None]
        nce = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~own, -torch.inf), 1)
        loss = F.mse_loss(pred, mean_vf[who]) / mean_vf.var() + nce.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return m(x_test)[torch.from_numpy(test.voice.identity)]


def _one_per_person(split: S2FSplit) -> S2FSplit:
    """The split with one face and one voice row per identity (for per-person ideal features)."""
    rows = np.arange(len(split.identities))
    mod = lambda: Modality(np.zeros((len(rows), 1)), rows.copy(), list(split.identities))  # noqa: E731
    return S2FSplit(split.identities, split.attributes, mod(), mod(), None)


@dataclass(frozen=True)
class CeilingsResult:
    corpus: Path
    face_net: Path
    rows: dict[str, dict]  # query name -> `retrieval`'s result (cosine R@K, and its 95% interval where known)

    def summary(self) -> str:
        lines = [f"S2F retrieval ceilings of {self.face_net} on {self.corpus} (one photo per test person, cosine):",
                 f"  {'query':40s} R@1   R@5   R@10  (95% interval)"]
        for name, r in self.rows.items():
            c = r["cosine"]
            ci = "" if "cosine_ci" not in r else "({:.1f}-{:.1f})".format(*(100 * v for v in r["cosine_ci"][10]))
            lines.append(f"  {name:40s} " + " ".join(f"{100 * c[k]:5.1f}" for k in (1, 5, 10)) + f"  {ci}")
        return "\n".join(lines)


def ceilings(corpus: Path, face_net: Path, cache: Path, workers: int = 2, progress: bool = True,
             threads: int = 0) -> CeilingsResult:
    """Each row's cosine R@K on the paper's galleries (and its 95% interval at K = 10); `threads`:
    torch CPU threads (0: leave them)."""
    if threads:
        torch.set_num_threads(threads)
    generator = corpus_people(corpus)
    if generator is None:
        raise CorpusError(f"{corpus}: no generator parameters (corpus.json, identities.csv): the ceilings need them")
    model, people = generator
    device = torch.device("cpu")
    net, cfg = load_face_net(face_net, device)
    train = load_s2f_split(corpus, "train", cfg, cache, workers, progress, modalities=("face",))
    test = load_s2f_split(corpus, "test", cfg, cache, workers, progress)
    train_vf, test_vf = face_features(net, train.face.data, device), face_features(net, test.face.data, device)
    oracle = identity_scores(model, [people[i] for i in test.identities], "v2f")
    steps = tqdm(total=2 + len(IDEAL), desc="ceilings", disable=not progress)
    ridge = retrieval(voice_parameter_readout(people, train, train_vf, test), test_vf, test, oracle)
    out = {"ridge": ridge}
    steps.update()
    out["ranking"] = retrieval(ranking_readout(people, train, train_vf, test), test_vf, test)
    steps.update()
    tr1, te1 = _one_per_person(train), _one_per_person(test)
    for name, parts in IDEAL.items():
        feats = [ideal_features([people[i] for i in split.identities], parts) for split in (tr1, te1)]
        out[f"ideal: {name}"] = retrieval(voice_parameter_readout(people, tr1, feats[0], te1), feats[1], te1)
        steps.update()
    out["oracle (the generator's joint model)"] = {"cosine": ridge["oracle"]}
    steps.close()
    return CeilingsResult(corpus, face_net, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--face-net", type=Path, required=True)
    p.add_argument("--cache-dir", type=Path, default=Path("runs/s2f-cache"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    print(ceilings(args.corpus, args.face_net, args.cache_dir, progress=not args.no_progress,
                   threads=args.threads).summary())
    return 0


if __name__ == "__main__":
    run_script(main, "python -m facevoice.training.speech2face.ceiling")
