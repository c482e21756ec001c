"""The accuracy-cost frontier on Flickr8k: R@1 against FLOPs, with and without each option.

``mmsparse bench frontier`` compares two configurations of the same data:

- the *paper* configuration (``configs/flickr8k-paper.json``: the method as published,
  tuned for Flickr8k only in its regulariser weights and schedule), and
- the *recipe* (``configs/flickr8k.json``: the best combination of the frontier options
  found on val).

Their differences are grouped into named options (:data:`OPTION_KEYS`: restricted
vocabulary, training cap, regulariser, teacher weights, sparse scale, stop-gradient,
lexical grounding, schedule, ...). From one stage-0 dense fit per seed it trains:

1. per seed: the dense backbone (stage 0), D2S and the joint method with the recipe;
2. at the first seed: D2S and joint with the paper configuration; for every option of
   the recipe, the recipe without it ("minus") and the paper configuration with only it
   ("alone"): the ablation table;
3. at the first seed: the trade-off curves, recipe and paper, D2S and joint, with
   ``q_reg``/``d_reg`` scaled by ``reg_scales``;
4. paired sign-flip permutation tests over (seed, query) of the claims (joint sparse vs D2S
   sparse, joint dense vs the backbone, hybrid vs both, recipe vs paper).

Sparse vectors are evaluated as served: at most ``text_topk`` terms per caption and
``image_topk`` per image. Every row also reports the readability measure
(:mod:`mmsparse.evaluate.readability`) and its training time. Finished runs are reused, so
an interrupted benchmark continues where it stopped. Val only: the test split is held out.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.bench.common import (
    METRICS,
    SCORE_TYPES,
    RunRecord,
    SeededBench,
    data_overrides,
    hit_at_1,
    mean_std,
    paired_permutation_test,
    pyplot,
    reciprocal_rank_at_10,
    replace_marked_block,
    results_footer,
    save_png,
    score_rows,
    seed_rows,
    sparsity_cells,
    train_and_evaluate,
    train_or_reuse,
)
from mmsparse.bench.machine import describe_machine, load_average
from mmsparse.config import RunConfig, apply_overrides, load_config
from mmsparse.errors import ConfigError, MMSparseError
from mmsparse.evaluate.report import format_table
from mmsparse.io_utils import atomic_write_json
from mmsparse.train import resume_conflicts

logger = logging.getLogger("mmsparse.bench")

#: The frontier options and the config keys each one sets. An option is part of the recipe
#: when any of its keys differs between the paper configuration and the recipe.
OPTION_KEYS: dict[str, tuple[str, ...]] = {
    "vocab": ("model.vocab_restrict",),
    "init": ("model.sparse_init",),
    "input": ("model.sparse_input",),
    "cap": ("objective.train_text_topk", "objective.train_image_topk"),
    "reg": ("objective.reg", "objective.q_reg", "objective.d_reg", "objective.reg_warmup_frac"),
    "teacher": (
        "objective.w1",
        "objective.w2",
        "objective.lam1",
        "objective.lam2",
        "objective.distill_teacher",
        "objective.contrastive_weight",
    ),
    "scale": ("objective.sparse_scale", "objective.sparse_scale_init"),
    "stop-grad": ("objective.sparse_stop_grad",),
    "lexical": ("objective.lexical_weight",),
    "dense-rate": ("train.dense_lr_scale", "train.tau_lr_scale"),
    "expansion": (
        "objective.expansion_control",
        "objective.expansion_p0",
        "objective.expansion_decay_frac",
    ),
    "schedule": (
        "train.epochs",
        "train.lr",
        "train.warmup_frac",
        "train.sparse_lr_scale",
        "train.batch_size",
    ),
}

#: What each option means, for the report.
OPTION_DESCRIPTIONS: dict[str, str] = {
    "vocab": "output vocabulary restricted to the training captions' terms",
    "init": "sparse head initialisation",
    "input": "what the sparse head reads (dense vector or backbone features)",
    "cap": "train as you serve: top-k cap in the forward pass",
    "reg": "sparsity regulariser (kind and weights)",
    "teacher": "weights of the integrated score and of the losses",
    "scale": "learned scale of the sparse scores in the loss",
    "stop-grad": "sparse losses do not move the dense heads",
    "lexical": "lexical grounding of the sparse head",
    "dense-rate": "learning rates of the dense heads and tau (0: kept at the stage-0 fit)",
    "expansion": "expansion control of caption vectors",
    "schedule": "epochs, learning rates, batch size",
}


#: The score types of a joint run.
ALL_SCORES = SCORE_TYPES


@dataclass(frozen=True)
class FrontierBench(SeededBench):
    """What the frontier benchmark runs.

    The fields of :class:`~mmsparse.bench.common.SeededBench` (``config`` is the recipe;
    ``overrides`` apply to both configurations), and:

    Attributes:
        paper_config: The paper's method on this data (every frontier option off).
        ablation: Train the "minus" and "alone" rows of every option.
        paper: Train D2S and joint with the paper configuration (first seed).
        curves: Which configurations get a trade-off curve (``recipe``, ``paper``).
        jobs: Runs trained at once, each in its own process with an equal share of the
            threads (1: one after the other, in this process).
    """

    paper_config: str = "configs/flickr8k-paper.json"
    ablation: bool = True
    paper: bool = True
    curves: tuple[str, ...] = ("recipe", "paper")
    jobs: int = 1


def _get(cfg_dict: dict[str, Any], key: str) -> Any:
    group, name = key.split(".")
    return cfg_dict[group][name]


def recipe_options(paper: RunConfig, recipe: RunConfig) -> dict[str, dict[str, Any]]:
    """The options the recipe switches on: name to ``{key: (paper value, recipe value)}``.

    Raises:
        ConfigError: If the two configurations differ in a key no option covers (the
            comparison would then not be an ablation of named options).
    """
    p, r = paper.to_dict(), recipe.to_dict()
    covered = {k for keys in OPTION_KEYS.values() for k in keys}
    for group in ("model", "objective", "train"):
        for name in r[group]:
            key = f"{group}.{name}"
            if key in covered or key in ("model.init_from", "train.seed"):
                continue
            if p[group][name] != r[group][name]:
                raise ConfigError(
                    f"{key} differs between the paper configuration and the recipe "
                    f"({p[group][name]!r} vs {r[group][name]!r}) but belongs to no option of "
                    "mmsparse.bench.frontier.OPTION_KEYS"
                )
    out: dict[str, dict[str, Any]] = {}
    for option, keys in OPTION_KEYS.items():
        diff = {k: (_get(p, k), _get(r, k)) for k in keys if _get(p, k) != _get(r, k)}
        if diff:
            out[option] = diff
    return out


def _set(values: dict[str, tuple[Any, Any]], which: int) -> list[str]:
    """``key=value`` overrides taking the paper (0) or recipe (1) values."""
    import json

    return [f"{k}={json.dumps(v[which], allow_nan=False)}" for k, v in values.items()]


def run_frontier_bench(
    spec: FrontierBench,
    *,
    results_path: str | Path | None = None,
    doc_path: str | Path | None = None,
    plot_path: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or continue) the frontier benchmark and write its results.

    Args:
        spec: What to run.
        results_path: JSON results (e.g. ``benchmarks/frontier.json``).
        doc_path: Markdown report; the part between ``<!-- frontier:begin -->`` and
            ``<!-- frontier:end -->`` is replaced.
        plot_path: PNG of R@1 against FLOPs.

    Returns:
        The results dict: rows, ablation, curves, significance, machine, timings.
    """
    t0 = time.perf_counter()
    load_start = load_average()
    out = Path(spec.out)
    data = data_overrides(spec.data, spec.bundle)
    stage0_base = load_config(spec.stage0_config, [*data, *spec.stage0_overrides])
    paper = load_config(spec.paper_config, [*data, *spec.overrides])
    recipe = load_config(spec.config, [*data, *spec.overrides])
    options = recipe_options(paper, recipe)
    serve = dataclasses.replace(recipe.eval, text_topk=spec.text_topk, image_topk=spec.image_topk)
    records: dict[str, list[RunRecord]] = {}
    readability: dict[str, list[dict[str, float]]] = {}
    plan, curve_points = _plan(spec, stage0_base, paper, recipe, options)
    _check_reusable(plan, out)
    if spec.jobs > 1:
        _train_parallel(plan, out, spec.jobs)

    def run(p: _Planned) -> RunRecord:
        run_dir = out / f"{p.name}-s{p.seed}"
        rec, readable = train_and_evaluate(p.name, p.group, p.cfg, p.seed, run_dir, serve, p.types)
        records.setdefault(p.name, []).append(rec)
        if readable is not None:
            readability.setdefault(p.name, []).append(readable)
        return rec

    by_key = {(p.name, p.seed): run(p) for p in plan}
    main = spec.seeds[0]
    ablation: list[dict[str, Any]] = []
    if spec.ablation:
        for option, values in options.items():
            ablation.append(
                {
                    "option": option,
                    "description": OPTION_DESCRIPTIONS[option],
                    "values": {k: {"paper": v[0], "recipe": v[1]} for k, v in values.items()},
                    "minus": _summary(by_key[(f"joint-minus-{option}", main)]),
                    "alone": _summary(by_key[(f"paper-plus-{option}", main)]),
                }
            )
    curves: dict[str, list[dict[str, float]]] = {}
    for curve, scale, q_reg, d_reg, name in curve_points:
        curves.setdefault(curve, []).append(
            {"reg_scale": scale, "q_reg": q_reg, "d_reg": d_reg, **_summary(by_key[(name, main)])}
        )

    significance = _significance(records, main)
    results = {
        "benchmark": "frontier",
        "split": "val",
        "protocol": {
            "text_topk": spec.text_topk,
            "image_topk": spec.image_topk,
            "seeds": list(spec.seeds),
            "reg_scales": list(spec.reg_scales),
        },
        "configs": {
            "stage0": stage0_base.to_dict(),
            "paper": paper.to_dict(),
            "recipe": recipe.to_dict(),
        },
        "options": {
            k: {kk: {"paper": v[0], "recipe": v[1]} for kk, v in vals.items()}
            for k, vals in options.items()
        },
        "rows": seed_rows(records, readability),
        "ablation": ablation,
        "curves": curves,
        "significance": significance,
        **results_footer(records, load_start, t0),
    }
    if results_path:
        atomic_write_json(results_path, results)
    if plot_path:
        plot_frontier(results, plot_path)
    if doc_path:
        write_frontier_report(results, doc_path)
    return results


@dataclass(frozen=True)
class _Planned:
    """One run of the benchmark: its row name, group, config, seed and score types."""

    name: str
    group: str
    cfg: RunConfig
    seed: int
    types: tuple[str, ...]


def _plan(
    spec: FrontierBench,
    stage0_base: RunConfig,
    paper: RunConfig,
    recipe: RunConfig,
    options: dict[str, dict[str, tuple[Any, Any]]],
) -> tuple[list[_Planned], list[tuple[str, float, float, float, str]]]:
    """Every run of the benchmark, stage-0 runs first, and the trade-off curves' points.

    Returns:
        The runs in evaluation order (each ``(name, seed)`` once), and one
        ``(curve, reg_scale, q_reg, d_reg, run name)`` per curve point (first seed).
    """
    out = Path(spec.out)
    plan: list[_Planned] = []
    seen: set[tuple[str, int]] = set()

    def add(name: str, group: str, cfg: RunConfig, seed: int, types: Sequence[str]) -> None:
        if (name, seed) not in seen:
            seen.add((name, seed))
            plan.append(_Planned(name, group, cfg, seed, tuple(types)))

    def derived(base: RunConfig, seed: int, *extra: str) -> RunConfig:
        stage0 = out / f"dense-backbone-s{seed}"
        return apply_overrides(base, [f"train.seed={seed}", f"model.init_from={stage0}", *extra])

    main = spec.seeds[0]
    for seed in spec.seeds:
        stage0 = apply_overrides(stage0_base, [f"train.seed={seed}"])
        add("dense-backbone", "main", stage0, seed, ("dense",))
    for seed in spec.seeds:
        add("d2s", "main", derived(recipe, seed, "objective.method=d2s"), seed, ("sparse",))
        add("joint", "main", derived(recipe, seed), seed, ALL_SCORES)
    if spec.paper or spec.ablation or "paper" in spec.curves:
        add("paper-d2s", "paper", derived(paper, main, "objective.method=d2s"), main, ("sparse",))
        add("paper-joint", "paper", derived(paper, main), main, ALL_SCORES)
    if spec.ablation:
        for option, values in options.items():
            minus = derived(recipe, main, *_set(values, 0))
            add(f"joint-minus-{option}", "ablation", minus, main, ALL_SCORES)
            alone = derived(paper, main, *_set(values, 1))
            add(f"paper-plus-{option}", "ablation", alone, main, ALL_SCORES)
    points: list[tuple[str, float, float, float, str]] = []
    bases = {"recipe": recipe, "paper": paper}
    for which in spec.curves:
        o = bases[which].objective
        for method in ("d2s", "joint"):
            for scale in spec.reg_scales:
                name = ("" if which == "recipe" else "paper-") + method
                if scale != 1.0:
                    name = f"{name}-reg{scale:.3g}"
                q_reg, d_reg = o.q_reg * scale, o.d_reg * scale
                cfg = derived(
                    bases[which],
                    main,
                    f"objective.method={method}",
                    f"objective.q_reg={q_reg}",
                    f"objective.d_reg={d_reg}",
                )
                add(name, "curve", cfg, main, ("sparse",))
                points.append((f"{which}-{method}", scale, q_reg, d_reg, name))
    return plan, points


def _check_reusable(plan: Sequence[_Planned], out: Path) -> None:
    """Refuse, before anything trains, run directories in ``out`` that hold another config.

    Raises:
        ConfigError: Naming each such run and the keys that differ (nothing is trained).
    """
    stale = []
    for p in plan:
        diff = resume_conflicts(p.cfg, out / f"{p.name}-s{p.seed}")
        if diff:
            stale.append(f"{p.name}-s{p.seed} (keys {', '.join(diff)})")
    if stale:
        raise ConfigError(
            f"{out}: {len(stale)} run(s) hold another config than this benchmark's: "
            f"{'; '.join(stale)}; move them away or choose another --out (nothing was trained)"
        )


def _train_worker(cfg: RunConfig, run_dir: str, threads: int) -> float:
    """Train one run in a worker process (``threads`` torch threads, no progress bars)."""
    import torch

    torch.set_num_threads(threads)
    # train.progress may differ from a finished run's config (see RESUME_FREE_KEYS).
    quiet = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False))
    return train_or_reuse(quiet, Path(run_dir))


def _train_parallel(plan: Sequence[_Planned], out: Path, jobs: int) -> None:
    """Train the planned runs ``jobs`` at a time (stage-0 fits first: the rest start from them).

    Each worker gets an equal share of this process's torch threads (at least one). Runs
    already finished are skipped. A failed run is reported once the other runs of its wave
    have finished, so that no finished work is lost; when a stage-0 fit fails, nothing
    that starts from one is started.

    Raises:
        MMSparseError: Naming every run that failed and why (one line).
    """
    import multiprocessing

    import torch
    from tqdm.auto import tqdm

    todo = [p for p in plan if not (out / f"{p.name}-s{p.seed}" / "final.json").is_file()]
    if not todo:
        return
    threads = max(1, torch.get_num_threads() // jobs)
    stage0 = [p for p in todo if p.name == "dense-backbone"]
    rest = [p for p in todo if p.name != "dense-backbone"]
    failed: list[str] = []
    bar = tqdm(total=len(todo), unit="run", desc=f"training, {jobs} at a time", dynamic_ncols=True)
    ctx = multiprocessing.get_context("spawn")  # fresh torch thread pools in each worker
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        for wave in (stage0, rest):
            futures = {
                pool.submit(_train_worker, p.cfg, str(out / f"{p.name}-s{p.seed}"), threads): p
                for p in wave
            }
            for fut in as_completed(futures):
                p = futures[fut]
                try:
                    seconds = fut.result()
                    logger.info("trained %s seed %d in %.0f s", p.name, p.seed, seconds)
                except Exception as exc:  # reported with the run's name below
                    failed.append(f"{p.name}-s{p.seed}: {type(exc).__name__}: {exc}")
                bar.update(1)
            if failed:
                break
    bar.close()
    if failed:
        raise MMSparseError(f"{len(failed)} run(s) of {out} failed: " + "; ".join(sorted(failed)))


def _summary(rec: RunRecord) -> dict[str, float]:
    """The numbers of one run the tables show."""
    t2i = rec.result["t2i"]
    out = {f"t2i_{st}_R@1": t2i[st]["R@1"] for st in t2i}
    sp = rec.result.get("sparsity") or {}
    out.update({k: sp[k] for k in ("flops", "text_nnz", "image_nnz") if k in sp})
    readable = rec.result.get("readability")
    if readable:
        out["image_words"] = readable["image_terms_in_captions"]
        out["caption_words"] = readable["caption_terms_in_other_captions"]
    out["train_seconds"] = rec.train_seconds
    return out


def _hits(
    recs: Sequence[RunRecord], score: str, fn: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    return np.concatenate([fn(r.ranks["t2i"][score]) for r in sorted(recs, key=lambda r: r.seed)])


def _significance(records: dict[str, list[RunRecord]], main: int) -> dict[str, Any]:
    """Paired tests of the claims, text-to-image, by (seed, query)."""
    r1, rr10 = hit_at_1, reciprocal_rank_at_10
    tests: dict[str, Any] = {}
    pairs = [
        ("joint sparse - D2S sparse", ("joint", "sparse"), ("d2s", "sparse")),
        ("joint sparse - dense backbone", ("joint", "sparse"), ("dense-backbone", "dense")),
        ("joint dense - dense backbone", ("joint", "dense"), ("dense-backbone", "dense")),
        ("joint hybrid - joint dense", ("joint", "hybrid"), ("joint", "dense")),
        ("joint hybrid - joint sparse", ("joint", "hybrid"), ("joint", "sparse")),
    ]
    for label, (a, sa), (b, sb) in pairs:
        seeds = sorted({r.seed for r in records[a]} & {r.seed for r in records[b]})
        ra = [r for r in records[a] if r.seed in seeds]
        rb = [r for r in records[b] if r.seed in seeds]
        tests[label] = {
            "R@1": paired_permutation_test(_hits(ra, sa, r1), _hits(rb, sb, r1)),
            "MRR@10": paired_permutation_test(_hits(ra, sa, rr10), _hits(rb, sb, rr10)),
            "seeds": seeds,
        }
    if "paper-joint" in records:
        ra = [r for r in records["joint"] if r.seed == main]
        rb = records["paper-joint"]
        tests["recipe joint sparse - paper joint sparse"] = {
            "R@1": paired_permutation_test(_hits(ra, "sparse", r1), _hits(rb, "sparse", r1)),
            "MRR@10": paired_permutation_test(_hits(ra, "sparse", rr10), _hits(rb, "sparse", rr10)),
            "seeds": [main],
        }
    tests["description"] = (
        "differences of per-query text-to-image scores over the val captions of every "
        "listed seed; two-sided sign-flip permutation test, 10,000 resamples"
    )
    return tests


def plot_frontier(results: dict[str, Any], path: str | Path) -> None:
    """R@1 against FLOPs: the curves of both configurations and the dense backbone."""
    fig, ax = pyplot("The frontier plot").subplots(figsize=(6, 4.5))
    styles = {
        "recipe-joint": ("C0", "-", "joint, recipe"),
        "recipe-d2s": ("C1", "-", "D2S, recipe"),
        "paper-joint": ("C0", ":", "joint, paper"),
        "paper-d2s": ("C1", ":", "D2S, paper"),
    }
    for name, pts in results["curves"].items():
        color, ls, label = styles.get(name, (None, "-", name))
        pts = sorted(pts, key=lambda p: p["flops"])
        ax.plot(
            [p["flops"] for p in pts],
            [p["t2i_sparse_R@1"] for p in pts],
            marker="o",
            color=color,
            linestyle=ls,
            label=label,
        )
    dense = results["rows"]["dense-backbone"]["t2i"]["dense"]["R@1"]["mean"]
    ax.axhline(dense, color="grey", linestyle="--", label=f"dense backbone ({dense:.1f})")
    ax.set(
        xscale="log",
        xlabel="FLOPs (expected shared terms per query-image pair)",
        ylabel="text-to-image sparse R@1 (%)",
        title="Flickr8k val, served at 64 / 256 terms",
    )
    ax.legend(fontsize=8)
    save_png(fig, path)


def frontier_tables(results: dict[str, Any]) -> str:
    """The main rows, the ablation and the curves as Markdown tables."""
    header = [
        "run",
        "score",
        "seeds",
        *(f"t2i {m}" for m in METRICS),
        "i2t R@1",
        "FLOPs",
        "nnz/cap",
        "nnz/img",
        "img words %",
        "cap words %",
        "train s",
    ]

    def cells(row: Mapping[str, Any], st: str) -> list[str]:
        rd = row.get("readability") if st == "sparse" else None
        words = ["", ""]
        if rd:
            words = [
                f"{rd['image_terms_in_captions']:.1f}",
                f"{rd['caption_terms_in_other_captions']:.1f}",
            ]
        return [
            *(mean_std(row["t2i"][st][m]) for m in METRICS),
            mean_std(row["i2t"][st]["R@1"]),
            *sparsity_cells(row, st),
            *words,
            f"{row['train_seconds']:.0f}",
        ]

    rows = score_rows(results["rows"], cells, groups=("main", "paper"))
    parts = [format_table(rows, header=header, markdown=True)]
    if results["ablation"]:
        ab_header = [
            "option",
            "what",
            "recipe minus it: sparse / dense / hybrid R@1",
            "FLOPs",
            "img words %",
            "paper plus it: sparse / dense / hybrid R@1",
            "FLOPs",
            "img words %",
        ]
        ab_rows = []
        for a in results["ablation"]:
            cells = [a["option"], a["description"]]
            for side in ("minus", "alone"):
                s = a[side]
                r1 = [s[f"t2i_{st}_R@1"] for st in ("sparse", "dense", "hybrid")]
                cells.append(" / ".join(f"{x:.2f}" for x in r1))
                cells.append(f"{s.get('flops', float('nan')):.1f}")
                cells.append(f"{s.get('image_words', float('nan')):.1f}")
            ab_rows.append(cells)
        parts.append(format_table(ab_rows, header=ab_header, markdown=True))
    cv_rows = [
        [
            name,
            f"{p['reg_scale']:.3g}",
            f"{p['q_reg']:.3g}",
            f"{p['d_reg']:.3g}",
            f"{p['t2i_sparse_R@1']:.2f}",
            f"{p['flops']:.2f}",
            f"{p['text_nnz']:.1f}",
            f"{p['image_nnz']:.1f}",
        ]
        for name, pts in results["curves"].items()
        for p in pts
    ]
    if cv_rows:
        parts.append(
            format_table(
                cv_rows,
                header=[
                    "curve",
                    "reg scale",
                    "q_reg",
                    "d_reg",
                    "t2i sparse R@1",
                    "FLOPs",
                    "nnz/cap",
                    "nnz/img",
                ],
                markdown=True,
            )
        )
    return "\n\n".join(parts)


def write_frontier_report(results: dict[str, Any], path: str | Path) -> None:
    """Put the tables and significance tests into the Markdown report."""
    sig = results["significance"]
    lines = [
        "<!-- frontier:begin -->",
        f"Hardware: {describe_machine(results['machine'])}; {results['n_runs']} runs, "
        f"training summed {results['train_seconds_all_runs'] / 60:.1f} min.",
        "",
        frontier_tables(results),
        "",
        f"Significance ({sig['description']}):",
        "",
        "| comparison | seeds | R@1 difference | p | MRR@10 difference | p |",
        "|---|---|---|---|---|---|",
    ]
    for label, t in sig.items():
        if label == "description":
            continue
        lines.append(
            f"| {label} | {', '.join(map(str, t['seeds']))} | {100 * t['R@1']['mean_diff']:+.2f} "
            f"| {t['R@1']['p_value']:.4f} | {100 * t['MRR@10']['mean_diff']:+.2f} "
            f"| {t['MRR@10']['p_value']:.4f} |"
        )
    lines.append("<!-- frontier:end -->")
    replace_marked_block(
        path, "frontier", "\n".join(lines), "# The accuracy-cost frontier on Flickr8k"
    )
