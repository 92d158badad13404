"""Item-level matching trials on one split (Kim et al. 2018 sec. 3 and 4.4, Table 3): a probe of
one modality, the true match and impostors of the other, under demographic controls."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facevoice.training.association.data import SplitData
from facevoice.training.corpus.oracle import CONTROLS, sample_trials

REFERENCE = {"v2f": ("voice", "face"), "f2v": ("face", "voice")}
LARGEST_GROUP = "largest group"


@dataclass
class ItemTrials:
    """probe rows of the reference modality; candidates [T, N] rows of the other, true match first."""

    probe: np.ndarray
    candidates: np.ndarray
    anchor_identity: np.ndarray


def _usable(split: SplitData) -> np.ndarray:
    have = [set(split.face.identity.tolist()), set(split.voice.identity.tolist())]
    return np.array(sorted(have[0] & have[1]))


def _rows(split: SplitData, modality: str) -> list[np.ndarray]:
    ident = getattr(split, modality).identity
    return [np.flatnonzero(ident == i) for i in range(len(split.identities))]


def largest_group(split: SplitData) -> tuple[tuple[str, ...], list[int]]:
    """Kim Table 3, G/E/F/A: the largest homogeneous gender/group/language/age cohort."""
    keys = CONTROLS["G/E/F/A"]
    cohorts: dict[tuple[str, ...], list[int]] = {}
    for i in _usable(split):
        cohorts.setdefault(tuple(split.attributes[i].get(k, "") for k in keys), []).append(int(i))
    name, members = max(cohorts.items(), key=lambda kv: (len(kv[1]), kv[0]))
    return name, members


def annotated(split: SplitData, control: str) -> bool:
    keys = CONTROLS.get(control, CONTROLS["G/E/F/A"])
    return all(split.attributes[i].get(k) for i in _usable(split) for k in keys)


def identity_pairs(split: SplitData, control: str, n: int, rng: np.random.Generator):
    """(anchor, impostor) identity indices; the impostor shares the control's attributes."""
    usable = _usable(split)
    if control == LARGEST_GROUP:
        _, members = largest_group(split)
        usable = np.array(members)
        control = "-"
    if len(usable) < 2:
        raise ValueError(f"fewer than two identities for control {control!r}")
    attrs = [split.attributes[i] for i in usable]
    t = sample_trials(attrs, control, n, rng)
    return usable[t.anchor], usable[t.impostor]


def matching_trials(split: SplitData, direction: str, control: str, n: int, seed: int,
                    n_way: int = 2) -> ItemTrials:
    """n trials; 1:2 under a control, or 1:N (n_way > 2) without one."""
    rng = np.random.default_rng(seed)
    ref, other = REFERENCE[direction]
    ref_rows, other_rows = _rows(split, ref), _rows(split, other)
    if n_way == 2:
        anchors, impostors = identity_pairs(split, control, n, rng)
        impostors = impostors[:, None]
    else:
        usable = _usable(split)
        if len(usable) < n_way:
            raise ValueError(f"1:{n_way} needs {n_way} identities, the split has {len(usable)}")
        anchors = rng.choice(usable, size=n)
        impostors = np.stack([rng.choice(usable[usable != a], size=n_way - 1, replace=False) for a in anchors])
    probe = np.array([rng.choice(ref_rows[a]) for a in anchors])
    cands = np.empty((n, n_way), dtype=int)
    for t, a in enumerate(anchors):
        cands[t, 0] = rng.choice(other_rows[a])
        cands[t, 1:] = [rng.choice(other_rows[b]) for b in impostors[t]]
    return ItemTrials(probe, cands, anchors)
