"""A corpus split decoded once for Speech2Face (memory-mapped float16 arrays, as the association
model's): face images and canonical faces through `FaceImage`, voices through `Speech2FaceAudio`
(the [2, T, 257] power-law complex spectrogram). Everything goes through service.media."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facevoice.service.corpus import ATTRIBUTES, read_manifest
from facevoice.service.media import FaceImage
from facevoice.training.association.data import STORE, Modality, _Rows, cache_key, decode_items
from facevoice.training.speech2face.config import S2FConfig


@dataclass
class S2FSplit:
    identities: list[str]
    attributes: list[dict[str, str]]
    face: Modality
    voice: Modality
    canonical: np.ndarray | None  # [identities, 3, size, size] normalised; None where the corpus has none
    # items the service's front end refuses (a face its guard does not find), left out: modality -> ids
    refused: dict[str, list[str]] = field(default_factory=dict)

    def items_of(self, modality: str, identity: int) -> np.ndarray:
        return np.flatnonzero(getattr(self, modality).identity == identity)

    def face_means(self, features: torch.Tensor) -> torch.Tensor:
        """[identities, d]: the mean of `features` (one row per face) over each person's photos."""
        return torch.stack([features[self.items_of("face", i)].mean(0) for i in range(len(self.identities))])


def load_s2f_split(corpus: Path, split: str, cfg: S2FConfig, cache_dir: Path, workers: int = 2,
                   progress: bool = True, seconds: float | None = None, modalities=("face", "voice"),
                   store=STORE) -> S2FSplit:
    """Faces (and canonical faces) at cfg.face.size, voices as `seconds` (default cfg.voice.seconds)
    of spectrogram, as `store` (EXACT for evaluation). `modalities` limits what is decoded. A face
    or clip the front end refuses is left out and listed in `refused`, as `index build` leaves it
    out (a person keeps their other items); a canonical face it refuses fails the split."""
    corpus = Path(corpus)
    items = [i for i in read_manifest(corpus) if i.split == split]
    identities = sorted({i.identity for i in items})
    if not identities:
        raise ValueError(f"{corpus}: no items in split {split!r}")
    index = {name: k for k, name in enumerate(identities)}
    attributes: list[dict[str, str]] = [{} for _ in identities]
    for i in items:
        attributes[index[i.identity]] = {a: getattr(i, a) for a in ATTRIBUTES}
    frontends = {"face": cfg.face.frontend(), "voice": cfg.voice.frontend(seconds)}
    mods: dict[str, Modality | None] = {"face": None, "voice": None}
    refused: dict[str, list[str]] = {}
    for modality in modalities:
        chosen = [i for i in items if i.modality == modality]
        if not chosen:
            raise ValueError(f"{corpus}: no {modality} items in split {split!r}")
        lost: list[int] = []
        data = decode_items(corpus, chosen, frontends[modality], Path(cache_dir),
                            cache_key(corpus, split, modality, frontends[modality], store), workers, progress, store,
                            lost)
        if lost:
            refused[modality] = [chosen[k].item_id for k in lost]
            keep = np.setdiff1d(np.arange(len(chosen)), lost)
            data, chosen = _Rows(data, keep), [chosen[k] for k in keep]
        mods[modality] = Modality(data, np.array([index[i.identity] for i in chosen]), [i.item_id for i in chosen],
                                  np.array([i.video for i in chosen]))
    canonical = None
    chosen = [i for i in items if i.modality == "canonical_face"]
    if "face" in modalities and chosen:
        data = decode_items(corpus, chosen, frontends["face"], Path(cache_dir),
                            cache_key(corpus, split, "canonical_face", frontends["face"], store), workers, progress,
                            store)
        canonical = np.zeros((len(identities), *data.shape[1:]), dtype=data.dtype)
        for k, item in enumerate(chosen):
            canonical[index[item.identity]] = data[k]
    return S2FSplit(identities, attributes, mods["face"], mods["voice"], canonical, refused)


def to_rgb(normalised: torch.Tensor, frontend: FaceImage) -> torch.Tensor:
    """FaceImage-normalised [B, 3, H, W] -> RGB in [0, 1] (the decoder's output space)."""
    mean = torch.tensor(frontend.mean, device=normalised.device).view(1, 3, 1, 1)
    std = torch.tensor(frontend.std, device=normalised.device).view(1, 3, 1, 1)
    x = normalised * std + mean
    return (x.flip(1) if frontend.channels == "BGR" else x).clamp(0, 1)


def to_normalised(rgb: torch.Tensor, frontend: FaceImage) -> torch.Tensor:
    """RGB in [0, 1] -> the face network's input normalisation (its channel order too)."""
    mean = torch.tensor(frontend.mean, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(frontend.std, device=rgb.device).view(1, 3, 1, 1)
    return ((rgb.flip(1) if frontend.channels == "BGR" else rgb) - mean) / std


def rows_tensor(data: np.ndarray, rows) -> torch.Tensor:
    """float32 tensor of data[rows] (data may be a float16 memmap)."""
    return torch.from_numpy(np.asarray(data[np.asarray(rows)], dtype=np.float32))
