"""`facevoice query ...` against the real server, and the demo's query stage."""

from __future__ import annotations

from dataclasses import replace

import pytest

from devtools.local_servers import free_port
from facevoice.health import HealthOptions, health
from facevoice.query import (
    CallFailed,
    QueryOptions,
    query_faces,
    query_info,
    query_match,
    query_reconstruct,
    query_voices,
)
from facevoice.service.build import IndexBuildOptions, index_build
from facevoice.service.errors import UsageError
from facevoice.showcase import serve_and_query
from tests.serving import start_service


@pytest.fixture(scope="module")
def server(stack):
    running, _ = start_service(stack, token="t0ken")
    yield f"127.0.0.1:{running.port}"
    running.stop(0)


def _files(stack, identity):
    d = stack.corpus / identity
    return d / "0.wav", d / "0.png"


def test_every_query_verb(stack, server, tmp_path):
    voice, face = _files(stack, "toy003")
    common = QueryOptions(server=server, token="t0ken")
    out = query_faces(replace(common, voice=voice, top_k=3, filter=["gender=male"])).summary()
    assert out.startswith("3 faces (model ") and out.count("gender=male") == 3
    assert query_voices(replace(common, face=face)).summary().startswith("5 voices")
    others = [_files(stack, p)[1] for p in ("toy003", "toy010", "toy020")]
    out = query_match(replace(common, voice=voice, candidates=others)).summary()
    assert "ranking of 3 candidates" in out and all(str(o) in out for o in others)
    png = tmp_path / "face.png"
    query_reconstruct(replace(common, voice=voice, out=png))
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "face_feature" in query_info(common).summary()


def test_health_verb(server):
    result = health(HealthOptions(server=server))
    assert result.status == 0
    assert "SERVING" in result.summary()
    with pytest.raises(CallFailed, match="UNAVAILABLE") as e:
        health(HealthOptions(server=f"127.0.0.1:{free_port()}", timeout=1))
    assert not isinstance(e.value, UsageError)  # a failure: exit 1


def test_errors_are_one_line_and_a_nonzero_exit(stack, server, tmp_path):
    voice, _ = _files(stack, "toy003")
    with pytest.raises(CallFailed, match="UNAUTHENTICATED"):  # no token: a failure, exit 1
        query_faces(QueryOptions(server=server, voice=voice))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"junk")
    with pytest.raises(CallFailed, match="INVALID_ARGUMENT: audio:"):
        query_faces(QueryOptions(server=server, token="t0ken", voice=junk))
    with pytest.raises(UsageError, match="cannot read input"):  # exit 2
        query_faces(QueryOptions(server=server, voice=tmp_path / "missing.wav"))
    with pytest.raises(UsageError, match="NAME=V1,V2"):
        query_faces(QueryOptions(server=server, voice=voice, filter=["gender"]))


# what the ONNX export may differ from torch by, per embedding entry (export's parity check)
PARITY = 1e-4


def _first_hit_bounds(d, query_identity, gallery_identity, eps: float):
    """Per query, the least and the most 0-based rank of its first own item when distances within
    `eps` of each other may come in either order."""
    import numpy as np

    own = gallery_identity[None, :] == query_identity[:, None]
    best = np.where(own, d, np.inf).min(1, keepdims=True)
    other = ~own
    return (other & (d < best - eps)).sum(1), (other & (d < best + eps)).sum(1)


def test_service_recall_equals_offline_recall(stack, tmp_path):
    """Served test-split gallery, every test query through gRPC: the offline evaluation's recall@K,
    and each query's K nearest distances, up to what float rounding in the export can reorder.

    The stack's model is trained 20 iterations, so many of its distances tie to 1e-5; a rank
    between two items closer than the export's parity cannot be decided, and is allowed either way."""
    import numpy as np
    import torch

    from facevoice.showcase import service_recall, test_rows
    from facevoice.training.association.checkpoints import load_run
    from facevoice.training.association.data import load_split
    from facevoice.training.association.embed import split_embeddings
    from facevoice.training.metrics import pairwise_l2
    from facevoice.v1 import facevoice_pb2 as pb

    ks = (1, 5, 10)
    model, cfg, _ = load_run(stack.association, "best.pt", torch.device("cpu"))
    # a distance moves by at most |query error| + |item error| <= 2 sqrt(D) PARITY; two distances
    # closer than twice that may come in either order
    tol = 2 * np.sqrt(cfg.embedding.dim) * PARITY
    split = load_split(stack.corpus, "test", cfg, tmp_path / "cache", workers=1, progress=False)
    emb = split_embeddings(model, cfg, split, "cpu")
    d = pairwise_l2(emb.voice, emb.face)
    offline = {"v2f": (d, split.voice, split.face), "f2v": (d.T, split.face, split.voice)}
    root = tmp_path / "indexes"
    index_build(IndexBuildOptions(gallery=stack.corpus / "manifest.csv", model_repo=stack.repo, out=root,
                                  split=("test",), no_progress=True))
    running, stub = start_service(stack, index_root=root)
    try:
        served = service_recall(stub, stack.corpus, ks)
        nearest = {}
        for r in test_rows(stack.corpus):
            data = (stack.corpus / r.path).read_bytes()
            if r.modality == "voice":
                hits = stub.SearchFaces(pb.SearchFacesRequest(voice=pb.Audio(data=data), top_k=10), timeout=60).hits
            else:
                hits = stub.SearchVoices(pb.SearchVoicesRequest(face=pb.Image(data=data), top_k=10), timeout=60).hits
            nearest[r.item_id] = [(h.distance, h.identity) for h in hits]
    finally:
        running.stop(0)
    decided = 0
    for direction, (dist, query, gallery) in offline.items():
        lo, hi = _first_hit_bounds(dist, query.identity, gallery.identity, 2 * tol)
        for k in ks:
            assert (hi < k).mean() - 1e-9 <= served[direction][k] <= (lo < k).mean() + 1e-9, (direction, k, served)
        for row, item in enumerate(query.item_ids):
            order = np.argsort(dist[row], kind="stable")[:10]
            want = dist[row][order]
            got = np.array([d for d, _ in nearest[item]])
            assert np.allclose(got, want, atol=tol), (direction, item, got, want)  # the same K nearest distances
            gaps = np.diff(np.sort(dist[row]))[:10]
            for j in range(len(order)):  # and the same person wherever the order is decidable
                apart = (j == 0 or gaps[j - 1] > 2 * tol) and (j >= len(gaps) or gaps[j] > 2 * tol)
                if apart:
                    decided += 1
                    person = split.identities[gallery.identity[order[j]]]
                    assert nearest[item][j][1] == person, (direction, item, j)
    assert decided > 0  # else the check above checked nothing


def test_demo_query_stage(stack, tmp_path):
    text = serve_and_query(stack.repo, stack.index_root, stack.corpus, tmp_path, people=2, top_k=3)
    assert text.count("SearchFaces, voice") == 2 and text.count("Match, voice vs") == 2
    assert len(list(tmp_path.glob("*_s2f.png"))) == 2
    assert "true identity in the top 3" in text and (tmp_path / "queries.txt").read_text().strip() == text
    assert "recall@1/5/10 through the service, every test voice -> faces" in text
    assert text.count("the true identity is rank") + text.count("is not in the first") == 4
    assert (tmp_path / "s2f_grid.png").read_bytes().startswith(b"\x89PNG")
