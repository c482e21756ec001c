"""seismic and milvus engines on the tiny run (skipped with the reason when not installed)."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mmsparse.bench.local_server import free_port
from mmsparse.index.build import build_index
from mmsparse.index.manifest import IndexManifest
from mmsparse.index.search import Searcher

HAS_SEISMIC = importlib.util.find_spec("seismic") is not None
HAS_MILVUS = (
    importlib.util.find_spec("pymilvus") is not None
    and importlib.util.find_spec("milvus_lite") is not None
)
needs_seismic = pytest.mark.skipif(
    not HAS_SEISMIC, reason="pyseismic-lsr not installed (pip install 'mmsparse[index]')"
)
needs_milvus = pytest.mark.skipif(
    not HAS_MILVUS, reason="pymilvus/milvus-lite not installed (pip install 'mmsparse[index]')"
)


@pytest.fixture(scope="module")
def exact(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exact") / "inv"
    build_index(tiny_run, out, progress=False)
    searcher = Searcher(out)
    store = searcher.store()
    split = store.split("val")
    cids = [store.caption_ids[r] for r in split.caption_rows]
    dense, sparse = searcher.encode_captions(cids)
    img_dense, img_sparse = None, searcher.engine.index.to_csr()
    return searcher, cids, dense, sparse, img_sparse, img_dense


def brute(sparse_q, docs):
    return (sparse_q.astype(np.float64) @ docs.T.astype(np.float64)).toarray()


def image_dense(run_dir):
    from mmsparse.index.encode import encode_vectors
    from mmsparse.runs import load_run, load_run_data

    run = load_run(run_dir)
    store = load_run_data(run)
    rows = store.split("val").image_rows
    return encode_vectors(run.model, store.image_feats[rows], "image")[0]


@needs_seismic
def test_seismic_knobs_and_recall(tiny_run, tmp_path, exact):
    _, _, _, sparse, img_sparse, _ = exact
    out = tmp_path / "seismic"
    m = build_index(
        tiny_run,
        out,
        engine="seismic",
        progress=False,
        engine_params={
            "n_postings": 500,
            "centroid_fraction": 0.2,
            "summary_energy": 0.5,
            "query_cut": 50,
            "heap_factor": 1.0,
        },
    )
    assert m.engine_params["build"]["n_postings"] == 500
    assert m.engine_params["build"]["summary_energy"] == 0.5
    assert m.engine_params["search"] == {"query_cut": 50, "heap_factor": 1.0}
    approx = Searcher(out)
    ref = brute(sparse, img_sparse)
    got = approx.search_vectors(sparse, k=10)
    recall = np.mean(
        [
            len({h.row for h in g.hits} & set(np.argsort(-ref[j], kind="stable")[:10].tolist()))
            / 10
            for j, g in enumerate(got)
        ]
    )
    assert recall >= 0.9
    for j, g in enumerate(got[:5]):  # Seismic's scores are inner products (f16 weights)
        rows = [h.row for h in g.hits]
        np.testing.assert_allclose([h.score for h in g.hits], ref[j][rows], rtol=1e-2)
    # Knobs at search time; single-thread and batched paths agree.
    one = approx.engine.search_batch(sparse[:8], 5, threads=1, query_cut=5, heap_factor=0.7)
    many = approx.engine.search_batch(sparse[:8], 5, query_cut=5, heap_factor=0.7)
    np.testing.assert_array_equal(one.rows, many.rows)
    res = approx.search_vectors(sparse[:1], k=3, explain=True, explain_terms=1000)[0]
    assert sum(p for *_, p in res.hits[0].terms) == pytest.approx(res.hits[0].score, rel=1e-2)


@needs_seismic
def test_seismic_unknown_knob(tiny_run, tmp_path):
    from mmsparse.errors import MMSparseError

    with pytest.raises(MMSparseError, match="unknown seismic parameter"):
        build_index(
            tiny_run, tmp_path / "s", engine="seismic", engine_params={"bogus": 1}, progress=False
        )


def check_milvus(index_dir, tiny_run, exact):
    _, _, dense, sparse, img_sparse, _ = exact
    m = IndexManifest.load(index_dir)
    searcher = Searcher(index_dir)
    ref_sparse = brute(sparse, img_sparse)
    ref_dense = dense.astype(np.float64) @ image_dense(tiny_run).astype(np.float64).T
    ref_hybrid = m.w1 * ref_dense + m.w2 * ref_sparse
    for mode, ref in (("sparse", ref_sparse), ("dense", ref_dense), ("hybrid", ref_hybrid)):
        got = searcher.search_vectors(sparse, dense, k=10, mode=mode)
        for j, res in enumerate(got):
            rows = np.array([h.row for h in res.hits])
            want = np.argsort(-ref[j], kind="stable")[:10]
            np.testing.assert_allclose([h.score for h in res.hits], ref[j][rows], atol=1e-5)
            # Same ranking as mmsparse's scores (equal up to float32 near-ties).
            np.testing.assert_allclose(ref[j][rows], ref[j][want], atol=1e-5)
    res = searcher.search_vectors(sparse[:1], k=2, explain=True, explain_terms=1000)[0]
    assert sum(p for *_, p in res.hits[0].terms) == pytest.approx(res.hits[0].score, rel=1e-5)
    searcher.close()


@needs_milvus
def test_milvus_lite_hybrid_matches_mmsparse(tiny_run, tmp_path, exact):
    out = tmp_path / "milvus"
    m = build_index(tiny_run, out, engine="milvus", progress=False)
    assert m.engine_params["db"] == "milvus.db" and m.engine_params["uri"] is None
    assert (out / "milvus.db").exists()
    check_milvus(out, tiny_run, exact)
    # Rebuilding over the same index replaces the collection.
    build_index(tiny_run, out, engine="milvus", image_topk=5, progress=False)
    assert IndexManifest.load(out).options.image_topk == 5


@needs_milvus
def test_milvus_server_uri(tiny_run, tmp_path, exact):
    """The same code against a server URI: a local milvus-lite gRPC server on loopback."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "milvus_lite",
            "server",
            "--data-dir",
            str(tmp_path / "srv"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("milvus-lite server did not start within 30 s")
        out = tmp_path / "remote"
        m = build_index(
            tiny_run,
            out,
            engine="milvus",
            progress=False,
            engine_params={"uri": f"http://127.0.0.1:{port}", "collection": "tiny_val"},
        )
        assert m.engine_params["uri"] == f"http://127.0.0.1:{port}"
        assert not (out / "milvus.db").exists()
        check_milvus(out, tiny_run, exact)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_milvus_unreachable_server_is_a_clear_error(tiny_run, tmp_path):
    if not HAS_MILVUS:
        pytest.skip("pymilvus/milvus-lite not installed (pip install 'mmsparse[index]')")
    from mmsparse.errors import MMSparseError

    port = free_port()  # nothing listens there
    with pytest.raises(MMSparseError, match="Milvus"):
        build_index(
            tiny_run,
            tmp_path / "x",
            engine="milvus",
            progress=False,
            engine_params={"uri": f"http://127.0.0.1:{port}"},
        )


@needs_milvus
def test_second_process_on_a_milvus_lite_file_gets_one_clear_line(tiny_run, tmp_path, capsys):
    """A milvus-lite file serves one process: the second gets one line naming the way out."""
    from pathlib import Path

    import mmsparse
    from mmsparse.cli.main import main

    out = tmp_path / "milvus"
    env = {"PYTHONPATH": str(Path(mmsparse.__file__).resolve().parents[1])}
    # Another process builds the index and keeps it open (milvus-lite keeps its in-process
    # server, and the file's lock, for the life of the process).
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from mmsparse.index.build import build_index\n"
            "from mmsparse.index.search import Searcher\n"
            f"build_index({str(tiny_run)!r}, {str(out)!r}, engine='milvus', progress=False)\n"
            f"s = Searcher({str(out)!r})\n"
            "print('open', flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, **env},
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        code = main(["search", str(out), "--caption-id", "60"])
        err = capsys.readouterr().err
        assert code == 2
        assert "milvus.db: in use by another process" in err
        assert "one process at a time" in err and "--uri" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait(timeout=30)
