"""The approximate sparse engines of ``mmsparse bench retrieval``, swept over their knob.

Seismic over ``(query_cut, heap_factor)``, kannolo over ``ef_search``; recall against the
exact sparse ranking (of the same images).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.bench.retrieval.corpus import exact_sparse_topk, recall_at_k
from mmsparse.bench.retrieval.measure import at_recall, build_engine, latency, log_progress, sig
from mmsparse.bench.retrieval.options import K


def sweep_sparse_engine(
    name: str,
    engine: Any,
    settings: Sequence[dict[str, Any]],
    q_sparse: sp.csr_matrix,
    truth: np.ndarray,
    budgets: dict[str, Any],
    progress: bool,
) -> list[dict[str, Any]]:
    """One point per search setting of an approximate sparse engine.

    Each point has the batch throughput over the first ``n_sweep`` queries (all threads),
    the single-query latency of the first ``n_lat`` (one thread) and recall@10 against the
    exact sparse ranking ``truth``. ``engine.search_batch(queries, k, threads=, **setting)``
    is the engine's search.
    """
    n_lat, lat_s, n_sweep = budgets["n_lat"], budgets["lat_s"], budgets["n_sweep"]
    rows_q = [q_sparse[i] for i in range(n_lat)]
    sweep_q = q_sparse[:n_sweep]
    points = []
    for setting in settings:
        t0 = time.perf_counter()
        hits = engine.search_batch(sweep_q, K, **setting)
        batch_s = time.perf_counter() - t0
        lat = latency(
            lambda i, kw=setting: engine.search_batch(rows_q[i], K, threads=1, **kw), n_lat, lat_s
        )
        points.append(
            {
                "setting": dict(setting),
                **lat,
                "batch_qps": round(n_sweep / batch_s, 1),
                "recall@10_vs_exact_sparse": round(recall_at_k(hits.rows, truth[:n_sweep]), 4),
            }
        )
        log_progress(progress, "%s: %s", name, points[-1])
    return points


def bench_seismic(
    report: dict[str, Any],
    work: Path,
    sparse: sp.csr_matrix,
    q_sparse: sp.csr_matrix,
    truth: np.ndarray,
    budgets: dict[str, Any],
    build_params: dict[str, Any],
    settings: Sequence[tuple[int, float]],
    progress: bool,
) -> None:
    """Build and sweep Seismic over ``(query_cut, heap_factor)`` settings."""
    n = sparse.shape[0]
    log_progress(progress, "seismic: building %d images %s", n, build_params)
    d = work / "seismic"
    built = build_engine(report["engines"], "seismic", d, sparse, build_params)
    if built is None:
        return
    engine, build = built
    engine.search_batch(q_sparse[:2], K)  # warm-up
    points = sweep_sparse_engine(
        "seismic",
        engine,
        [{"query_cut": qc, "heap_factor": hf} for qc, hf in settings],
        q_sparse,
        truth,
        budgets,
        progress,
    )
    report["sweeps"]["seismic"] = {
        "kind": "sparse, approximate (Seismic)",
        "recall_against": "exact sparse (inverted)",
        "build": dict(engine.params["build"]),
        "n_images": n,
        "build_seconds": sig(build),
        "bytes_per_image": round(engine.nbytes / n, 1),
        "batch_threads": os.cpu_count(),
        "points": points,
        "at_recall": at_recall(points, "recall@10_vs_exact_sparse"),
    }
    engine.close()
    engine.remove_files(d)


def bench_kannolo(
    report: dict[str, Any],
    work: Path,
    sparse: sp.csr_matrix,
    q_sparse: sp.csr_matrix,
    truth: np.ndarray | None,
    budgets: dict[str, Any],
    build_params: dict[str, int],
    efs: Sequence[int],
    progress: bool,
) -> None:
    """Build and sweep kannolo over ``ef_search`` (truth ``None``: its images' own)."""
    n = sparse.shape[0]
    if truth is None:  # a subset of the corpus: its own exact ranking
        truth = exact_sparse_topk(sparse, q_sparse[: budgets["n_sweep"]])
    log_progress(progress, "kannolo: building %d images %s", n, build_params)
    d = work / "kannolo"
    built = build_engine(report["engines"], "kannolo", d, sparse, build_params)
    if built is None:
        return
    engine, build = built
    settings = [{"ef_search": int(ef)} for ef in efs]
    points = sweep_sparse_engine("kannolo", engine, settings, q_sparse, truth, budgets, progress)
    report["sweeps"]["kannolo"] = {
        "kind": "sparse, approximate (kannolo SparsePlainHNSW)",
        "recall_against": "exact sparse of the same images",
        "build": dict(build_params),
        "n_images": n,
        "build_seconds": sig(build),
        "bytes_per_image": round(engine.nbytes / n, 1),
        "batch_threads": os.cpu_count(),
        "points": points,
        "at_recall": at_recall(points, "recall@10_vs_exact_sparse"),
    }
    engine.close()
    engine.remove_files(d)
