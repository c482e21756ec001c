from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import scipy.sparse as sp

from mmsparse.cli.main import main
from mmsparse.errors import DataError, IndexFormatError, MMSparseError
from mmsparse.index.build import build_index
from mmsparse.index.encode import encode_vectors
from mmsparse.index.manifest import IndexManifest
from mmsparse.index.quantize import quantize
from mmsparse.index.search import MAX_QUERY_PIECES, Searcher
from mmsparse.io_utils import write_checksums
from mmsparse.runs import load_run, load_run_data
from tests.index.conftest import make_run

search_mod = importlib.import_module("mmsparse.index.search")


def split_vectors(run_dir, split="val", image_topk=None, threshold=0.0):
    run = load_run(run_dir)
    store = load_run_data(run)
    s = store.split(split)
    img = encode_vectors(
        run.model, store.image_feats[s.image_rows], "image", topk=image_topk, threshold=threshold
    )
    cap = encode_vectors(run.model, store.caption_feats[s.caption_rows], "text")
    return run, store, s, img, cap


def ranked(ref_row, k):
    rows = np.flatnonzero(ref_row > 0)
    return rows[np.lexsort((rows, -ref_row[rows]))][:k]


@pytest.fixture(scope="module")
def inverted_index(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "inverted"
    build_index(tiny_run, out, split="val", progress=False)
    return out


def test_manifest_records_run_and_options(tiny_run, inverted_index):
    m = IndexManifest.load(inverted_index)
    assert m.engine == "inverted" and m.split == "val" and m.n_images == 40
    assert m.vocab_size == 122 and len(m.checkpoint_sha256) == 64 and len(m.vocab_sha256) == 64
    assert m.options.image_topk is None and m.options.quantize == "none"
    assert (m.w1, m.w2) == (0.4, 0.6)
    assert m.stats["nnz"] > 0 and m.stats["bytes_per_image"] > 0
    docs = json.loads((inverted_index / "docs.json").read_text())
    assert docs["image_ids"][0] == "60" and docs["filenames"][0] == "synthetic_00060.jpg"


def test_caption_search_equals_brute_force(tiny_run, inverted_index):
    _, store, s, (_, img_sparse), (_, cap_sparse) = split_vectors(tiny_run)
    ref = (cap_sparse.astype(np.float64) @ img_sparse.T.astype(np.float64)).toarray()
    searcher = Searcher(inverted_index)
    for j in range(0, s.n_captions, 7):
        cid = store.caption_ids[s.caption_rows[j]]
        res = searcher.search(caption_id=cid, k=5)
        want = ranked(ref[j], 5)
        assert [h.row for h in res.hits] == want.tolist()
        assert [h.image_id for h in res.hits] == [store.image_ids[s.image_rows[w]] for w in want]
        np.testing.assert_allclose([h.score for h in res.hits], ref[j][want], rtol=1e-5)
        assert res.notes[-1].startswith(f"caption {cid}:")


def test_explain_contributions_sum_to_score(tiny_run, inverted_index):
    searcher = Searcher(inverted_index)
    store = searcher.store()
    cid = store.caption_ids[store.split("val").caption_rows[0]]
    res = searcher.search_vectors(
        *reversed(searcher.encode_captions([cid])), k=3, explain=True, explain_terms=10_000
    )[0]
    for hit in res.hits:
        products = [p for _, _, _, p in hit.terms]
        assert products == sorted(products, reverse=True)
        assert sum(products) == pytest.approx(hit.score, rel=1e-4)
        for _, qw, dw, p in hit.terms:
            assert p == pytest.approx(qw * dw, rel=1e-6)


def test_pruned_quantized_index(tiny_run, tmp_path):
    out = tmp_path / "q"
    m = build_index(tiny_run, out, image_topk=8, threshold=0.01, quantize="uint8", progress=False)
    assert (m.options.image_topk, m.options.threshold, m.options.quantize) == (8, 0.01, "uint8")
    assert m.stats["mean_terms_per_image"] <= 8
    *_, (_, img_sparse), (_, cap_sparse) = split_vectors(tiny_run, image_topk=8, threshold=0.01)
    q, scale = quantize(img_sparse, "uint8")
    assert m.options.scale == pytest.approx(scale)
    ref = (cap_sparse.astype(np.float64) @ (q.astype(np.float64) * scale).T).toarray()
    searcher = Searcher(out)
    assert any("index built with image_topk=8" in n for n in searcher.notes)
    hits = searcher.search_vectors(cap_sparse[:10], k=4)
    for j, res in enumerate(hits):
        got = np.array([h.row for h in res.hits])
        np.testing.assert_allclose([h.score for h in res.hits], ref[j][got], rtol=1e-5)
        np.testing.assert_allclose(ref[j][got], ref[j][ranked(ref[j], 4)], rtol=1e-5)


def test_bad_queries(tiny_run, inverted_index):
    searcher = Searcher(inverted_index)
    store = searcher.store()
    cid = store.caption_ids[store.split("val").caption_rows[0]]
    with pytest.raises(MMSparseError, match="k must be at least 1"):
        searcher.search(caption_id=cid, k=0)
    res = searcher.search(caption_id=cid, k=1000)
    assert res.k == 40 and any("larger than the index" in n for n in res.notes)
    with pytest.raises(MMSparseError, match="empty query"):
        searcher.search("   ")
    # `mmsparse search IDX $'\xff'`: an undecodable argv byte arrives as a lone surrogate,
    # on which the real tokenizer raised a TypeError (found by tests/test_fuzz.py).
    with pytest.raises(MMSparseError, match="the query is not valid UTF-8 text"):
        searcher.search("dog \udcff")
    with pytest.raises(MMSparseError, match="either"):
        searcher.search("dog", caption_id=cid)
    with pytest.raises(DataError, match="unknown caption id nope"):
        searcher.search(caption_id="nope")
    with pytest.raises(IndexFormatError, match="different vocabulary"):
        searcher.search_vectors(sp.csr_matrix((1, 50), dtype=np.float32))
    with pytest.raises(MMSparseError, match="holds sparse vectors only"):
        searcher.search(caption_id=cid, mode="hybrid")


def test_query_without_known_term_returns_empty_with_note(tiny_run, tmp_path):
    out = tmp_path / "few"
    build_index(tiny_run, out, image_topk=2, progress=False)
    searcher = Searcher(out)
    indexed = set(searcher.engine.index.to_csr().indices.tolist())
    unseen = next(t for t in range(122) if t not in indexed)
    q = sp.csr_matrix(([0.7], ([0], [unseen])), shape=(1, 122), dtype=np.float32)
    res = searcher.search_vectors(q, k=5)[0]
    assert res.hits == [] and any("no indexed image shares a term" in n for n in res.notes)
    res = searcher.search_vectors(sp.csr_matrix((1, 122), dtype=np.float32), k=5)[0]
    assert res.hits == []


class FakeEncoder:
    """Stands in for mmsparse.extract's text encoder: features from a hash of the text."""

    def __init__(self, d):
        self.d = d
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen.extend(texts)
        out = np.zeros((len(texts), self.d), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i] = np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(self.d)
        return out


def test_text_search_through_the_extraction_backend(tiny_run, inverted_index, monkeypatch):
    fake = FakeEncoder(16)
    monkeypatch.setattr(search_mod, "load_text_encoder", lambda extraction: fake)
    monkeypatch.setattr(
        Searcher, "checkpoint_extraction", staticmethod(lambda run: {"backend": "fake"})
    )
    searcher = Searcher(inverted_index)
    res = searcher.search("a dog runs on the beach", k=3, explain=True)
    assert res.query == "a dog runs on the beach" and len(res.hits) == 3
    assert fake.seen == ["a dog runs on the beach"]
    long = " ".join(["dog"] * (MAX_QUERY_PIECES + 30))
    res = searcher.search(long, k=3)
    assert len(res.query.split()) == MAX_QUERY_PIECES
    assert "query cut" in res.notes[0]


def test_text_search_without_extraction_backend_is_a_clear_error(tiny_run, inverted_index):
    with pytest.raises(MMSparseError, match="--caption-id"):
        Searcher(inverted_index).search("a dog")


def test_stale_index_and_other_vocabulary_refused(tmp_path):
    run = make_run(tmp_path / "a", seed=1)
    out = tmp_path / "idx"
    build_index(run, out, progress=False)
    other = make_run(tmp_path / "b", seed=2)  # same vocabulary, other weights
    with pytest.raises(IndexFormatError, match="rebuild the index"):
        Searcher(out, run_dir=other)
    tokens = (run / "best" / "vocab.txt").read_text().split("\n")
    tokens[5] = "zebra-x"
    (other / "best" / "vocab.txt").write_text("\n".join(tokens))
    # a consistent run of another vocabulary (its checksums match its files)
    write_checksums(other / "best", ["model.safetensors", "model.json", "vocab.txt"])
    with pytest.raises(IndexFormatError, match="another vocabulary"):
        Searcher(out, run_dir=other)


def test_broken_index_directories(tiny_run, tmp_path):
    with pytest.raises(IndexFormatError, match="not found"):
        Searcher(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError, match="not an mmsparse index"):
        Searcher(tmp_path / "empty")
    out = tmp_path / "idx"
    build_index(tiny_run, out, progress=False)
    (out / "postings.mmsi").write_bytes(b"garbage" * 20)
    with pytest.raises(IndexFormatError, match="not an mmsparse inverted index"):
        Searcher(out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(MMSparseError, match="holds no mmsparse index"):
        build_index(tiny_run, tmp_path / "other", progress=False)
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"


def test_cli_build_and_search(tiny_run, tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        main(
            [
                "index",
                "build",
                str(tiny_run),
                "--split",
                "val",
                "--out",
                str(out),
                "--image-topk",
                "20",
                "--json",
            ]
        )
        == 0
    )
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["options"]["image_topk"] == 20 and manifest["engine"] == "inverted"
    store = Searcher(out).store()
    cid = store.caption_ids[store.split("val").caption_rows[3]]
    assert main(["search", str(out), "--caption-id", cid, "--k", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["hits"]) == 4 and res["caption_id"] == cid
    assert main(["search", str(out), "--caption-id", cid, "--k", "2", "--explain"]) == 0
    text = capsys.readouterr().out
    assert "   1  " in text and " x " in text
    assert main(["search", str(out), "--caption-id", cid, "--k", "0"]) == 2
    assert "k must be at least 1" in capsys.readouterr().err
    assert main(["search", str(out), "a dog"]) == 2
    assert "--caption-id" in capsys.readouterr().err


def test_search_queries_file_loads_the_encoder_once(
    tiny_run, inverted_index, tmp_path, monkeypatch, capsys
):
    loads = []

    def load(extraction):
        loads.append(extraction)
        return FakeEncoder(16)

    monkeypatch.setattr(search_mod, "load_text_encoder", load)
    monkeypatch.setattr(
        Searcher, "checkpoint_extraction", staticmethod(lambda run: {"backend": "fake"})
    )
    queries = tmp_path / "queries.txt"
    queries.write_text("a dog runs on the beach\n\n  two children play  \nred car\n")
    argv = ["search", str(inverted_index), "--queries", str(queries), "--k", "3"]
    assert main([*argv, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["query"] for r in results] == [
        "a dog runs on the beach",
        "two children play",
        "red car",
    ]
    assert all(len(r["hits"]) == 3 for r in results) and len(loads) == 1
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "'two children play'" in text and "'red car'" in text
    assert main([*argv, "--caption-id", "60"]) == 2
    assert "not several" in capsys.readouterr().err
    queries.write_text("\n \n")
    assert main(argv) == 2
    assert "holds no query" in capsys.readouterr().err


def test_search_explain_says_top_n_of_m(tiny_run, inverted_index, capsys):
    store = Searcher(inverted_index).store()
    cid = store.caption_ids[store.split("val").caption_rows[0]]
    res = Searcher(inverted_index).search(caption_id=cid, k=2, explain=True)
    hit = res.hits[0]
    assert hit.shared_terms is not None and hit.shared_terms >= len(hit.terms)
    argv = ["search", str(inverted_index), "--caption-id", cid, "--k", "2", "--explain"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    listed = sum(t[3] for t in hit.terms)
    assert f"top {len(hit.terms)} of {hit.shared_terms} shared terms" in text
    assert f"sum to {listed:.4f} of the score {hit.score:.4f}" in text


def test_rebuild_in_place_reports_the_same_engine_size(tiny_run, tmp_path):
    """Files of the index that are not the engine's (confidence.json...) are not counted."""
    from mmsparse.index.confidence import CALIBRATION_NAME
    from mmsparse.index.manifest import CALIBRATION_FILE

    assert CALIBRATION_FILE == CALIBRATION_NAME
    out = tmp_path / "idx"
    first = build_index(tiny_run, out, split="val", progress=False)
    assert (out / CALIBRATION_NAME).is_file()
    again = build_index(tiny_run, out, split="val", progress=False)
    assert again.stats["engine_bytes"] == first.stats["engine_bytes"]
    assert first.stats["engine_bytes"] == (out / "postings.mmsi").stat().st_size
