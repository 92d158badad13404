"""Train/serve parity: a corpus file through the training dataset and through the service's
request path gives identical tensors (DESIGN.md, One media pipeline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facevoice.service.media import AssociationAudio, FaceImage, Speech2FaceAudio
from facevoice.service.preprocess import face_query, voice_query
from facevoice.training.datasets import MediaDataset


@pytest.mark.parametrize("modality,frontend", [
    ("voice", AssociationAudio()),
    ("voice", AssociationAudio(seconds=3.0)),  # the small config's shorter clips
    ("voice", Speech2FaceAudio()),
    ("face", FaceImage()),
    ("face", FaceImage(size=112)),
])
def test_dataset_and_service_give_identical_tensors(corpus, modality, frontend):
    out, _ = corpus
    ds = MediaDataset(out, modality, "train", frontend)
    assert len(ds) == 28  # 14 train identities x 2 items
    for k in (0, len(ds) - 1):
        tensor, label = ds[k]
        data = (out / ds.items[k].path).read_bytes()
        served = face_query(data, frontend) if modality == "face" else voice_query(data, frontend)
        assert served.shape == (1, *tensor.shape)
        assert torch.equal(tensor, torch.from_numpy(served[0]))
        assert ds.identities[label] == ds.items[k].identity


def test_shapes_of_the_paper_inputs(corpus):
    out, _ = corpus
    voice = MediaDataset(out, "voice", "test", Speech2FaceAudio())[0][0]
    face = MediaDataset(out, "face", "test", FaceImage())[0][0]
    assert tuple(voice.shape) == (2, 598, 257) and tuple(face.shape) == (3, 224, 224)
    assert np.isfinite(voice.numpy()).all()
