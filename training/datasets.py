"""Training datasets over a corpus manifest; every item goes through `service.media`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from facevoice.service.media import (
    AssociationAudio,
    FaceImage,
    Speech2FaceAudio,
    association_waveform,
    face_input,
    speech2face_spectrogram,
)
from facevoice.training.corpus.manifest import Item, read_manifest

Frontend = AssociationAudio | Speech2FaceAudio | FaceImage


def load_item(corpus: Path, item: Item, frontend: Frontend) -> torch.Tensor:
    """One manifest item as the model input tensor its frontend defines."""
    data = (Path(corpus) / item.path).read_bytes()
    if isinstance(frontend, FaceImage):
        return torch.from_numpy(face_input(data, frontend))
    if isinstance(frontend, Speech2FaceAudio):
        return torch.from_numpy(speech2face_spectrogram(data, frontend))
    return torch.from_numpy(association_waveform(data, frontend))


class MediaDataset(Dataset):
    """The items of one modality and split: (input tensor, identity index)."""

    def __init__(self, corpus: Path, modality: str, split: str, frontend: Frontend):
        self.corpus, self.frontend = Path(corpus), frontend
        self.items = [i for i in read_manifest(corpus) if i.modality == modality and i.split == split]
        self.identities = sorted({i.identity for i in self.items})
        self._index = {name: k for k, name in enumerate(self.identities)}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        item = self.items[k]
        return load_item(self.corpus, item, self.frontend), self._index[item.identity]
