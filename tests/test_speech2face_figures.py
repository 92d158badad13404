"""Oh et al.'s remaining figures on the toy corpus, without a trained Speech2Face stack: Fig. 4's
attribute classifier on pixels (pixel_attributes.py), and Fig. 4(b), 6 and 7 (figures.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facevoice.training.speech2face.config import load_config
from facevoice.training.speech2face.data import load_s2f_split, rows_tensor, to_rgb
from facevoice.training.speech2face.figures import (
    dataset_statistics,
    fig4b,
    fig6,
    fig7,
    retrieval_examples,
    same_clips,
)
from facevoice.training.speech2face.pixel_attributes import (
    attribute_classes,
    auto_steps,
    classifier_record,
    pixel_agreement,
    train_pixel_classifier,
)
from tests.test_speech2face_train import TINY
from tests.toy_corpus import build_toy_corpus

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy corpus (24 people: 12 train, 6 val, 6 test; 2 photos and 2 clips each), its faces
    at 32 px, and its test voices at 1 s and 2 s."""
    root = build_toy_corpus(tmp_path_factory.mktemp("toy"))
    cfg = load_config("small", TINY)
    cache = root / "cache"
    train = load_s2f_split(root, "train", cfg, cache, 1, False, modalities=("face",))
    test = {s: load_s2f_split(root, "test", cfg, cache, 1, False, seconds=s) for s in (1.0, 2.0)}
    return root, cfg, train, test


def test_the_pixel_classifier_reads_photos_and_scores_reconstructions(toy):
    """60 steps on the 24 training photos. The toy corpus's appearance group is its faces' hue
    (A: the first half of the hue range), which pixels show: on the 12 test photos of 6 new people
    it scores 10-12 right (measured over seeds 0-4 at 30-120 steps; majority 6). Its gender labels
    are not drawn from the faces (tests/toy_corpus.py), so gender is not asserted. The toy corpus
    has one age group, which leaves age out."""
    _, cfg, train, test = toy
    split = test[2.0]
    assert attribute_classes(train) == {"gender": ["female", "male"], "appearance_group": ["A", "B"]}
    clf = train_pixel_classifier(train, cfg.face.frontend(), steps=60, seed=0, progress=False)
    assert clf.train_photos == 24 and classifier_record(clf)["steps"] == 60
    photos = to_rgb(rows_tensor(split.face.data, range(len(split.face.item_ids))), cfg.face.frontend())
    # as "reconstructions": each clip gets its speaker's first photo; as F2F: each photo itself
    first = np.array([split.items_of("face", i)[0] for i in split.voice.identity])
    out = pixel_agreement(clf, split, photos[first], photos)
    for attr, v in out.items():
        assert v["classes"] == attribute_classes(train)[attr] and v["chance"] == 0.5
        assert sum(map(sum, v["confusion"])) == 24 and sum(map(sum, v["confusion_truth"])) == 12  # pairs; clips
        assert 0 <= v["agreement"] <= 1 and v["majority"] == 0.5
        assert v["f2f_accuracy"] == v["photo_accuracy"]  # the photo itself, through RGB and back
    appearance = out["appearance_group"]
    assert appearance["photo_accuracy"] >= 10 / 12
    # a reconstruction that is the speaker's photo agrees with that photo's label: the first
    # photo's half of the pairs at least
    assert appearance["agreement"] >= 0.5


def test_the_classifier_trains_75_passes_over_the_photos_unless_told():
    assert [auto_steps(n) for n in (10, 24, 840, 10**6)] == [50, 56, 1969, 5000]  # 75 n / 32 within [50, 5000]


def test_fig4b_counts_each_splits_people_by_attribute(toy, tmp_path):
    root = toy[0]
    stats = dataset_statistics(root)
    assert list(stats) == ["train", "val", "test"]
    assert [stats[s]["people"] for s in stats] == [12, 6, 6]
    assert stats["train"]["gender"] == {"female": 6, "male": 6} and stats["test"]["age_group"] == {"30s": 6}
    # appearance A is the first half of the people (k < 12): train k = 0,1,4,5,8,9; test k = 3,7,11
    assert stats["train"]["appearance_group"] == {"A": 6, "B": 6} and stats["test"]["appearance_group"] == {
        "A": 3, "B": 3}
    path = fig4b(stats, tmp_path / "fig4b_dataset.png")
    assert path.read_bytes()[:8] == PNG


def test_fig6_shows_the_same_clip_at_each_duration(toy, tmp_path):
    _, cfg, _, test = toy
    people, rows = same_clips(test, 4)
    assert people == [0, 1, 2, 3]
    for s in test:
        assert [test[s].voice.item_ids[r] for r in rows[s]] == [test[2.0].voice.item_ids[r] for r in rows[2.0]]
    drawn = []

    def reconstruct(v: torch.Tensor) -> torch.Tensor:
        drawn.append(len(v))
        return v[:, :3, None, None].sigmoid().expand(-1, 3, 8, 8)  # a flat colour per clip

    v_s = {s: torch.randn(len(test[s].voice.item_ids), 16) for s in test}
    path = fig6(test, v_s, reconstruct, cfg.face.frontend(), tmp_path / "fig6_durations.png", people=4)
    assert path.read_bytes()[:8] == PNG and drawn == [4, 4]  # one row of 4 people per duration


def test_fig7_ranks_the_gallery_and_marks_the_speaker(toy, tmp_path):
    """A query equal to its speaker's photo feature finds that photo first; the reverse query
    (its negative) ranks it last of the 6."""
    _, cfg, _, test = toy
    split = test[2.0]
    v_f = torch.randn(len(split.face.item_ids), 16)
    own = torch.stack([v_f[split.items_of("face", i)[0]] for i in split.voice.identity])
    perfect = retrieval_examples(own, v_f, split)
    assert [e["true_rank"] for e in perfect] == [1] * 5 and all(len(e["top"]) == 5 for e in perfect)
    assert [split.face.identity[e["top"][0]] for e in perfect] == [0, 1, 2, 3, 4] and perfect[0]["gallery"] == 6
    assert [e["true_rank"] for e in retrieval_examples(-own, v_f, split)] == [6] * 5
    s2f = torch.rand(len(split.voice.item_ids), 3, 32, 32)
    path = fig7(perfect, split, s2f, cfg.face.frontend(), tmp_path / "fig7_retrieval.png")
    assert path.read_bytes()[:8] == PNG
