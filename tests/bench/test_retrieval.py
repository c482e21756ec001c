from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import scipy.sparse as sp

from mmsparse.bench.machine import MACHINE_KEYS
from mmsparse.bench.retrieval import exact_sparse_topk, recall_at_k, synthesize_corpus
from mmsparse.cli.main import main


def test_synthesized_corpus_keeps_the_real_term_distribution():
    rng = np.random.default_rng(0)
    real = sp.random(300, 500, density=0.04, random_state=1, dtype=np.float32, format="csr")
    dense = rng.standard_normal((300, 8)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    sparse, d = synthesize_corpus(real, dense, 20_000, seed=3, chunk=4096)
    assert sparse.shape == (20_000, 500) and d.shape == (20_000, 8)
    assert (sparse[:300] != real).nnz == 0 and np.array_equal(d[:300], dense)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, rtol=1e-5)
    # Only terms that real images use; about as many terms per image; same term frequencies.
    used = np.unique(real.indices)
    assert np.isin(np.unique(sparse.indices), used).all()
    assert sparse.nnz / 20_000 == pytest.approx(real.nnz / 300, rel=0.1)
    p_real = np.bincount(real.indices, minlength=500) / 300
    p_syn = np.bincount(sparse.indices, minlength=500) / 20_000
    assert np.corrcoef(p_real, p_syn)[0, 1] > 0.9
    assert sparse.data.min() > 0


def test_exact_topk_and_recall():
    docs = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0], [1, 1, 1], [0, 0, 0]], np.float32))
    q = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 1]], np.float32))
    rows = exact_sparse_topk(docs, q, k=3)
    # Query 0: scores 1, 3, 2 -> rows 1, 2, 0; query 1: scores 2, 0, 1 -> rows 0, 2 then pad.
    np.testing.assert_array_equal(rows, [[1, 2, 0], [0, 2, -1]])
    assert recall_at_k(np.array([[1, 2, 5], [0, 9, -1]]), rows, k=3) == pytest.approx(
        (2 / 3 + 1 / 2) / 2
    )


def test_bench_command_small(tiny_run, tmp_path, capsys):
    engines = [
        "inverted",
        "inverted-uint8",
        "inverted-uint16",
        "inverted-blockmax",
        "bmp",
        "faiss-flat",
        "faiss-hnsw",
        "seismic",
        "kannolo",
        "milvus",
    ]
    out = tmp_path / "retrieval.json"
    table = tmp_path / "table.md"
    plot = tmp_path / "plot.png"
    args = ["bench", "retrieval", "--run", str(tiny_run), "--n-images", "2000"]
    args += ["--n-queries", "60", "--latency-queries", "20", "--milvus-images", "500"]
    args += ["--engines", ",".join(engines), "--out", str(out), "--table", str(table)]
    args += ["--plot", str(plot), "--seismic-search", "1:0.5,20:1.0", "--hnsw-ef", "4,64"]
    args += ["--kannolo-ef", "10,200", "--kannolo-images", "1500", "--sweep-queries", "50"]
    args += ["--kannolo", "m=8", "--kannolo", "ef_construction=50", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == report
    assert report["n_images"] == 2000 and report["n_queries"] == 60
    assert tuple(report["machine"]) == MACHINE_KEYS
    inv = report["engines"]["inverted"]
    assert inv["recall@10_vs_exact_sparse"] == 1.0 and inv["checked_vs_bruteforce_queries"] == 20
    for key in ("build_seconds", "bytes_per_image", "p50_ms", "p99_ms", "batch_qps"):
        assert inv[key] > 0
    assert inv["postings_per_query"] > 0
    for mode, floor in (("uint8", 0.8), ("uint16", 0.97)):  # exact on the quantised vectors
        quant = report["engines"][f"inverted-{mode}"]
        assert floor <= quant["recall@10_vs_exact_sparse"] <= 1.0 and quant["p50_ms"] > 0
        assert quant["postings_per_query"] == inv["postings_per_query"]
    if importlib.util.find_spec("numba") is not None:
        own = report["engines"]["inverted-blockmax"]
        assert own["recall@10_vs_exact_sparse"] == 1.0 and own["identical_to_inverted"]
        assert own["postings_per_query"] > 0 and 0 < own["blocks_scored_fraction"] <= 1
    if importlib.util.find_spec("bmp") is not None:
        bmp = report["engines"]["bmp"]
        assert 0.8 <= bmp["recall@10_vs_exact_sparse"] <= 1.0 and bmp["queries"] == 60
    if importlib.util.find_spec("faiss") is not None:
        assert report["engines"]["faiss-flat"]["recall@10_vs_exact_dense"] == 1.0
        sweep = report["sweeps"]["faiss-hnsw"]
        assert [p["setting"]["efSearch"] for p in sweep["points"]] == [4, 64]
        assert set(sweep["at_recall"]) == {"0.95", "0.99"}
    else:
        assert "skipped" in report["engines"]["faiss-flat"]
    if importlib.util.find_spec("seismic") is not None:
        points = report["sweeps"]["seismic"]["points"]
        assert len(points) == 2 and all(0 <= p["recall@10_vs_exact_sparse"] <= 1 for p in points)
        assert points[1]["recall@10_vs_exact_sparse"] >= points[0]["recall@10_vs_exact_sparse"]
    if importlib.util.find_spec("kannolo") is not None:
        sweep = report["sweeps"]["kannolo"]
        assert sweep["n_images"] == 1500 and sweep["points"][-1]["recall@10_vs_exact_sparse"] > 0.9
        first = sweep["at_recall"]["0.95"]
        assert first is None or first["recall@10_vs_exact_sparse"] >= 0.95
    if importlib.util.find_spec("milvus_lite") is not None:
        milvus = report["engines"]["milvus-lite"]
        assert milvus["n_images"] == 500 and milvus["recall@10_vs_exact_sparse"] == 1.0
    text = table.read_text()
    assert text.startswith("| engine |") and "| inverted | 2,000 |" in text
    assert "| sweep | setting |" in text
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.read_bytes()[:4] == b"\x89PNG"


def test_at_recall_picks_the_first_setting_reaching_each_target():
    from mmsparse.bench.retrieval import at_recall

    points = [{"r": 0.9}, {"r": 0.96}, {"r": 0.955}, {"r": 0.995}]
    got = at_recall(points, "r")
    assert got["0.95"] is points[1] and got["0.99"] is points[3]
    assert at_recall(points[:1], "r") == {"0.95": None, "0.99": None}


def test_postings_per_query_counts_list_lengths():
    from mmsparse.bench.retrieval import postings_per_query

    docs = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0], [1, 1, 1]], np.float32))
    q = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 0], [0, 0, 5], [0, 0, 0]], np.float32))
    np.testing.assert_array_equal(postings_per_query(docs, q), [4, 0, 2, 0])


def test_an_engine_added_as_one_file_is_benchmarked_by_name(tiny_run, tmp_path, toy, capsys):
    """The registry, not a list of names, says what can be measured (the toy engine:
    brute force, so exact: its recall against the exact sparse ranking is 1)."""
    out = tmp_path / "retrieval.json"
    args = ["bench", "retrieval", "--run", str(tiny_run), "--n-images", "300"]
    args += ["--n-queries", "30", "--latency-queries", "10", "--sweep-queries", "30"]
    args += ["--engines", f"inverted,{toy}", "--out", str(out), "--json"]
    assert main(args) == 0
    entry = json.loads(out.read_text())["engines"][toy]
    assert entry["kind"].startswith("sparse, exact") and entry["n_images"] == 300
    assert entry["recall@10_vs_exact_sparse"] == 1.0
    for key in ("build_seconds", "bytes_per_image", "p50_ms", "batch_qps"):
        assert entry[key] > 0
    capsys.readouterr()
    assert main(["bench", "retrieval", "--run", str(tiny_run), "--engines", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown engine(s) ['nosuch']" in err and "'toy'" in err
