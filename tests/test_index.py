"""FAISS galleries (exact, IVF, HNSW; filters; edits) and index versions on disk."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from facevoice.service.gallery import Gallery, Item, normalise
from facevoice.service.planner import ground_truth, plan_and_build, recall
from facevoice.service.versions import (
    IndexMeta,
    IndexVersionError,
    current_version,
    load_version,
    publish,
    read_meta,
    write_version,
)


def clustered(n: int, dim: int = 16, clusters: int = 40, seed: int = 0) -> np.ndarray:
    """Neighbourhood structure like real embeddings (recall on uniform noise means nothing); the
    same clusters for every `seed`, which only draws the points."""
    centres = np.random.default_rng(0).standard_normal((clusters, dim)) * 4
    rng = np.random.default_rng(seed + 1)
    return (centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim))).astype(np.float32)


def items(n: int) -> list[Item]:
    return [Item(f"item{i}", f"id{i // 2}", {"gender": "female" if i % 2 else "male"}) for i in range(n)]


def gallery(x, kind="flat", metric="l2", **kw) -> Gallery:
    index, plan = plan_and_build(x, metric, kind=kind, **kw)
    return Gallery(index, dict(enumerate(items(len(x)))), metric, plan)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_reaches_the_recall_it_reports(kind):
    x = clustered(6000)
    index, plan = plan_and_build(x, "l2", kind=kind, target_recall=0.95)
    assert plan.kind == kind and plan.recall_at_10 >= 0.95
    knob = "nprobe" if kind == "ivf" else "efSearch"
    assert knob in plan.params
    # measured again on queries the tuner did not see
    fresh = clustered(300, seed=5)
    assert recall(index.search(fresh, 10)[1], ground_truth(x, fresh, "l2", 10)) >= 0.9


def test_auto_is_exact_below_the_threshold_and_ivf_above():
    x = clustered(3000)
    assert plan_and_build(x, "l2", exact_below=5000)[1].kind == "flat"
    assert plan_and_build(x, "l2", exact_below=1000)[1].kind == "ivf"


def test_exact_search_distances_are_euclidean_and_sorted():
    x = clustered(200)
    g = gallery(x)
    found = g.search(x[3] + 0.5, 5)
    expect = np.sort(np.linalg.norm(x - (x[3] + 0.5), axis=1))[:5]
    assert np.allclose([d for _, d in found], expect, rtol=1e-4, atol=1e-4)


def test_cosine_distance_is_one_minus_cosine():
    x = normalise(clustered(100))
    g = gallery(x, metric="cosine")
    q = clustered(1, seed=3)[0]
    (_, d), *_ = g.search(q, 1)
    assert d == pytest.approx(1 - (x @ (q / np.linalg.norm(q))).max(), abs=1e-5)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_filters_deletes_and_upserts(kind):
    x = clustered(4000)
    g = gallery(x, kind)
    assert all(it.attributes["gender"] == "female" for it, _ in g.search(x[10], 20, {"gender": {"female"}}))
    assert g.search(x[10], 5, {"gender": {"nobody"}}) == []
    top = g.search(x[10], 1)[0][0].item_id
    assert g.delete([top, "no-such-item"]) == ["no-such-item"]
    assert top not in [it.item_id for it, _ in g.search(x[10], 10)]
    g.upsert([Item("new", "idnew", {"gender": "male"})], x[10:11])
    assert g.search(x[10], 1)[0][0].item_id == "new"
    g.upsert([Item("new", "idnew", {"gender": "female"})], x[20:21])  # replace: one entry, new vector
    assert [it.item_id for it, _ in g.search(x[10], 50)].count("new") == 0
    assert g.search(x[20], 1)[0][0].item_id in ("new", "item20")
    assert g.size == 4000


def test_wrong_dimension_is_a_bad_request():
    from facevoice.service.errors import BadRequest

    with pytest.raises(BadRequest, match="dimensions"):
        gallery(clustered(50)).search(np.zeros(7, np.float32), 1)


def test_versions_publish_load_and_refuse(tmp_path):
    x = clustered(500)
    index, plan = plan_and_build(x, "l2", kind="flat")
    v1 = write_version(tmp_path, "face", index, items(500), plan, model_version="m1", metric="l2")
    assert current_version(tmp_path, "face") is None  # written is not served
    publish(tmp_path, "face", v1)
    assert current_version(tmp_path, "face") == v1
    g = load_version(tmp_path, "face", v1, "m1")
    assert g.size == 500 and g.search(x[7], 1)[0][0].item_id == "item7"
    assert read_meta(tmp_path, "face", v1).model_version == "m1"
    with pytest.raises(IndexVersionError, match="model version m1"):
        load_version(tmp_path, "face", v1, "m2")
    # tampering with any file is caught by the checksums
    path = tmp_path / "face" / v1 / "items.item_id.data.npy"
    path.write_bytes(path.read_bytes().replace(b"item7", b"item8"))
    with pytest.raises(IndexVersionError, match="checksum"):
        load_version(tmp_path, "face", v1, "m1")
    with pytest.raises(IndexVersionError, match="no such"):
        publish(tmp_path, "face", "nope")


def test_a_crash_mid_write_leaves_the_served_version(tmp_path, monkeypatch):
    x = clustered(100)
    index, plan = plan_and_build(x, "l2", kind="flat")
    v1 = write_version(tmp_path, "voice", index, items(100), plan, model_version="m", metric="l2")
    publish(tmp_path, "voice", v1)

    def die(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", die)  # the fault cannot be caused for real here
    with pytest.raises(OSError):
        write_version(tmp_path, "voice", index, items(100), plan, model_version="m", metric="l2")
    assert current_version(tmp_path, "voice") == v1
    versions = [p.name for p in (tmp_path / "voice").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert versions == [v1]
    assert load_version(tmp_path, "voice", v1, "m").size == 100


def test_meta_holds_the_plan_whole_and_reads_versions_written_before_it(tmp_path):
    import dataclasses
    import json

    x = clustered(2000)
    index, plan = plan_and_build(x, "l2", kind="ivf", target_recall=0.9)
    v = write_version(tmp_path, "face", index, items(2000), plan, model_version="m1", metric="l2", runner="triton",
                      details={"gallery": "g.csv"})
    meta = IndexMeta.read(tmp_path / "face" / v)
    assert meta.plan == plan and meta.runner == "triton" and meta.details == {"gallery": "g.csv"}
    assert IndexMeta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    # a meta.json written before IndexMeta: the plan's fields at the top level and its name under "plan"
    flat = {**{k: val for k, val in meta.to_dict().items() if k != "plan"},
            **{k: val for k, val in dataclasses.asdict(plan).items() if k != "name"}, "plan": plan.name}
    assert IndexMeta.from_dict(flat) == meta
