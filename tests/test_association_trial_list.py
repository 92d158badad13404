"""The trial-list decoder on empty, malformed, mixed and adversarial files."""

from __future__ import annotations

import pytest

from facevoice.training.association.trial_list import modality, parse_trial_list


@pytest.mark.parametrize(("text", "message"), [
    ("", "no trials"),
    ("# only a comment\n\n", "no trials"),
    ("a.wav b.png\n", r"bad\.txt:1: expected"),
    ("a.wav b.png c.png C\n", r"bad\.txt:1: expected"),  # label must be A|B|0|1
    ("a.wav b.png c.png A extra\n", r"bad\.txt:1: expected"),
    ("a.wav b.png c.png A\n1 a.wav b.png\n", "mixes matching and verification"),
    ("2 a.wav b.png\n", r"bad\.txt:1: expected"),  # verification labels are 0 or 1
    ("\x00\x01\x02 \x03\n", r"bad\.txt:1: expected"),
])
def test_malformed_lists_are_rejected_with_the_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        parse_trial_list(path)


def test_both_layouts_parse(tmp_path):
    path = tmp_path / "m.txt"
    path.write_text("# probe a b label\np.wav,a.jpg,b.jpg,b\np.wav a.jpg b.jpg 0  # trailing comment\n")
    assert parse_trial_list(path) == ("matching", [("p.wav", "a.jpg", "b.jpg", 1), ("p.wav", "a.jpg", "b.jpg", 0)])
    path.write_text("1 id1/a.wav id1/b.wav\n0 id1/a.wav id2/c.wav\n")
    assert parse_trial_list(path) == ("verification", [(1, "id1/a.wav", "id1/b.wav"), (0, "id1/a.wav", "id2/c.wav")])


def test_modality_by_extension():
    assert modality("x/y.FLAC") == "voice" and modality("x/y.jpeg") == "face"
    with pytest.raises(ValueError, match="cannot tell audio from image"):
        modality("x/y.txt")
