"""TREC run files and qrels: write, read, and recompute metrics from them.

Run lines are ``qid Q0 docid rank score tag``; qrels lines are ``qid 0 docid 1``. Ranks in
the files follow mmsparse's tie rule (equal scores: earlier document row first), and
:func:`metrics_from_run` reads the rank column, so it reproduces the reported metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mmsparse.errors import DataError
from mmsparse.io_utils import atomic_path


def write_run(
    path: str | Path,
    qids: Sequence[str],
    dids: Sequence[str],
    scores: np.ndarray,
    positions: np.ndarray,
    tag: str,
) -> None:
    """Write a TREC run file atomically.

    Args:
        path: Destination.
        qids: Query id of each row of ``scores``.
        dids: Document ids, indexed by ``positions``.
        scores: ``(n_queries, depth)`` scores, best first.
        positions: ``(n_queries, depth)`` document positions.
        tag: Run tag (last column).
    """
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for qi, qid in enumerate(qids):
            lines = [
                f"{qid} Q0 {dids[int(d)]} {r + 1} {float(s):.9g} {tag}\n"
                for r, (d, s) in enumerate(zip(positions[qi], scores[qi]))
            ]
            fh.writelines(lines)


def write_qrels(path: str | Path, qrels: Mapping[str, Sequence[str]]) -> None:
    """Write qrels (every listed document relevant with grade 1) atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for qid, docs in qrels.items():
            fh.writelines(f"{qid} 0 {d} 1\n" for d in docs)


def read_run(path: str | Path) -> dict[str, list[tuple[str, int, float]]]:
    """Read a run file into ``{qid: [(docid, rank, score), ...]}`` sorted by rank.

    Raises:
        DataError: On a malformed line (file and line number named).
    """
    run: dict[str, list[tuple[str, int, float]]] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if len(parts) != 6:
                raise DataError(f"{path}:{n}: expected 6 columns in a TREC run line")
            qid, _, did, rank, score, _ = parts
            run.setdefault(qid, []).append((did, int(rank), float(score)))
    for docs in run.values():
        docs.sort(key=lambda x: x[1])
    return run


def read_qrels(path: str | Path) -> dict[str, set[str]]:
    """Read qrels into ``{qid: {relevant docids}}`` (grade > 0)."""
    qrels: dict[str, set[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if len(parts) != 4:
                raise DataError(f"{path}:{n}: expected 4 columns in a qrels line")
            qid, _, did, grade = parts
            if int(grade) > 0:
                qrels.setdefault(qid, set()).add(did)
    return qrels


def metrics_from_run(
    run: Mapping[str, list[tuple[str, int, float]]],
    qrels: Mapping[str, set[str]],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """R@K (hit if any relevant in the top K) and MRR@10, percent, from a run's rank order.

    Every query of ``qrels`` counts; one absent from the run, or without a relevant document
    in it, counts as a miss.
    """
    first = []
    for qid, rel in qrels.items():
        rank = next((i + 1 for i, (d, _, _) in enumerate(run.get(qid, [])) if d in rel), np.inf)
        first.append(rank)
    r = np.asarray(first, dtype=np.float64)
    out = {f"R@{k}": float(100.0 * np.mean(r <= k)) for k in ks}
    out["MRR@10"] = float(100.0 * np.mean(np.where(r <= 10, 1.0 / r, 0.0)))
    return out
