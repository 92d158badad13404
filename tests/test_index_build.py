"""`facevoice index build`: versions per space, bad gallery items skipped, resume, Triton runner."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from devtools.local_servers import LocalTriton
from facevoice.service.build import IndexBuildOptions, index_build
from facevoice.service.errors import FormatError
from facevoice.service.prune import IndexPruneOptions, index_prune
from facevoice.service.publish import IndexPublishOptions, index_publish
from facevoice.service.shards import IndexMergeOptions, index_merge
from facevoice.service.versions import IndexVersionError, current_version, load_version, read_meta


def _gallery_with_a_broken_item(stack, tmp_path):
    gallery = tmp_path / "gallery"
    shutil.copytree(stack.corpus, gallery)
    (gallery / "toy000" / "0.png").write_bytes(b"not a png")
    return gallery / "manifest.csv"


def test_build_skips_bad_items_and_resumes(stack, tmp_path):
    manifest = _gallery_with_a_broken_item(stack, tmp_path)
    out = tmp_path / "indexes"
    opts = IndexBuildOptions(manifest, stack.repo, out, batch=8, no_progress=True)
    text = index_build(opts).summary()
    assert "47 items (1 skipped)" in text and "48 items (0 skipped)" in text
    with open(out / "skipped-face.csv") as f:
        rows = list(csv.reader(f))
    assert rows[1][0] == "toy000-face-0" and "not a readable" in rows[1][1]
    first = {n: current_version(out, n) for n in ("face", "voice", "face_feature")}
    meta = read_meta(out, "face", first["face"])
    assert meta.size == 47 and meta.tuned_on == "queries"
    # resume: the finished batches are reused, not embedded again (their files stay untouched)
    batches = sorted((out / ".build").rglob("*.npz"))
    stamps = [p.stat().st_mtime_ns for p in batches]
    index_build(opts)
    assert [p.stat().st_mtime_ns for p in batches] == stamps
    second = {n: current_version(out, n) for n in first}
    assert all(second[n] != first[n] for n in first)  # a new immutable version each time
    a = load_version(out, "face", first["face"], meta.model_version)
    b = load_version(out, "face", second["face"], meta.model_version)
    q = np.zeros(a.dim, np.float32)
    assert [it.item_id for it, _ in a.search(q, 5)] == [it.item_id for it, _ in b.search(q, 5)]


def test_no_publish_leaves_current_alone(stack, tmp_path):
    out = tmp_path / "indexes"
    shutil.copytree(stack.index_root, out)
    before = current_version(out, "voice")
    built = index_build(IndexBuildOptions(stack.corpus / "manifest.csv", stack.repo, out, modalities=("voice",),
                                          no_publish=True, no_progress=True))
    assert built.published == {}
    assert current_version(out, "voice") == before
    versions = sorted(p.name for p in (out / "voice").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(versions) == 2
    new = next(v for v in versions if v != before)
    # publishing it, then rolling back to the first
    assert index_publish(IndexPublishOptions(out, "voice", new)).before == before
    assert current_version(out, "voice") == new
    assert index_publish(IndexPublishOptions(out, "voice", before)).meta.version == before
    assert current_version(out, "voice") == before
    with pytest.raises(IndexVersionError, match="no such index version"):
        index_publish(IndexPublishOptions(out, "voice", "20990101T000000Z-x"))


def test_build_through_triton_equals_the_embedded_build(stack, tmp_path):
    out = tmp_path / "indexes"
    with LocalTriton(stack.repo, workdir=tmp_path / "triton") as triton:
        index_build(IndexBuildOptions(stack.corpus / "manifest.csv", stack.repo, out, triton_url=triton.grpc_url,
                                      concurrency=4, batch=4, no_progress=True))
    version = current_version(out, "face")
    meta = read_meta(out, "face", version)
    assert meta.runner == "triton"
    ours = load_version(out, "face", version, meta.model_version)
    ref_root = stack.index_root
    ref = load_version(ref_root, "face", current_version(ref_root, "face"), meta.model_version)
    a = ours.index.reconstruct_n(0, ours.size)
    b = ref.index.reconstruct_n(0, ref.size)
    assert np.abs(a - b).max() <= 1e-4


def test_a_gallery_that_is_not_a_manifest_is_a_clear_error(stack, tmp_path):
    bad = tmp_path / "manifest.csv"
    bad.write_text("just,some\ncolumns,here\n")
    with pytest.raises(FormatError, match="manifest"):
        index_build(IndexBuildOptions(bad, stack.repo, tmp_path / "o"))


@pytest.mark.parametrize("path", ["whole", "sharded"])
def test_build_then_prune_erases_a_deleted_item_everywhere_on_disk(stack, tmp_path, path):
    """The privacy guarantee of docs/operations.md: after a delete, `index build` (whole, or sharded and
    merged, with a stray shard of another split left behind) and `index prune --keep 1`, no index
    version, resume cache, shard or log segment under the root holds its vector."""
    import faiss

    from facevoice.service.versions import current_version, load_version
    from facevoice.service.writelog import FileLog
    from facevoice.v1 import facevoice_pb2 as pb
    from tests.serving import copy_indexes, media, start_service

    root = copy_indexes(stack, tmp_path / "indexes")
    running, stub = start_service(stack, index_root=root)
    try:
        face = pb.Image(data=media(stack, "toy007", "face", 0))
        stub.UpsertItems(pb.UpsertItemsRequest(items=[pb.GalleryItem(item_id="live", identity="p",
                                                                     media=pb.Media(image=face))]))
        stub.DeleteItems(pb.DeleteItemsRequest(modality=pb.FACE, item_ids=["toy003-face-0", "live"]))
    finally:
        running.stop(0)
    model = running.embedder.version("face")
    old = load_version(root, "face", current_version(root, "face"), model)
    victim = faiss.rev_swig_ptr(old.index.get_xb(), old.index.ntotal * old.dim).reshape(-1, old.dim)[
        old.row_of("toy003-face-0")].tobytes()
    assert any(victim in p.read_bytes() for p in root.rglob("*") if p.is_file())  # there before
    gallery = stack.corpus / "manifest.csv"
    if path == "whole":
        index_build(IndexBuildOptions(gallery, stack.repo, root, no_progress=True))
    else:
        for i in range(2):
            index_build(IndexBuildOptions(gallery, stack.repo, root, no_progress=True, shard=(i, 2)))
        index_build(IndexBuildOptions(gallery, stack.repo, root, no_progress=True, shard=(0, 3)))  # no merge takes it
        assert any(victim in p.read_bytes() for p in (root / ".shards").rglob("*") if p.is_file())
        merged = index_merge(IndexMergeOptions(gallery, stack.repo, root, no_progress=True, shards=2))
        assert merged.deleted and merged.published
        assert len(list((root / ".shards").iterdir())) == 1  # the merge deleted the shards it merged
    index_prune(IndexPruneOptions(root, keep=1))
    assert not any(victim in p.read_bytes() for p in root.rglob("*") if p.is_file())
    assert not (root / ".build").exists() and not (root / ".shards").exists()
    assert FileLog(root).read(FileLog(root).first()) == []
    served = load_version(root, "face", current_version(root, "face"), model)
    assert not served.has("toy003-face-0") and not served.has("live") and served.size == 47
    assert all(len(list((root / name).glob("2*"))) == 1 for name in ("face", "voice", "face_feature"))
