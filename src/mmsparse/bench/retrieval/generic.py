"""Any registered engine without a harness of its own, measured the same way as the others.

An engine added to :mod:`mmsparse.index.engines` as one file is benchmarked by name
(``--engines NAME``) with no change here: built on the corpus with its default build
parameters, searched with its default search parameters, timed one query at a time on one
thread and in one batch, and scored by recall@10 against the exact sparse ranking.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.bench.retrieval.approximate import sweep_sparse_engine
from mmsparse.bench.retrieval.measure import build_engine, dir_bytes, log_progress, sig


def registered_engines(harnessed: tuple[str, ...]) -> tuple[str, ...]:
    """Registered engines that have no harness of their own in ``harnessed``."""
    from mmsparse.index.engines import engine_names

    return tuple(name for name in engine_names() if name not in harnessed)


def bench_registered_engine(
    report: dict[str, Any],
    work: Path,
    name: str,
    sparse: sp.csr_matrix,
    q_sparse: sp.csr_matrix,
    truth: np.ndarray,
    budgets: dict[str, Any],
    progress: bool,
) -> None:
    """Build a registry engine with its defaults and measure it at its default search."""
    from mmsparse.index.engines import get_engine

    cls = get_engine(name)
    n = sparse.shape[0]
    log_progress(progress, "%s: building %d images (registry defaults)", name, n)
    directory = work / name
    built = build_engine(report["engines"], name, directory, sparse, {})
    if built is None:
        return
    engine, build = built
    try:
        point = sweep_sparse_engine(name, engine, [{}], q_sparse, truth, budgets, progress)[0]
    finally:
        engine.close()
    exact = "exact" in cls.capabilities
    report["engines"][name] = {
        "kind": f"sparse, {'exact' if exact else 'approximate'} ({cls.summary or name}; "
        "registry defaults)",
        "n_images": n,
        "build_seconds": sig(build),
        "bytes_per_image": round(dir_bytes(directory) / n, 1),
        **{k: v for k, v in point.items() if k != "setting"},
    }
