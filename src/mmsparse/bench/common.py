"""What the benchmarks share (above all the training ones, ``bench flickr8k`` and ``frontier``).

Train or reuse a run and evaluate it on val (:func:`train_and_evaluate`), aggregate runs over
seeds (:func:`seed_rows`), test paired differences (:func:`paired_permutation_test`), lay the
rows out as a table (:func:`score_rows`), draw and save a plot (:func:`pyplot`,
:func:`save_png`), and write a marked block of a Markdown report
(:func:`replace_marked_block`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.bench.machine import machine_record
from mmsparse.config import EvalConfig, RunConfig
from mmsparse.evaluate.run import evaluate_run
from mmsparse.io_utils import atomic_write_text
from mmsparse.train import train

logger = logging.getLogger("mmsparse.bench")

#: The retrieval metrics of every row.
METRICS = ("R@1", "R@5", "R@10", "MRR@10")
#: The score types, in table order.
SCORE_TYPES = ("dense", "sparse", "hybrid")


@dataclass(frozen=True)
class SeededBench:
    """What a training benchmark on Flickr8k runs (``bench flickr8k`` and ``frontier`` share it).

    Each benchmark's spec adds the fields of its own rows.

    Attributes:
        data: Directory of the Flickr8k features (``../shared/flickr8k``).
        bundle: Backbone bundle (MiniLM word embeddings and vocabulary; the restricted
            vocabulary and the readability measure need it), or ``None``.
        out: Directory of all the runs (finished ones are reused).
        stage0_config: Config of the stage-0 dense fit (the dense backbone).
        config: Config of the joint method (D2S and the other rows are derived from it).
        seeds: Seeds of the main rows; the first one is used for everything else.
        text_topk: Terms kept per caption at evaluation.
        image_topk: Terms kept per image at evaluation.
        reg_scales: Multipliers of ``q_reg``/``d_reg`` for the trade-off curves.
        overrides: Extra ``key=value`` overrides of every sparse run (e.g. epochs).
        stage0_overrides: Extra overrides of the stage-0 runs.
    """

    data: str
    bundle: str | None
    out: str
    stage0_config: str = "configs/flickr8k-stage0.json"
    config: str = "configs/flickr8k.json"
    seeds: tuple[int, ...] = (42, 43, 44)
    text_topk: int = 64
    image_topk: int = 256
    reg_scales: tuple[float, ...] = (1 / 3, 1.0, 3.0)
    overrides: tuple[str, ...] = ()
    stage0_overrides: tuple[str, ...] = ()


@dataclass
class RunRecord:
    """One trained run and its validation result."""

    name: str
    group: str
    seed: int
    run_dir: Path
    result: dict[str, Any]
    ranks: dict[str, dict[str, np.ndarray]] = field(repr=False)
    train_seconds: float
    config: dict[str, Any]


def data_overrides(data: str, bundle: str | None) -> list[str]:
    """The ``key=value`` overrides that point a config at ``data`` and ``bundle``."""
    return [f"data.path={data}", f"data.bundle={bundle}" if bundle else "data.bundle=null"]


def train_or_reuse(cfg: RunConfig, run_dir: Path) -> float:
    """Train ``cfg`` into ``run_dir`` (continuing a partial run); returns training seconds."""
    if (run_dir / "final.json").is_file():
        logger.info("reusing finished run %s", run_dir)
    result = train(cfg, run_dir, resume=(run_dir / "config.json").is_file())
    return float(result.train_seconds)


def train_and_evaluate(
    name: str,
    group: str,
    cfg: RunConfig,
    seed: int,
    run_dir: Path,
    eval_cfg: EvalConfig,
    score_types: Sequence[str],
) -> tuple[RunRecord, dict[str, float] | None]:
    """Train (or reuse) one run of a benchmark and evaluate it on val.

    Args:
        name: Row name of the run.
        group: Table group of the row.
        cfg: Its config.
        seed: Its seed.
        run_dir: Where it is (or goes).
        eval_cfg: Evaluation settings (the serving cap).
        score_types: Scores the row reports (``dense``, ``sparse``, ``hybrid``).

    Returns:
        The record (only ``score_types`` kept) and the readability measure, if any.
    """
    seconds = train_or_reuse(cfg, run_dir)
    res = evaluate_run(run_dir, "val", eval_cfg=eval_cfg, save=False)
    d = res.to_dict()
    for direction in ("t2i", "i2t"):
        d[direction] = {st: d[direction][st] for st in score_types}
    rec = RunRecord(name, group, seed, run_dir, d, res.ranks, seconds, cfg.to_dict())
    last = score_types[-1]
    logger.info("%s seed %d: t2i %s R@1 = %.2f", name, seed, last, d["t2i"][last]["R@1"])
    return rec, res.readability  # type: ignore[return-value]


def paired_permutation_test(
    a: np.ndarray, b: np.ndarray, n_resamples: int = 10000, seed: int = 0
) -> dict[str, float]:
    """Two-sided paired sign-flip permutation test of ``mean(a - b)``.

    Args:
        a: Per-query scores of system A.
        b: Per-query scores of system B, paired with ``a``.
        n_resamples: Random sign flips.
        seed: Seed of the flips.

    Returns:
        ``{"mean_diff", "p_value", "n"}``.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    observed = abs(d.mean())
    rng = np.random.default_rng(seed)
    count = 0
    for start in range(0, n_resamples, 1000):
        k = min(1000, n_resamples - start)
        signs = rng.choice((-1.0, 1.0), size=(k, d.size))
        count += int((np.abs((signs * d).mean(axis=1)) >= observed - 1e-12).sum())
    return {
        "mean_diff": float(d.mean()),
        "p_value": (count + 1) / (n_resamples + 1),
        "n": int(d.size),
    }


def hit_at_1(ranks: np.ndarray) -> np.ndarray:
    """Per query: 1.0 where the relevant item is ranked first, else 0.0."""
    return (ranks <= 1).astype(float)


def reciprocal_rank_at_10(ranks: np.ndarray) -> np.ndarray:
    """Per query: ``1 / rank`` where the rank is at most 10, else 0.0."""
    return np.where(ranks <= 10, 1.0 / ranks, 0.0)


def aggregate_seeds(records: Sequence[RunRecord], score_types: Sequence[str]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every metric of one row's runs."""
    out: dict[str, Any] = {"seeds": [r.seed for r in records]}
    for direction in ("t2i", "i2t"):
        out[direction] = {}
        for st in score_types:
            vals = {m: [r.result[direction][st][m] for r in records] for m in METRICS}
            out[direction][st] = {
                m: {
                    "mean": float(np.mean(v)),
                    "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                }
                for m, v in vals.items()
            }
    if "sparsity" in records[0].result and "sparse" in score_types:
        out["sparsity"] = {
            k: float(np.mean([r.result["sparsity"][k] for r in records]))
            for k in ("flops", "text_nnz", "image_nnz")
        }
    out["train_seconds"] = float(np.mean([r.train_seconds for r in records]))
    return out


def seed_rows(
    records: Mapping[str, Sequence[RunRecord]],
    readability: Mapping[str, Sequence[dict[str, float]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The results' ``rows``: per row name, its group, metrics over seeds and run folders.

    Args:
        records: The runs of every row (one per seed).
        readability: Per row, the readability measure of each run (averaged into the row).
    """
    rows = {}
    for name, recs in records.items():
        types = [t for t in SCORE_TYPES if t in recs[0].result["t2i"]]
        row = {
            "group": recs[0].group,
            **aggregate_seeds(recs, types),
            "runs": [str(r.run_dir) for r in recs],
        }
        if readability and readability.get(name):
            measures = readability[name]
            row["readability"] = {k: float(np.mean([r[k] for r in measures])) for k in measures[0]}
        rows[name] = row
    return rows


def results_footer(
    records: Mapping[str, Sequence[RunRecord]], load_start: list[float] | None, started: float
) -> dict[str, Any]:
    """The last fields of a training benchmark's results.

    ``machine`` (:func:`~mmsparse.bench.machine.machine_record`), ``total_seconds`` (this
    invocation, which reuses finished runs and resumes partial ones), and what the whole
    table costs from scratch: ``train_seconds_all_runs`` and ``n_runs``.

    Args:
        records: The runs of every row.
        load_start: The load average when the benchmark started.
        started: ``time.perf_counter()`` when it started.
    """
    return {
        "machine": machine_record(load_start),
        "total_seconds": round(time.perf_counter() - started, 1),
        "train_seconds_all_runs": round(
            sum(r.train_seconds for recs in records.values() for r in recs), 1
        ),
        "n_runs": sum(len(recs) for recs in records.values()),
    }


def mean_std(cell: Mapping[str, float]) -> str:
    """``{"mean", "std"}`` as ``"mean ± std"`` (just the mean when std is 0)."""
    return f"{cell['mean']:.2f} ± {cell['std']:.2f}" if cell["std"] else f"{cell['mean']:.2f}"


def sparsity_cells(row: Mapping[str, Any], score: str) -> list[str]:
    """FLOPs, terms per caption and terms per image of a row's sparse score (else blanks)."""
    sp = row.get("sparsity") if score == "sparse" else None
    if not sp:
        return ["", "", ""]
    return [f"{sp['flops']:.1f}", f"{sp['text_nnz']:.1f}", f"{sp['image_nnz']:.1f}"]


def score_rows(
    rows: Mapping[str, Mapping[str, Any]],
    cells: Callable[[Mapping[str, Any], str], list[str]],
    groups: Sequence[str] | None = None,
) -> list[list[str]]:
    """Table rows: one per (results row, score type it has): name, score, seeds, ``cells``.

    Args:
        rows: The results' ``rows`` (:func:`seed_rows`).
        cells: The further cells of a row for one score type.
        groups: Only the rows of these groups (default: every row).
    """
    out = []
    for name, row in rows.items():
        if groups is not None and row["group"] not in groups:
            continue
        for st in SCORE_TYPES:
            if st in row["t2i"]:
                out.append([name, st, str(len(row["seeds"])), *cells(row, st)])
    return out


def pyplot(what: str) -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display).

    Raises:
        MissingExtraError: Naming ``what`` when matplotlib is not installed.
    """
    from mmsparse.errors import require_extra

    require_extra("matplotlib", "plot", what)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path, dpi: int = 100) -> None:
    """Lay out ``fig``, write it to ``path`` as PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    from mmsparse.io_utils import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def replace_marked_block(path: str | Path, marker: str, block: str, title: str) -> None:
    """Put ``block`` in place of the marked part of the Markdown file ``path``.

    ``block`` starts with ``<!-- {marker}:begin -->`` and ends with ``<!-- {marker}:end -->``;
    a file without that part gets it appended (a new file is headed ``title``).
    """
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = (text + "\n\n" if text else f"{title}\n\n") + block + "\n"
    atomic_write_text(path, text)
