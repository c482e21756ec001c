"""The dense baselines of ``mmsparse bench retrieval``: faiss flat (exact) and HNSW.

``IndexFlatIP`` gives the exact dense top-10; ``IndexHNSWFlat`` is swept over ``efSearch``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.bench.retrieval.corpus import recall_at_k
from mmsparse.bench.retrieval.measure import at_recall, latency, log_progress, sig
from mmsparse.bench.retrieval.options import K
from mmsparse.errors import MissingExtraError


def bench_faiss(
    report: dict[str, Any],
    work: Path,
    dense: np.ndarray,
    q_dense: np.ndarray,
    truth_sparse: np.ndarray,
    budgets: dict[str, Any],
    engines: Sequence[str],
    hnsw: dict[str, int],
    hnsw_ef: Sequence[int],
    progress: bool,
) -> None:
    """Measure faiss ``IndexFlatIP`` and sweep ``IndexHNSWFlat`` over ``efSearch``."""
    from mmsparse.errors import require_extra

    try:
        faiss = require_extra("faiss", "index", "The faiss dense baselines (faiss-cpu)")
    except MissingExtraError as exc:
        for name in ("faiss-flat", "faiss-hnsw"):
            if name in engines:
                report["engines"][name] = {"skipped": str(exc)}
        return
    n, d = dense.shape
    n_lat, lat_s, n_sweep = budgets["n_lat"], budgets["lat_s"], budgets["n_sweep"]
    all_threads = faiss.omp_get_max_threads()
    xb = np.ascontiguousarray(dense, dtype=np.float32)
    xq = np.ascontiguousarray(q_dense, dtype=np.float32)
    log_progress(progress, "faiss-flat: %d images", n)
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(xb)
    build = time.perf_counter() - t0
    faiss.write_index(flat, str(work / "flat.faiss"))
    flat_bytes = (work / "flat.faiss").stat().st_size
    (work / "flat.faiss").unlink()
    t0 = time.perf_counter()
    _, truth_dense = flat.search(xq, K)
    batch_s = time.perf_counter() - t0
    if "faiss-flat" in engines:
        faiss.omp_set_num_threads(1)
        lat = latency(lambda i: flat.search(xq[i : i + 1], K), n_lat, lat_s)
        faiss.omp_set_num_threads(all_threads)
        report["engines"]["faiss-flat"] = {
            "kind": "dense, exact (IndexFlatIP)",
            "n_images": n,
            "build_seconds": sig(build),
            "bytes_per_image": round(flat_bytes / n, 1),
            **lat,
            "batch_qps": round(xq.shape[0] / batch_s, 1),
            "batch_threads": all_threads,
            "recall@10_vs_exact_sparse": round(recall_at_k(truth_dense, truth_sparse), 4),
            "recall@10_vs_exact_dense": 1.0,
        }
    flat.reset()
    if "faiss-hnsw" not in engines:
        return
    log_progress(
        progress, "faiss-hnsw: building M=%d efConstruction=%d", hnsw["M"], hnsw["efConstruction"]
    )
    t0 = time.perf_counter()
    index = faiss.IndexHNSWFlat(d, int(hnsw["M"]), faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = int(hnsw["efConstruction"])
    index.add(xb)
    build = time.perf_counter() - t0
    faiss.write_index(index, str(work / "hnsw.faiss"))
    hnsw_bytes = (work / "hnsw.faiss").stat().st_size
    (work / "hnsw.faiss").unlink()
    points = []
    for ef in hnsw_ef:
        index.hnsw.efSearch = int(ef)
        t0 = time.perf_counter()
        _, found = index.search(xq[:n_sweep], K)
        batch_s = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)
        lat = latency(lambda i: index.search(xq[i : i + 1], K), n_lat, lat_s)
        faiss.omp_set_num_threads(all_threads)
        points.append(
            {
                "setting": {"efSearch": int(ef)},
                **lat,
                "batch_qps": round(n_sweep / batch_s, 1),
                "recall@10_vs_exact_dense": round(recall_at_k(found, truth_dense[:n_sweep]), 4),
                "recall@10_vs_exact_sparse": round(recall_at_k(found, truth_sparse[:n_sweep]), 4),
            }
        )
        log_progress(progress, "faiss-hnsw: %s", points[-1])
    report["sweeps"]["faiss-hnsw"] = {
        "kind": "dense, approximate (IndexHNSWFlat)",
        "recall_against": "exact dense (IndexFlatIP)",
        "build": dict(hnsw),
        "n_images": n,
        "build_seconds": sig(build),
        "bytes_per_image": round(hnsw_bytes / n, 1),
        "batch_threads": all_threads,
        "points": points,
        "at_recall": at_recall(points, "recall@10_vs_exact_dense"),
    }
