"""Dense vectors in an inverted index (``index build --dense``): exact dense and hybrid
search, checksums, and the errors of indexes without them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmsparse.cli.main import main
from mmsparse.errors import IndexFormatError, MMSparseError
from mmsparse.index.build import build_index
from mmsparse.index.dense import DENSE_NAME, search_dense
from mmsparse.index.manifest import IndexManifest
from mmsparse.index.search import Searcher
from tests.index.test_build_search import split_vectors


@pytest.fixture(scope="module")
def dense_index(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("dense") / "inverted"
    build_index(tiny_run, out, split="val", store_dense=True, progress=False)
    return out


def _expected(scores: np.ndarray, k: int) -> np.ndarray:
    return np.lexsort((np.arange(scores.size), -scores))[:k]


@pytest.mark.parametrize("mode", ["dense", "hybrid", "sparse"])
def test_every_mode_equals_brute_force(tiny_run, dense_index, mode):
    _, store, s, (img_dense, img_sparse), (cap_dense, cap_sparse) = split_vectors(tiny_run)
    m = IndexManifest.load(dense_index)
    assert m.engine_params["dense_file"] == DENSE_NAME and m.engine_params["dense_shape"] == [
        40,
        16,
    ]
    dense = cap_dense.astype(np.float64) @ img_dense.T.astype(np.float64)
    sparse = (cap_sparse.astype(np.float64) @ img_sparse.T.astype(np.float64)).toarray()
    ref = {"dense": dense, "sparse": sparse, "hybrid": m.w1 * dense + m.w2 * sparse}[mode]
    searcher = Searcher(dense_index)
    for j in range(0, s.n_captions, 5):
        cid = store.caption_ids[s.caption_rows[j]]
        q_dense, q_sparse = searcher.encode_captions([cid])
        res = searcher.search_vectors(
            q_sparse, q_dense, k=6, mode=mode, explain=True, explain_terms=m.vocab_size
        )[0]
        want = _expected(ref[j], 6) if mode != "sparse" else None
        if want is not None:
            assert [h.row for h in res.hits] == want.tolist()
            np.testing.assert_allclose([h.score for h in res.hits], ref[j][want], rtol=1e-4)
        for hit in res.hits:  # the explanation is the sparse part of the score
            total = sum(t[3] for t in hit.terms or [])
            assert total == pytest.approx(sparse[j][hit.row], rel=1e-4, abs=1e-6)


def test_ties_are_broken_by_row_and_k_is_capped():
    vectors = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=np.float32)
    hits = search_dense(vectors, np.array([[1.0, 0.0]], np.float32), 3)
    assert hits.rows.tolist() == [[0, 2, 3]]
    hits = search_dense(vectors, np.array([[0.0, 1.0]], np.float32), 6)
    assert hits.rows[0, :4].tolist() == [1, 0, 2, 3] and hits.rows[0, 4:].tolist() == [-1, -1]


def test_corrupt_or_missing_dense_file_is_refused(tiny_run, tmp_path):
    out = tmp_path / "idx"
    build_index(tiny_run, out, store_dense=True, progress=False)
    arr = np.load(out / DENSE_NAME)
    arr[3, 2] += 1.0
    np.save(out / DENSE_NAME, arr)
    with pytest.raises(IndexFormatError, match="checksum mismatch"):
        Searcher(out)
    (out / DENSE_NAME).unlink()
    with pytest.raises(IndexFormatError, match="dense vectors file not found"):
        Searcher(out)
    # A rebuild without --dense removes the old file, and the index is sparse-only again.
    build_index(tiny_run, out, store_dense=True, progress=False)
    build_index(tiny_run, out, progress=False)
    assert not (out / DENSE_NAME).exists()
    with pytest.raises(MMSparseError, match="--engine inverted --dense"):
        Searcher(out).search(caption_id=Searcher(out).store().caption_ids[0], mode="dense")


def test_cli_build_dense_and_search_hybrid(tiny_run, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["index", "build", str(tiny_run), "--out", str(out), "--dense", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["engine_params"]["dense_file"] == DENSE_NAME
    cid = Searcher(out).store().caption_ids[5]
    assert main(["search", str(out), "--caption-id", cid, "--mode", "hybrid", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["mode"] == "hybrid" and len(res["hits"]) == 10
    args = ["index", "build", str(tiny_run), "--out", str(tmp_path / "s"), "--engine", "seismic"]
    assert main([*args, "--dense"]) == 2
    assert "--dense applies to --engine inverted" in capsys.readouterr().err
