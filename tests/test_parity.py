"""Train/serve parity (docs/architecture.md, "One media pipeline"): a corpus file becomes, in what training
feeds a network (the float16 cache, through the tuple and pair samplers' crops), the float16
rounding of what the service decodes for it, and in what evaluation embeds, exactly that."""

from __future__ import annotations

import numpy as np
import torch

from facevoice.service.corpus import read_manifest
from facevoice.service.embedder import Embedder
from facevoice.service.media import FaceImage, Speech2FaceAudio
from facevoice.service.media.frontends import model_input
from facevoice.service.repository import FACE, FACE_FEATURE, S2F_VOICE, VOICE
from facevoice.service.repository import open_repository as read_repository
from facevoice.service.runners import EmbeddedRunner
from facevoice.training.association.checkpoints import load_run
from facevoice.training.association.data import EXACT, STORE, load_split, windows
from facevoice.training.speech2face.checkpoints import load_s2f_run
from facevoice.training.speech2face.data import load_s2f_split, rows_tensor


def served(stack, space: str, split: str, modality: str) -> tuple[np.ndarray, list[str]]:
    """What the exported repository's Embedder decodes for every item of the split, in manifest order."""
    embedder = Embedder(read_repository(stack.repo), EmbeddedRunner(stack.repo))
    items = [i for i in read_manifest(stack.corpus) if i.split == split and i.modality == modality]
    return np.stack([embedder.decode(space, (stack.corpus / i.path).read_bytes()) for i in items]), \
        [i.item_id for i in items]


def test_association_training_and_evaluation_feed_what_the_service_decodes(stack, tmp_path):
    _, cfg, _ = load_run(stack.association, "best.pt", torch.device("cpu"))
    train = load_split(stack.corpus, "train", cfg, tmp_path, workers=1, progress=False)
    exact = load_split(stack.corpus, "train", cfg, tmp_path, workers=1, progress=False,
                       voice_frontend=cfg.voice.frontend(), store=EXACT)
    assert train.face.data.dtype == STORE and exact.face.data.dtype == EXACT
    faces, face_ids = served(stack, FACE, "train", "face")
    voices, voice_ids = served(stack, VOICE, "train", "voice")
    assert train.face.item_ids == face_ids and train.voice.item_ids == voice_ids and len(voices) >= 10
    rows = list(range(len(voices)))
    # the tuple sampler's voice window (crop "first": from sample 0) of the longer training decode
    fed = windows(train.voice.data, rows, [0] * len(rows), cfg.voice.frontend().samples)
    assert np.array_equal(fed, voices.astype(STORE).astype(np.float32))
    assert np.array_equal(np.asarray(train.face.data, np.float32), faces.astype(STORE).astype(np.float32))
    assert np.array_equal(exact.voice.data, voices) and np.array_equal(exact.face.data, faces)
    assert 0 < np.abs(np.asarray(train.face.data, np.float32) - faces).max() < 2e-2  # the rounding is real


def test_speech2face_training_and_evaluation_feed_what_the_service_decodes(stack, tmp_path):
    cfg = load_s2f_run(stack.s2f, "best.pt", torch.device("cpu"))[3]
    train = load_s2f_split(stack.corpus, "train", cfg, tmp_path, workers=1, progress=False)
    exact = load_s2f_split(stack.corpus, "train", cfg, tmp_path, workers=1, progress=False, store=EXACT)
    faces, _ = served(stack, FACE_FEATURE, "train", "face")
    voices, _ = served(stack, S2F_VOICE, "train", "voice")
    rows = np.arange(len(voices))
    assert torch.equal(rows_tensor(train.voice.data, rows), torch.from_numpy(voices.astype(STORE).astype(np.float32)))
    assert torch.equal(rows_tensor(train.face.data, np.arange(len(faces))),
                       torch.from_numpy(faces.astype(STORE).astype(np.float32)))
    assert np.array_equal(exact.voice.data, voices) and np.array_equal(exact.face.data, faces)


def test_shapes_of_the_paper_inputs(corpus):
    out, _ = corpus
    items = read_manifest(out)
    voice = next(i for i in items if i.modality == "voice")
    face = next(i for i in items if i.modality == "face")
    spec = model_input((out / voice.path).read_bytes(), Speech2FaceAudio())
    image = model_input((out / face.path).read_bytes(), FaceImage())
    assert spec.shape == (2, 598, 257) and image.shape == (3, 224, 224)
    assert spec.dtype == image.dtype == np.float32 and np.isfinite(spec).all()
