"""A live index: add, remove and optimize against brute force after every step.

The reference is computed from the vectors given to the index (not read back from it): for
``quantize=none`` the stored vectors must equal them exactly, for ``uint8`` within half a
quantisation step of the segment's scale; the multi-segment search must then equal brute
force over the stored vectors of the live images (every mode of the engine, ``k`` above the
live count too).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from mmsparse.errors import MMSparseError
from mmsparse.index.build import index_vectors
from mmsparse.index.generations import CURRENT_NAME, is_live, read_current
from mmsparse.index.live import (
    add_vectors,
    live_info,
    merge_candidates,
    optimize_index,
    remove_images,
)
from mmsparse.index.manifest import IndexManifest, IndexOptions, read_docs
from mmsparse.index.segments import open_view

V, D = 80, 6
FIELDS = dict(
    run_dir="/nowhere/run",
    checkpoint_sha256="c" * 64,
    vocab_sha256="v" * 64,
    split="val",
    data_dir="",
    w1=0.3,
    w2=0.7,
)


def docs(rng: np.random.Generator, n: int, integer: bool = True) -> sp.csr_matrix:
    """Random non-negative sparse image vectors (integer weights: many exact ties)."""
    m = sp.random(n, V, density=0.12, format="csr", random_state=rng, dtype=np.float32)
    m.data = np.rint(m.data * 6 + 1) if integer else m.data * 3 + 0.05
    m.data = m.data.astype(np.float32)
    return m


class Collection:
    """What the index should hold: every live image's float vectors, by id."""

    def __init__(self) -> None:
        self.sparse: dict[str, sp.csr_matrix] = {}
        self.dense: dict[str, np.ndarray] = {}

    def put(self, ids, sparse, dense) -> None:
        for i, image_id in enumerate(ids):
            self.sparse[image_id] = sparse[i]
            self.dense[image_id] = None if dense is None else dense[i]

    def drop(self, ids) -> None:
        for image_id in ids:
            del self.sparse[image_id], self.dense[image_id]


def build(tmp_path: Path, rng, engine="inverted", quantize="none", dense=True, n=40, **params):
    out = tmp_path / "index"
    sparse = docs(rng, n, integer=quantize == "none")
    vectors = rng.standard_normal((n, D)).astype(np.float32)
    ids = [f"base/{i:03d}.jpg" for i in range(n)]
    index_vectors(
        out,
        engine,
        sparse,
        vectors,
        ids,
        ids,
        manifest_fields=FIELDS,
        options=IndexOptions(quantize=quantize),
        engine_params=params or None,
        store_dense=dense,
    )
    coll = Collection()
    coll.put(ids, sparse, vectors if dense else None)
    return out, coll


def check_against_brute_force(
    index: Path, coll: Collection, quantize: str, rng, merged: bool = False
) -> None:
    """Stored vectors equal the given ones; search equals brute force over them.

    Quantised, a stored weight is within half a step of the given one; after a merge,
    which quantises the dequantised weights again with the merged scale (the largest of
    the segments'), within half a step of each, so within one step of the merged scale.
    """
    view = open_view(index)
    try:
        eng = view.engine
        assert eng.n_live == len(coll.sparse) == view.manifest.n_images
        assert set(view.row_of) == set(coll.sparse)
        stored, stored_dense = eng.stored_vectors()
        rows = np.array([view.row_of[i] for i in sorted(coll.sparse)])
        given = sp.vstack([coll.sparse[i] for i in sorted(coll.sparse)], format="csr")
        diff = abs(stored[rows] - given)
        if quantize == "none":
            assert diff.nnz == 0 or diff.max() == 0
        else:
            scale = max(s.manifest.options.scale for s in view.segments)
            assert diff.max() <= (scale if merged else scale / 2) + 1e-6
        if stored_dense is not None:
            want = np.stack([coll.dense[i] for i in sorted(coll.dense)])
            np.testing.assert_array_equal(stored_dense[rows], want)
        live = np.zeros(eng.n_docs, dtype=bool)
        live[list(view.row_of.values())] = True
        queries = docs(rng, 12, integer=True)
        q_dense = rng.standard_normal((12, D)).astype(np.float32)
        sparse_ref = (queries.astype(np.float64) @ stored.T.astype(np.float64)).toarray()
        for mode in eng.modes:
            ref = sparse_ref
            if mode != "sparse":
                dense_ref = q_dense.astype(np.float64) @ stored_dense.T.astype(np.float64)
                ref = dense_ref if mode == "dense" else 0.3 * dense_ref + 0.7 * sparse_ref
            for k in (1, 7, eng.n_live + 5):
                hits = eng.search_batch(queries, k, dense=q_dense, mode=mode)
                for i in range(queries.shape[0]):
                    got, scores = hits.query(i)
                    cand = np.flatnonzero(live & (ref[i] > 0) if mode == "sparse" else live)
                    want = cand[np.lexsort((cand, -ref[i][cand]))][:k]
                    assert live[got].all()
                    np.testing.assert_allclose(scores, ref[i][got], rtol=1e-5, atol=1e-4)
                    # the same scores as the exact top k (rows may differ on float ties)
                    np.testing.assert_allclose(scores, ref[i][want], rtol=1e-5, atol=1e-4)
                    if quantize == "none" and mode == "sparse":
                        np.testing.assert_array_equal(got, want)  # integer sums: exact ties
    finally:
        view.close()


@pytest.mark.parametrize("quantize", ["none", "uint8"])
def test_add_remove_optimize_against_brute_force(tmp_path, quantize):
    rng = np.random.default_rng(11)
    index, coll = build(tmp_path, rng, quantize=quantize)
    check_against_brute_force(index, coll, quantize, rng)  # generation 0, as built
    assert not is_live(index)

    new_ids = [f"new/{i}.jpg" for i in range(10)]
    sparse, dense = docs(rng, 10, quantize == "none") * 3, rng.standard_normal((10, D))
    rep = add_vectors(index, sparse, dense.astype(np.float32), new_ids, gc_grace_s=0)
    coll.put(new_ids, sparse, dense.astype(np.float32))
    assert (rep.generation, rep.added, rep.segments) == (1, 10, 2)
    check_against_brute_force(index, coll, quantize, rng)

    # an update: two ids already there (replaced) and one new, in one generation
    upd = ["base/003.jpg", "new/4.jpg", "other.jpg"]
    sparse, dense = docs(rng, 3, quantize == "none"), rng.standard_normal((3, D))
    rep = add_vectors(index, sparse, dense.astype(np.float32), upd, gc_grace_s=0)
    coll.put(upd, sparse, dense.astype(np.float32))
    assert (rep.added, rep.replaced, rep.deleted_rows) == (3, 2, 2)
    check_against_brute_force(index, coll, quantize, rng)

    gone = ["base/000.jpg", "base/010.jpg", "new/0.jpg", "new/4.jpg", "other.jpg"]
    rep = remove_images(index, gone, gc_grace_s=0)
    coll.drop(gone)
    assert rep.removed == 5 and rep.n_images == len(coll.sparse)
    check_against_brute_force(index, coll, quantize, rng)

    rep = optimize_index(index, gc_grace_s=0, calibrate=False)
    assert rep.segments == 1 and rep.deleted_rows == 0
    check_against_brute_force(index, coll, quantize, rng, merged=True)
    view = open_view(index)
    assert view.segments[0].name != "base" and len(view.image_ids) == len(coll.sparse)
    view.close()


@pytest.mark.parametrize("engine", ["seismic", "kannolo", "bmp"])
def test_other_incremental_engines_add_remove_optimize(tmp_path, engine):
    if importlib.util.find_spec(engine) is None:
        pytest.skip(f"{engine} not installed (pip install 'mmsparse[index]')")
    rng = np.random.default_rng(5)
    index, _ = build(tmp_path, rng, engine=engine, dense=False, n=60)
    new_ids = [f"n{i}" for i in range(15)]
    add_vectors(index, docs(rng, 15), None, new_ids, gc_grace_s=0)
    remove_images(index, ["base/001.jpg", "n3"], gc_grace_s=0)
    for step in ("removed", "optimized"):
        view = open_view(index)
        try:
            assert view.engine.n_live == 60 + 15 - 2
            queries = docs(rng, 10)
            stored, _ = view.engine.stored_vectors()
            ref = (queries @ stored.T).toarray()
            live = np.zeros(view.engine.n_docs, dtype=bool)
            live[list(view.row_of.values())] = True
            hits = view.engine.search_batch(queries, 10)
            found = 0
            for i in range(10):
                got, _ = hits.query(i)
                assert live[got].all()  # a removed image never comes back
                cand = np.flatnonzero(live & (ref[i] > 0))
                want = cand[np.lexsort((cand, -ref[i][cand]))][:10]
                found += len(set(got.tolist()) & set(want.tolist()))
                assert "base/001.jpg" not in [view.image_ids[r] for r in got]
            assert found / 100 >= 0.8  # recall@10 of the approximate engines, tiny data
        finally:
            view.close()
        if step == "removed":
            optimize_index(index, gc_grace_s=0, calibrate=False)


def test_milvus_is_refused_in_one_line(tmp_path):
    if importlib.util.find_spec("milvus_lite") is None:
        pytest.skip("milvus-lite not installed")
    rng = np.random.default_rng(1)
    index, _ = build(tmp_path, rng, engine="milvus", dense=False, n=12)
    for call in (
        lambda: add_vectors(index, docs(rng, 2), rng.standard_normal((2, D)), ["x", "y"]),
        lambda: remove_images(index, ["base/001.jpg"]),
        lambda: optimize_index(index),
    ):
        with pytest.raises(MMSparseError, match="the milvus engine cannot .* rebuild") as err:
            call()
        assert "\n" not in str(err.value)
    assert not is_live(index)


def test_ids_are_checked_in_one_line(tmp_path):
    rng = np.random.default_rng(2)
    index, _ = build(tmp_path, rng, n=20)
    with pytest.raises(MMSparseError, match=r"3 of the 4 ids to remove are not in the index"):
        remove_images(index, ["base/001.jpg", "a", "b", "c"])
    with pytest.raises(MMSparseError, match="appear more than once"):
        add_vectors(index, docs(rng, 2), rng.standard_normal((2, D)), ["x", "x"])
    with pytest.raises(MMSparseError, match="1 of the 2 images to add are in the index"):
        add_vectors(
            index, docs(rng, 2), rng.standard_normal((2, D)), ["base/002.jpg", "y"],
            existing="error",
        )  # fmt: skip
    with pytest.raises(MMSparseError, match="give the images' dense vectors"):
        add_vectors(index, docs(rng, 1), None, ["z"])
    with pytest.raises(MMSparseError, match="would leave the index empty"):
        remove_images(index, [f"base/{i:03d}.jpg" for i in range(20)])
    assert not is_live(index)  # nothing was published
    rep = add_vectors(
        index, docs(rng, 2), rng.standard_normal((2, D)), ["base/002.jpg", "y"], existing="skip"
    )
    assert (rep.added, rep.skipped, rep.replaced) == (1, 1, 0)


def test_an_index_written_before_gets_segments_beside_its_files(tmp_path):
    """The golden inverted index of main: opened as generation 0, changed without moving
    or rewriting its files (same inode, same bytes), searched like brute force."""
    old = Path(__file__).parent / "golden" / "indexes" / "inverted"
    index = tmp_path / "old"
    shutil.copytree(old, index)
    manifest = IndexManifest.load(index)
    before = {p.name: (p.stat().st_ino, p.read_bytes()) for p in index.iterdir() if p.is_file()}
    gen = read_current(index)
    assert gen.generation == 0 and [s.name for s in gen.segments] == ["base"]
    rng = np.random.default_rng(4)
    n_new = 5
    sparse = sp.random(n_new, manifest.vocab_size, density=0.2, random_state=rng, format="csr")
    dense = rng.standard_normal((n_new, manifest.dense_dim)).astype(np.float32)
    ids = [f"added-{i}" for i in range(n_new)]
    add_vectors(index, sparse.astype(np.float32), dense, ids, gc_grace_s=0)
    old_ids, _ = read_docs(index, manifest.n_images)
    remove_images(index, old_ids[:3], gc_grace_s=0)
    for name, (ino, data) in before.items():
        assert (index / name).stat().st_ino == ino and (index / name).read_bytes() == data
    view = open_view(index)
    assert view.number == 2 and view.engine.n_live == manifest.n_images + n_new - 3
    queries = sp.random(6, manifest.vocab_size, density=0.3, random_state=rng, format="csr")
    stored, _ = view.engine.stored_vectors()
    ref = (queries @ stored.T).toarray()
    hits = view.engine.search_batch(queries.astype(np.float32), 8)
    for i in range(6):
        got, scores = hits.query(i)
        assert not {view.image_ids[r] for r in got} & set(old_ids[:3])
        np.testing.assert_allclose(scores, ref[i][got], rtol=1e-5)
    view.close()


def test_merge_rule_tiers():
    assert merge_candidates([1000, 100, 100, 100], 3) == [1, 2, 3]
    assert merge_candidates([1000, 100, 100], 3) is None
    assert merge_candidates([5, 1000, 200, 300, 999], 3) == [2, 3, 4]
    assert merge_candidates([1000, 9, 100, 100, 100], 3) == [2, 3, 4]  # the newest run
    assert merge_candidates([1000, 1000, 1000], 3) == [0, 1, 2]
    assert merge_candidates([1, 1, 1, 1], 0) is None
    assert merge_candidates([0, 3, 7], 3) == [0, 1, 2]


def test_adds_merge_by_tiers_after_being_published(tmp_path):
    rng = np.random.default_rng(8)
    index, coll = build(tmp_path, rng, n=40)
    for step in range(3):
        ids = [f"s{step}-{i}" for i in range(5)]
        sparse, dense = docs(rng, 5), rng.standard_normal((5, D)).astype(np.float32)
        rep = add_vectors(index, sparse, dense, ids, merge_factor=3, gc_grace_s=0)
        coll.put(ids, sparse, dense)
    # the third add: published (generation 3, four segments), then its three 5-image
    # segments merged (generation 4)
    assert rep.published == [3, 4] and rep.merged and len(rep.merged[0][0]) == 3
    assert rep.segments == 2 and rep.n_images == 55
    check_against_brute_force(index, coll, "none", rng)
    info = live_info(index)
    assert [s["images"] for s in info["segments"]] == [40, 15]


def test_garbage_waits_for_the_grace_period(tmp_path):
    rng = np.random.default_rng(9)
    index, _ = build(tmp_path, rng, n=20)
    add_vectors(index, docs(rng, 3), rng.standard_normal((3, D)), ["a", "b", "c"])
    remove_images(index, ["a"])
    optimize_index(index, calibrate=False)  # default grace: the old files stay for now
    kept = {p.relative_to(index).as_posix() for p in index.rglob("*")}
    assert {"postings.mmsi", "docs.json", "segments/s000001", "deletes"} <= kept
    assert read_current(index).generation == 3
    from mmsparse.index.generations import IndexLock, collect_garbage

    with IndexLock(index, "test"):
        removed = collect_garbage(index, grace_s=300, now=read_current(index).created_unix + 301)
    assert "segments/s000001" in removed and "postings.mmsi" in removed
    assert (index / "index.json").is_file()  # stays: the collection's manifest
    left = sorted(p.relative_to(index).as_posix() for p in index.rglob("*") if p.is_file())
    assert left == [
        "CURRENT",
        "LOCK",
        "generations/g000003.json",
        "index.json",
        "segments/s000002/dense.npy",
        "segments/s000002/docs.json",
        "segments/s000002/index.json",
        "segments/s000002/postings.mmsi",
    ]
    view = open_view(index)  # the current generation is whole
    assert view.engine.n_live == 22
    view.close()


def test_a_rebuild_over_a_live_index_makes_it_plain_again(tmp_path):
    rng = np.random.default_rng(10)
    index, _ = build(tmp_path, rng, n=10)
    add_vectors(index, docs(rng, 2), rng.standard_normal((2, D)), ["a", "b"], gc_grace_s=0)
    assert is_live(index)
    build(tmp_path, rng, n=7)  # index build --out over it
    assert not is_live(index) and not (index / "segments").exists()
    assert read_current(index).generation == 0 and IndexManifest.load(index).n_images == 7
    pointer = json.dumps({"format": "mmsparse-current"})
    (index / CURRENT_NAME).write_text(pointer)  # a damaged pointer: a clear error
    with pytest.raises(MMSparseError, match="corrupt generation pointer"):
        open_view(index)


def test_a_writer_killed_before_publishing_leaves_the_last_generation(tmp_path, monkeypatch):
    """Killed after its segment and deletion files were written, before the switch: the
    index is still the last generation, searches as before, and the next writer removes
    what the killed one left."""
    import mmsparse.index.live as live

    rng = np.random.default_rng(12)
    index, coll = build(tmp_path, rng, n=20)
    add_vectors(index, docs(rng, 3), rng.standard_normal((3, D)), ["a", "b", "c"], gc_grace_s=0)
    coll.put(["a", "b", "c"], *_last_three(index))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(live, "publish", killed)
    with pytest.raises(KeyboardInterrupt):
        add_vectors(index, docs(rng, 2), rng.standard_normal((2, D)), ["a", "d"], gc_grace_s=0)
    assert (index / "segments" / "s000002").is_dir()  # written, never published
    assert read_current(index).generation == 1
    check_against_brute_force(index, coll, "none", rng)
    monkeypatch.undo()
    rep = remove_images(index, ["b"], gc_grace_s=0)
    coll.drop(["b"])
    assert rep.generation == 2 and "segments/s000002" in rep.garbage
    check_against_brute_force(index, coll, "none", rng)


def _last_three(index):
    view = open_view(index)
    try:
        sparse, dense = view.engine.stored_vectors()
        rows = [view.row_of[i] for i in ("a", "b", "c")]
        return sparse[rows], dense[rows]
    finally:
        view.close()


def test_seismic_stored_vectors_are_those_of_their_rows_after_an_empty_image(tmp_path):
    """Seismic leaves images without terms out and numbers the rest by position: the
    stored vector of a row after an empty image was the next image's (explanations and
    merges read it); the rows it left out are recorded now."""
    if importlib.util.find_spec("seismic") is None:
        pytest.skip("seismic not installed (pip install 'mmsparse[index]')")
    from mmsparse.index.engines import get_engine

    rng = np.random.default_rng(13)
    sparse = docs(rng, 30).tolil()
    sparse[4, :] = 0
    sparse[17, :] = 0
    sparse = sp.csr_matrix(sparse)
    sparse.eliminate_zeros()
    cls = get_engine("seismic")
    params = cls.build(tmp_path / "s", sparse)
    assert params["empty_rows"] == [4, 17]
    engine = cls.open(tmp_path / "s", params, n_docs=30, vocab_size=V)
    stored, _ = engine.stored_vectors()
    np.testing.assert_allclose(stored.toarray(), sparse.toarray(), rtol=1e-3)
    terms, _ = engine.doc_vector(5)
    np.testing.assert_array_equal(terms, sparse[5].indices)
    assert engine.doc_vector(4)[0].size == 0
