"""The Flickr8k benchmark: every method of the paper on real images and captions.

One command reproduces the whole table (``mmsparse bench flickr8k``):

1. Stage 0, per seed: a contrastive fit of the dense heads on train (``configs/flickr8k-stage0
   .json``). EfficientNet-Lite0 and MiniLM are not aligned, so this plays the role of the VLP's
   pretrained final layer; evaluated as is it is the *dense backbone* row.
2. From that same stage 0: D2S and the joint method (``configs/flickr8k.json``) for every seed;
   for the first seed also each ``distill_teacher`` mode, the no-distillation and
   frozen-final-layer ablations, and probabilistic expansion control on.
3. The trade-off curve: D2S and joint at several regulariser strengths (the published
   ``q_reg``/``d_reg`` scaled by ``reg_scales``), R@1 against FLOPs.
4. A paired significance test of joint sparse against D2S sparse over the val queries.

Sparse vectors are evaluated at a sparsity an inverted index can serve: each caption keeps
at most ``text_topk`` terms and each image at most ``image_topk`` (top-k pruning at encoding
time, on top of the l1 regulariser that does most of the work). Everything is tuned and
reported on val; the test split is held out. Completed runs are reused, so an interrupted
benchmark continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmsparse.config import EvalConfig, RunConfig, apply_overrides, load_config
from mmsparse.evaluate.report import format_table
from mmsparse.evaluate.run import evaluate_run
from mmsparse.io_utils import atomic_write_json, atomic_write_text
from mmsparse.train import train

logger = logging.getLogger("mmsparse.bench")

METRICS = ("R@1", "R@5", "R@10", "MRR@10")


@dataclass(frozen=True)
class Flickr8kBench:
    """What the benchmark runs.

    Attributes:
        data: Directory of the Flickr8k features (``../shared/flickr8k``).
        bundle: Backbone bundle (MiniLM word embeddings and vocabulary), or ``None``.
        out: Directory of all the runs.
        stage0_config: Config of the stage-0 dense fit.
        config: Config of the joint method (D2S and ablations are derived from it).
        seeds: Seeds of the main rows (dense backbone, D2S, joint).
        text_topk: Terms kept per caption at evaluation.
        image_topk: Terms kept per image at evaluation.
        reg_scales: Multipliers of ``q_reg``/``d_reg`` for the trade-off curve.
        variants: Run the single-seed variants (teacher modes, ablations, expansion control).
        overrides: Extra ``key=value`` overrides applied to every sparse run (e.g. epochs).
        stage0_overrides: Extra overrides of the stage-0 runs.
    """

    data: str
    bundle: str | None
    out: str
    stage0_config: str = "configs/flickr8k-stage0.json"
    config: str = "configs/flickr8k-paper.json"
    seeds: tuple[int, ...] = (42, 43, 44)
    text_topk: int = 64
    image_topk: int = 256
    reg_scales: tuple[float, ...] = (1 / 3, 1.0, 3.0)
    variants: bool = True
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


def _data_overrides(spec: Flickr8kBench) -> list[str]:
    out = [f"data.path={spec.data}"]
    out.append(f"data.bundle={spec.bundle}" if spec.bundle else "data.bundle=null")
    return out


def _train_or_reuse(cfg: RunConfig, run_dir: Path) -> float:
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
    seconds = _train_or_reuse(cfg, run_dir)
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


def _rr10(ranks: np.ndarray) -> np.ndarray:
    return np.where(ranks <= 10, 1.0 / ranks, 0.0)


def _aggregate(records: Sequence[RunRecord], score_types: Sequence[str]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every metric."""
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


def run_flickr8k_bench(
    spec: Flickr8kBench,
    *,
    results_path: str | Path | None = None,
    doc_path: str | Path | None = None,
    plot_path: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or continue) the whole Flickr8k benchmark and write its results.

    Args:
        spec: What to run.
        results_path: Write the JSON results there (e.g. ``benchmarks/flickr8k.json``).
        doc_path: Write the Markdown report there (e.g. ``docs/flickr8k.md``), replacing the
            part between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``.
        plot_path: Write the trade-off curve (PNG) there.

    Returns:
        The results dict (rows, significance test, trade-off curve, hardware, timings).
    """
    t0 = time.perf_counter()
    load_start = _loadavg()
    out = Path(spec.out)
    data = _data_overrides(spec)
    stage0_base = load_config(spec.stage0_config, [*data, *spec.stage0_overrides])
    joint_base = load_config(spec.config, [*data, *spec.overrides])
    eval_cfg = dataclasses.replace(
        joint_base.eval, text_topk=spec.text_topk, image_topk=spec.image_topk
    )
    # The runs select their epoch on unpruned validation, as the recorded table's did
    # (configs/flickr8k.json's eval block prunes, for 'mmsparse evaluate'); the table's
    # pruning is applied at evaluation (eval_cfg). Finished runs are reused unchanged.
    joint_base = joint_base.replace(
        eval=dataclasses.replace(joint_base.eval, text_topk=None, image_topk=None)
    )
    records: dict[str, list[RunRecord]] = {}

    def run(
        name: str, group: str, cfg: RunConfig, seed: int, score_types: Sequence[str]
    ) -> RunRecord:
        rec, _ = train_and_evaluate(
            name, group, cfg, seed, out / f"{name}-s{seed}", eval_cfg, score_types
        )
        records.setdefault(name, []).append(rec)
        return rec

    def derived(base: RunConfig, seed: int, stage0: Path, *extra: str) -> RunConfig:
        return apply_overrides(base, [f"train.seed={seed}", f"model.init_from={stage0}", *extra])

    main_seed = spec.seeds[0]
    o = joint_base.objective
    for seed in spec.seeds:
        s0 = apply_overrides(stage0_base, [f"train.seed={seed}"])
        run("dense-backbone", "main", s0, seed, ("dense",))
        stage0 = out / f"dense-backbone-s{seed}"
        run(
            "d2s",
            "main",
            derived(joint_base, seed, stage0, "objective.method=d2s"),
            seed,
            ("sparse",),
        )
        run("joint", "main", derived(joint_base, seed, stage0), seed, ("dense", "sparse", "hybrid"))

    stage0 = out / f"dense-backbone-s{main_seed}"
    if spec.variants:
        for mode in ("official", "joint", "detached"):
            if mode == o.distill_teacher:
                continue
            run(
                f"joint-teacher-{mode}",
                "teacher",
                derived(joint_base, main_seed, stage0, f"objective.distill_teacher={mode}"),
                main_seed,
                ("dense", "sparse", "hybrid"),
            )
        run(
            "no-distill",
            "ablation",
            derived(joint_base, main_seed, stage0, "objective.method=no_distill"),
            main_seed,
            ("dense", "sparse", "hybrid"),
        )
        run(
            "frozen-final-layer",
            "ablation",
            derived(joint_base, main_seed, stage0, "objective.method=frozen_dense"),
            main_seed,
            ("dense", "sparse", "hybrid"),
        )
        ec = "true" if not o.expansion_control else "false"
        run(
            f"joint-expansion-{'on' if ec == 'true' else 'off'}",
            "expansion",
            derived(joint_base, main_seed, stage0, f"objective.expansion_control={ec}"),
            main_seed,
            ("dense", "sparse", "hybrid"),
        )

    curve: dict[str, list[dict[str, float]]] = {"d2s": [], "joint": []}
    for method in ("d2s", "joint"):
        for scale in spec.reg_scales:
            if scale == 1.0:
                rec = next(r for r in records[method] if r.seed == main_seed)
            else:
                rec = run(
                    f"{method}-reg{scale:.3g}",
                    "curve",
                    derived(
                        joint_base,
                        main_seed,
                        stage0,
                        f"objective.method={method}",
                        f"objective.q_reg={o.q_reg * scale}",
                        f"objective.d_reg={o.d_reg * scale}",
                    ),
                    main_seed,
                    ("sparse",),
                )
            sparsity = rec.result["sparsity"]
            curve[method].append(
                {
                    "reg_scale": scale,
                    "q_reg": o.q_reg * scale,
                    "d_reg": o.d_reg * scale,
                    "t2i_R@1": rec.result["t2i"]["sparse"]["R@1"],
                    "i2t_R@1": rec.result["i2t"]["sparse"]["R@1"],
                    "flops": sparsity["flops"],
                    "text_nnz": sparsity["text_nnz"],
                    "image_nnz": sparsity["image_nnz"],
                }
            )

    significance = {}
    for metric, fn in (("t2i_R@1", lambda r: (r <= 1).astype(float)), ("t2i_MRR@10", _rr10)):
        a = np.concatenate([fn(r.ranks["t2i"]["sparse"]) for r in records["joint"]])
        b = np.concatenate([fn(r.ranks["t2i"]["sparse"]) for r in records["d2s"]])
        significance[metric] = paired_permutation_test(a, b)
    significance["description"] = (
        "joint sparse minus D2S sparse, text-to-image, paired by (seed, query) over the val "
        "captions of every seed; two-sided sign-flip permutation test, 10,000 resamples"
    )

    rows = {}
    for name, recs in records.items():
        types = [t for t in ("dense", "sparse", "hybrid") if t in recs[0].result["t2i"]]
        rows[name] = {
            "group": recs[0].group,
            **_aggregate(recs, types),
            "runs": [str(r.run_dir) for r in recs],
        }
    results = {
        "benchmark": "flickr8k",
        "split": "val",
        "protocol": {
            "text_topk": spec.text_topk,
            "image_topk": spec.image_topk,
            "sparsity": "l1 regulariser (config) + top-k pruning at encoding",
            "seeds": list(spec.seeds),
        },
        "configs": {"stage0": stage0_base.to_dict(), "joint": joint_base.to_dict()},
        "rows": rows,
        "significance": significance,
        "tradeoff": curve,
        "hardware": hardware(),
        "load_average": {"start": load_start, "end": _loadavg()},
        "total_seconds": round(time.perf_counter() - t0, 1),
        # what the table costs from scratch; total_seconds is only this invocation, which
        # reuses finished runs and resumes partial ones
        "train_seconds_all_runs": round(
            sum(r.train_seconds for recs in records.values() for r in recs), 1
        ),
        "n_runs": sum(len(recs) for recs in records.values()),
    }
    if results_path:
        atomic_write_json(results_path, results)
    if plot_path:
        plot_tradeoff(curve, plot_path)
    if doc_path:
        write_report(results, doc_path)
    return results


def _loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages (other work on the machine slows the timings)."""
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover - not Unix
        return None


def hardware() -> dict[str, Any]:
    """Where the benchmark ran."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover - not Linux
        pass
    info = {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def plot_tradeoff(curve: dict[str, list[dict[str, float]]], path: str | Path) -> None:
    """R@1 against FLOPs for D2S and joint (the paper's Figure 2, left)."""
    from mmsparse.errors import require_extra
    from mmsparse.io_utils import atomic_path

    require_extra("matplotlib", "plot", "The trade-off plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for method, label in (("d2s", "D2S"), ("joint", "joint (ours)")):
        pts = sorted(curve[method], key=lambda p: p["flops"])
        ax.plot([p["flops"] for p in pts], [p["t2i_R@1"] for p in pts], marker="o", label=label)
    ax.set(
        xscale="log",
        xlabel="FLOPs (expected term overlaps per pair)",
        ylabel="text-to-image sparse R@1 (%)",
        title="Flickr8k val",
    )
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _fmt(cell: dict[str, float]) -> str:
    return f"{cell['mean']:.2f} ± {cell['std']:.2f}" if cell["std"] else f"{cell['mean']:.2f}"


def markdown_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (mean ± std over seeds where there are several)."""
    header = [
        "run",
        "score",
        "seeds",
        *(f"t2i {m}" for m in METRICS),
        *(f"i2t {m}" for m in METRICS),
        "FLOPs",
        "nnz/cap",
        "nnz/img",
        "train s",
    ]
    rows = []
    for name, row in results["rows"].items():
        for st in ("dense", "sparse", "hybrid"):
            if st not in row["t2i"]:
                continue
            cells = [name, st, str(len(row["seeds"]))]
            cells += [_fmt(row[d][st][m]) for d in ("t2i", "i2t") for m in METRICS]
            sp = row.get("sparsity") if st == "sparse" else None
            cells += (
                [f"{sp['flops']:.1f}", f"{sp['text_nnz']:.1f}", f"{sp['image_nnz']:.1f}"]
                if sp
                else ["", "", ""]
            )
            cells.append(f"{row['train_seconds']:.0f}")
            rows.append(cells)
    return format_table(rows, header=header, markdown=True)


def write_report(results: dict[str, Any], path: str | Path) -> None:
    """Put the table, significance test and curve into the Markdown report."""
    sig = results["significance"]
    hw = results["hardware"]
    lines = [
        "<!-- bench:begin -->",
        f"Hardware: {hw['cpu']}, {hw['threads']} threads, torch {hw['torch']}"
        + (f", GPU {hw['gpu']}" if "gpu" in hw else "")
        + f"; training summed over all {results.get('n_runs', '?')} runs "
        + f"{results.get('train_seconds_all_runs', float('nan')) / 60:.1f} min"
        + f", this invocation {results['total_seconds'] / 60:.1f} min (finished runs are reused)"
        + (
            f"; load average {results['load_average']['start']} at start"
            if results.get("load_average", {}).get("start")
            else ""
        )
        + ".",
        "",
        markdown_table(results),
        "",
        f"Significance ({sig['description']}): R@1 difference "
        f"{100 * sig['t2i_R@1']['mean_diff']:+.2f} points, p = {sig['t2i_R@1']['p_value']:.4f}; "
        f"MRR@10 difference {100 * sig['t2i_MRR@10']['mean_diff']:+.2f} points, "
        f"p = {sig['t2i_MRR@10']['p_value']:.4f} (n = {sig['t2i_R@1']['n']}).",
        "",
        "Trade-off (text-to-image sparse R@1 against FLOPs, regulariser scaled):",
        "",
        "| method | reg scale | q_reg | d_reg | t2i R@1 | FLOPs | nnz/cap | nnz/img |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, pts in results["tradeoff"].items():
        for p in pts:
            lines.append(
                f"| {method} | {p['reg_scale']:g} | {p['q_reg']:.2g} | {p['d_reg']:.2g} "
                f"| {p['t2i_R@1']:.2f} | {p['flops']:.2f} | {p['text_nnz']:.1f} | "
                f"{p['image_nnz']:.1f} |"
            )
    lines.append("<!-- bench:end -->")
    replace_marked_block(path, "bench", "\n".join(lines), "# Flickr8k benchmark")


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


def results_json(results: dict[str, Any]) -> str:
    """The results as JSON text."""
    return json.dumps(results, indent=2)
