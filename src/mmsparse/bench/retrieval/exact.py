"""The exact sparse engines of ``mmsparse bench retrieval``.

``inverted`` (float, ``uint8`` and ``uint16`` impacts), ``inverted-blockmax``, ``bmp`` and
milvus-lite's ``SPARSE_INVERTED_INDEX``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.bench.retrieval.corpus import exact_sparse_topk, postings_per_query, recall_at_k
from mmsparse.bench.retrieval.measure import (
    build_engine,
    dir_bytes,
    latency,
    log_progress,
    serial,
    sig,
    times_summary,
)
from mmsparse.bench.retrieval.options import K
from mmsparse.errors import MMSparseError
from mmsparse.index import kernels

log = logging.getLogger(__package__)  # the log lines keep the name they had before the split

MILVUS_MAX_QUERIES = 200  # milvus-lite is pure Python (~0.3 s/query at 20k images here)
MILVUS_MAX_LATENCY = 50


def bench_inverted(
    report: dict[str, Any],
    work: Path,
    sparse: sp.csr_matrix,
    q_sparse: sp.csr_matrix,
    budgets: dict[str, Any],
    measure: bool,
    progress: bool,
) -> np.ndarray:
    """Build and measure ``inverted``; return the exact sparse top-10 of every query."""
    from mmsparse.index.inverted import InvertedIndex, write_postings

    n = sparse.shape[0]
    log_progress(progress, "inverted: building %d images", n)
    t0 = time.perf_counter()
    path = work / "inverted" / "postings.mmsi"
    write_postings(path, sparse)
    index = InvertedIndex(path, verify=True).prepare()  # dense columns of the longest lists
    build = time.perf_counter() - t0
    index.search_batch(q_sparse[:2], K)  # warm-up: numba load and thread pool start
    index.search_batch(q_sparse[:1], K, threads=1)
    log_progress(progress, "inverted: exact top-%d of %d queries", K, q_sparse.shape[0])
    t0 = time.perf_counter()
    hits = index.search_batch(q_sparse, K)
    batch_s = time.perf_counter() - t0
    truth = hits.rows
    # Check exactness against scipy brute force on a sample of queries.
    sample = np.arange(min(20, q_sparse.shape[0]))
    ref = (q_sparse[sample].astype(np.float64) @ sparse.T.astype(np.float64)).toarray()
    for i in sample:
        r = np.flatnonzero(ref[i] > 0)
        want = r[np.lexsort((r, -ref[i][r]))][:K]
        got, scores = hits.query(int(i))
        np.testing.assert_allclose(scores, ref[i][want], rtol=1e-4, atol=1e-5)
        if not np.array_equal(got, want) and not np.allclose(ref[i][got], ref[i][want], 1e-5):
            raise MMSparseError("inverted index disagrees with brute force (bug)")
    if measure:
        log_progress(progress, "inverted: single-thread queries")
        rows_q = [q_sparse[i] for i in range(budgets["n_lat"])]
        lat = latency(
            lambda i: index.search_batch(rows_q[i], K, threads=1),
            budgets["n_lat"],
            budgets["lat_s"],
        )
        report["engines"]["inverted"] = {
            "kind": "sparse, exact (reads every posting of every query term)",
            "n_images": n,
            "build_seconds": sig(build),
            "bytes_per_image": round(index.nbytes / n, 1),
            "dense_columns_bytes_per_image": round(index.dense_bytes / n, 1),
            **lat,
            "batch_qps": round(q_sparse.shape[0] / batch_s, 1),
            "batch_threads": os.cpu_count(),
            "recall@10_vs_exact_sparse": 1.0,
            "postings_per_query": round(float(postings_per_query(sparse, q_sparse).mean())),
            "checked_vs_bruteforce_queries": int(sample.size),
            "backend": index.backend,
        }
    return truth


def bench_inverted_quantized(
    report: dict[str, Any],
    work: Path,
    sparse: sp.csr_matrix,
    q_sparse: sp.csr_matrix,
    truth: np.ndarray,
    budgets: dict[str, Any],
    mode: str,
    progress: bool,
) -> None:
    """``inverted`` on integer impacts (``uint8``/``uint16``): exact on the quantised vectors."""
    from mmsparse.index.inverted import InvertedIndex, write_postings

    name = f"inverted-{mode}"
    n = sparse.shape[0]
    log_progress(progress, "%s: building %d images", name, n)
    t0 = time.perf_counter()
    path = work / name / "postings.mmsi"
    write_postings(path, sparse, quantize_mode=mode)
    index = InvertedIndex(path, verify=True).prepare()
    build = time.perf_counter() - t0
    index.search_batch(q_sparse[:2], K)
    index.search_batch(q_sparse[:1], K, threads=1)
    t0 = time.perf_counter()
    hits = index.search_batch(q_sparse, K)
    batch_s = time.perf_counter() - t0
    rows_q = [q_sparse[i] for i in range(budgets["n_lat"])]
    lat = latency(
        lambda i: index.search_batch(rows_q[i], K, threads=1), budgets["n_lat"], budgets["lat_s"]
    )
    report["engines"][name] = {
        "kind": f"sparse, exact at {mode} impacts (float queries)",
        "n_images": n,
        "build_seconds": sig(build),
        "bytes_per_image": round(index.nbytes / n, 1),
        "dense_columns_bytes_per_image": round(index.dense_bytes / n, 1),
        **lat,
        "batch_qps": round(q_sparse.shape[0] / batch_s, 1),
        "batch_threads": os.cpu_count(),
        "recall@10_vs_exact_sparse": round(recall_at_k(hits.rows, truth), 4),
        "postings_per_query": round(float(postings_per_query(sparse, q_sparse).mean())),
        "backend": index.backend,
    }
    path.unlink()


def bench_blockmax(
    report: dict[str, Any],
    sparse: sp.csr_matrix,
    q_sparse: sp.csr_matrix,
    truth: np.ndarray,
    budgets: dict[str, Any],
    bsize: int,
) -> None:
    """Build and measure ``inverted-blockmax``, one query at a time."""
    from mmsparse.index.blockmax import BlockMaxIndex

    name = "inverted-blockmax"
    if not kernels.numba_available():
        report["engines"][name] = {"skipped": "needs numba: pip install 'mmsparse[index]'"}
        return
    n = sparse.shape[0]
    log.info("%s: building %d images (block size %d)", name, n, bsize)
    t0 = time.perf_counter()
    index = BlockMaxIndex(sparse, bsize=bsize)
    build = time.perf_counter() - t0
    index.search_batch(q_sparse[:1], K)  # numba compile / cache load
    reads: list[int] = []
    blocks: list[int] = []

    def one(i: int) -> np.ndarray:
        rows = index.search_batch(q_sparse[i], K).rows[0]
        reads.append(int(index.last_read[0]))
        blocks.append(int(index.last_blocks[0]))
        return rows

    rows, times = serial(one, q_sparse.shape[0], budgets["serial_s"])
    m = rows.shape[0]
    report["engines"][name] = {
        "kind": f"sparse, exact (own block-max pruning, {bsize} images per block)",
        "n_images": n,
        "build_seconds": sig(build),
        "bytes_per_image": round(index.nbytes / n, 1),
        "bytes_note": "in memory: forward index + block maxima (not written to disk)",
        **times_summary(times),
        "batch_qps": round(m / times.sum(), 1),
        "batch_threads": 1,
        "recall@10_vs_exact_sparse": round(recall_at_k(rows, truth[:m]), 4),
        "identical_to_inverted": bool(np.array_equal(rows, truth[:m, : rows.shape[1]])),
        "postings_per_query": round(float(np.mean(reads))),
        "postings_note": "block maxima + forward-index entries of the scored blocks",
        "blocks_scored_fraction": round(float(np.mean(blocks)) / index.n_blocks, 4),
        "queries": int(m),
    }


def bench_bmp(
    report: dict[str, Any],
    work: Path,
    sparse: sp.csr_matrix,
    q_sparse: sp.csr_matrix,
    truth: np.ndarray,
    budgets: dict[str, Any],
    bsize: int,
) -> None:
    """Build and measure ``bmp``, one query at a time."""
    n = sparse.shape[0]
    log.info("bmp: building %d images (block size %d)", n, bsize)
    d = work / "bmp"
    built = build_engine(report["engines"], "bmp", d, sparse, {"bsize": bsize})
    if built is None:
        return
    engine, build = built
    rows, times = serial(
        lambda i: engine.search_batch(q_sparse[i], K).rows[0],
        q_sparse.shape[0],
        budgets["serial_s"],
    )
    m = rows.shape[0]
    report["engines"]["bmp"] = {
        "kind": f"sparse, exact at 8-bit impacts / integer queries (bmp, {bsize} per block)",
        "n_images": n,
        "build_seconds": sig(build),
        "bytes_per_image": round(engine.nbytes / n, 1),
        "bytes_note": "bmp index + the stored impacts (for explanations and the tie fallback)",
        **times_summary(times),
        "batch_qps": round(m / times.sum(), 1),
        "batch_threads": 1,
        "recall@10_vs_exact_sparse": round(recall_at_k(rows, truth[:m]), 4),
        "postings_per_query": None,
        "postings_note": "bmp does not report it (inverted-blockmax runs the same algorithm)",
        "bruteforce_fallbacks": int(engine.fallbacks),
        "queries": int(m),
    }
    engine.close()
    engine.remove_files(d)


def bench_milvus(
    report: dict[str, Any],
    work: Path,
    sparse: sp.csr_matrix,
    dense: np.ndarray,
    q_sparse: sp.csr_matrix,
    m: int,
    n_lat: int,
    progress: bool,
) -> None:
    """Measure milvus-lite on the first ``m`` images, against their exact ranking."""
    sub_sparse, sub_dense = sparse[:m], dense[:m]
    truth = exact_sparse_topk(sub_sparse, q_sparse)
    log_progress(progress, "milvus-lite: building %d images", m)
    mdir = work / "milvus"
    built = build_engine(
        report["engines"], "milvus", mdir, sub_sparse, {}, dense=sub_dense, label="milvus-lite"
    )
    if built is None:
        return
    engine, build = built
    try:
        n_q = min(q_sparse.shape[0], MILVUS_MAX_QUERIES)
        n_lat = min(n_lat, MILVUS_MAX_LATENCY)
        engine.search_batch(q_sparse[:1], K)  # warm-up
        t0 = time.perf_counter()
        rows = np.full((n_q, K), -1, dtype=np.int64)
        for s in range(0, n_q, 100):
            rows[s : s + 100] = engine.search_batch(q_sparse[s : min(s + 100, n_q)], K).rows
        batch_s = time.perf_counter() - t0
        rows_q = [q_sparse[i] for i in range(n_lat)]
        lat = latency(lambda i: engine.search_batch(rows_q[i], K), n_lat)
        report["engines"]["milvus-lite"] = {
            "kind": "sparse, exact (SPARSE_INVERTED_INDEX, milvus-lite)",
            "n_images": m,
            "build_seconds": sig(build),
            "bytes_per_image": round(dir_bytes(mdir / "milvus.db") / m, 1),
            "bytes_note": "dense and sparse vectors together",
            **lat,
            "batch_qps": round(n_q / batch_s, 1),
            "batch_threads": "milvus-lite server",
            "recall@10_vs_exact_sparse": round(recall_at_k(rows, truth[:n_q]), 4),
            "batch_queries": int(n_q),
        }
    finally:
        engine.close()
