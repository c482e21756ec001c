"""How ``mmsparse bench retrieval`` measures an engine: timers, recall targets, builds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.bench.retrieval.options import RECALL_TARGETS
from mmsparse.errors import MissingExtraError

log = logging.getLogger(__package__)  # the log lines keep the name they had before the split

MIN_TIMED = 20


def sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits."""
    # significant digits, not decimals: a small build or a fast query takes microseconds
    return float(f"{x:.{digits}g}")


def latency(fn: Callable[[int], Any], n: int, budget_s: float = float("inf")) -> dict[str, float]:
    """Time ``fn(i)`` for ``i < n`` one by one, stopping after ``budget_s`` (>= 20 queries)."""
    times = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
        if i + 1 >= MIN_TIMED and time.perf_counter() - start > budget_s:
            break
    return times_summary(np.asarray(times))


def serial(
    fn: Callable[[int], np.ndarray], n: int, budget_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Answer queries one by one until ``budget_s``: ``(rows (m, K), seconds (m,))``."""
    rows, times = [], []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        rows.append(fn(i))
        times.append(time.perf_counter() - t0)
        if i + 1 >= MIN_TIMED and time.perf_counter() - start > budget_s:
            break
    return np.stack(rows), np.asarray(times)


def times_summary(t: np.ndarray) -> dict[str, float]:
    """p50, p99 and mean in milliseconds of per-query seconds ``t``."""
    return {
        "p50_ms": sig(np.percentile(t, 50) * 1e3),
        "p99_ms": sig(np.percentile(t, 99) * 1e3),
        "mean_ms": sig(t.mean() * 1e3),
        "latency_queries": int(t.size),
    }


def at_recall(points: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """The first sweep point (in sweep order) whose ``key`` recall reaches each target."""
    out: dict[str, Any] = {}
    for target in RECALL_TARGETS:
        hit = next((p for p in points if p[key] >= target), None)
        out[f"{target:.2f}"] = hit
    return out


def dir_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def log_progress(progress: bool, msg: str, *args: Any) -> None:
    """Log ``msg`` at INFO when ``progress`` is on."""
    if progress:
        log.info(msg, *args)


def build_engine(
    skipped: dict[str, Any],
    name: str,
    directory: Path,
    sparse: sp.csr_matrix,
    params: dict[str, Any],
    *,
    dense: np.ndarray | None = None,
    label: str | None = None,
) -> tuple[Any, float] | None:
    """Build and open a registry engine on the corpus: ``(engine, build seconds)``.

    A missing optional package is recorded under ``skipped[label or name]``; ``None``.
    """
    from mmsparse.index.engines import get_engine

    cls = get_engine(name)
    try:
        t0 = time.perf_counter()
        built = cls.build(directory, sparse, dense, params=params)
        seconds = time.perf_counter() - t0
    except MissingExtraError as exc:
        skipped[label or name] = {"skipped": str(exc)}
        return None
    engine = cls.open(directory, built, n_docs=sparse.shape[0], vocab_size=sparse.shape[1])
    return engine, seconds
