"""`facevoice eval service` (facevoice.served): the served models queried through the running
service on a held-out corpus, recall@K beside chance."""

from __future__ import annotations

import numpy as np
import pytest

from facevoice import served
from facevoice.served import EvalServiceOptions, EvalServiceResult, eval_service
from facevoice.service.errors import FormatError


def test_chance_is_the_share_of_random_top_k_that_hold_an_own_item():
    assert served.chance(100, 1, 10) == pytest.approx(0.10)
    assert served.chance(1200, 4, 10) == pytest.approx(1 - np.prod([(1196 - i) / (1200 - i) for i in range(10)]))
    assert served.chance(5, 2, 10) == 1.0  # K beyond the gallery: every item is returned
    rng = np.random.default_rng(0)  # and by drawing
    draws = [len({0, 1} & set(rng.choice(50, 5, replace=False))) > 0 for _ in range(20000)]
    assert abs(np.mean(draws) - served.chance(50, 2, 5)) < 0.01


def test_recall_cell_counts_a_query_with_an_own_item_in_its_top_k():
    hits = [[False, True], [False, False], [True], []]
    cell = served.recall_cell(hits, ["a", "a", "b", "c"], 1)
    assert cell["recall"] == 0.25 and cell["people"] == 3 and cell["queries"] == 4
    assert served.recall_cell(hits, ["a", "a", "b", "c"], 2)["recall"] == 0.5
    lo, hi = cell["ci95"]
    assert 0 <= lo <= 0.25 <= hi <= 1


def test_recall_by_person_reads_the_first_distinct_people():
    # "a" has its first item at rank 12 but is the 3rd person: a miss by item at K=10, a hit by person
    ranked = ["b"] * 6 + ["c"] * 5 + ["a", "c", "d"]
    assert served.distinct(ranked) == ["b", "c", "a", "d"]
    by_item, by_person = served.hit_lists(ranked, "a")
    assert len(by_item) == 10 and not any(by_item)
    assert by_person == [False, False, True, False]
    assert served.hit_lists(ranked, "b") == ([True] * 6 + [False] * 4, [True, False, False, False])
    assert served.hit_lists([], "a") == ([], [])  # a refused query: a miss both ways


@pytest.mark.timeout(900)  # the stack fixture trains its tiny models first when this runs alone
def test_the_command_on_a_held_out_corpus(stack, tmp_path):
    """The tiny stack's release served on a corpus of new people: every search answers every
    query, and recall lies between chance-like and perfect with its interval around it."""
    out = tmp_path / "report"
    got = eval_service(EvalServiceOptions(model_repo=stack.repo, corpora=tmp_path / "held", seeds=(9002,),
                                          identities=12, out=out, no_progress=True))
    result = EvalServiceResult.read(out)
    assert result == got  # service.json read back is the result returned
    assert set(result.searches) == {"v2f", "f2v", "s2f"}
    for cell in result.searches.values():
        r10 = cell["recall"][10]
        assert r10["people"] == 12 and r10["queries"] == 48  # 4 photos or clips each; a refused one is a miss
        assert r10["ci95"][0] <= r10["recall"] <= r10["ci95"][1]
        assert 0 < cell["chance"][10] < 1
        # by person: the first 10 of 12 distinct people; never below recall by item at the same K
        assert cell["chance_people"][10] == pytest.approx(10 / 12)
        for k in (1, 5, 10):
            assert cell["recall_people"][k]["recall"] >= cell["recall"][k]["recall"] - 1e-9
    for cell in result.searches.values():
        assert 1 <= cell["people_in_top10"] <= 10 and 0 <= cell["same_gender_in_top10"] <= 1
    assert "| Speech2Face V->F (ReconstructFace nearest) |" in (out / "service.md").read_text()
    assert result.report() == (out / "service.md").read_text()  # the JSON read back renders the same
    summary = got.summary().strip().splitlines()[-1]
    assert summary.startswith("eval service:") and "1 held-out corpus," in summary and "x chance" in summary


def test_a_directory_that_is_no_model_repository_is_a_clear_error(tmp_path):
    with pytest.raises(FormatError, match=r"not a facevoice model repository manifest.*run `facevoice export`"):
        eval_service(EvalServiceOptions(model_repo=tmp_path, corpora=tmp_path, out=tmp_path))
