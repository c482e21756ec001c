"""The tables and the plot of a ``mmsparse bench retrieval`` report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmsparse.bench.machine import describe_machine
from mmsparse.bench.retrieval.options import RECALL_TARGETS


def _fmt_setting(setting: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items())


def _recall_key(sweep: dict[str, Any]) -> str:
    return (
        "recall@10_vs_exact_dense"
        if "dense" in sweep["recall_against"]
        else "recall@10_vs_exact_sparse"
    )


def format_bench_table(report: dict[str, Any]) -> str:
    """The benchmark as markdown: engines (approximate ones at equal recall), then sweeps."""
    head = (
        "| engine | images | build s | bytes/image | p50 ms (1 thread) | p99 ms | "
        "batch QPS | recall@10 vs exact sparse | recall@10 vs exact dense | postings/query |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]

    def row(name: str, r: dict[str, Any], base: dict[str, Any]) -> str:
        dense = r.get("recall@10_vs_exact_dense")
        sparse_r = r.get("recall@10_vs_exact_sparse")
        post = r.get("postings_per_query")
        return (
            f"| {name} | {base['n_images']:,} | {base['build_seconds']:.3g} | "
            f"{base['bytes_per_image']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
            f"{r['batch_qps']:.0f} | {'' if sparse_r is None else f'{sparse_r:.3f}'} | "
            f"{'' if dense is None else f'{dense:.3f}'} | "
            f"{'' if post is None else f'{post:,}'} |"
        )

    for name, r in report["engines"].items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | | | | | |")
            continue
        lines.append(row(name, r, r))
    for name, sw in report.get("sweeps", {}).items():
        key = _recall_key(sw)
        for target, point in sw["at_recall"].items():
            if point is None:
                best = max(sw["points"], key=lambda p, key=key: p[key])
                lines.append(
                    f"| {name} recall >= {target}: not reached (best {best[key]:.3f} at "
                    f"{_fmt_setting(best['setting'])}, p50 {best['p50_ms']:.3f} ms) "
                    "| | | | | | | | | |"
                )
            else:
                lines.append(row(f"{name} @{target} ({_fmt_setting(point['setting'])})", point, sw))
    c = report["corpus"]
    lines.append("")
    lines.append(
        f"{report['n_images']:,} images ({report['n_real_images']:,} real), "
        f"{report['n_queries']:,} real caption queries ({report.get('sweep_queries', '')} for "
        f"the sweeps); {c['mean_terms_per_image']} terms per image, "
        f"{c['mean_terms_per_query']} per query; machine: {describe_machine(report['machine'])}."
    )
    sweeps = report.get("sweeps", {})
    if sweeps:
        lines += [
            "",
            "| sweep | setting | recall@10 (own exact) | p50 ms | p99 ms | batch QPS |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for name, sw in sweeps.items():
            key = _recall_key(sw)
            for p in sw["points"]:
                lines.append(
                    f"| {name} ({sw['n_images']:,} images) | {_fmt_setting(p['setting'])} | "
                    f"{p[key]:.3f} | {p['p50_ms']:.3f} | {p['p99_ms']:.3f} | "
                    f"{p['batch_qps']:.0f} |"
                )
    return "\n".join(lines)


def plot_latency_recall(report: dict[str, Any], path: str | Path) -> None:
    """Single-thread p50 latency against recall@10 (each engine against its own exact ranking).

    Raises:
        MissingExtraError: If matplotlib is not installed.
    """
    from mmsparse.bench.common import pyplot, save_png

    fig, ax = pyplot("The latency/recall plot (matplotlib)").subplots(figsize=(7, 4.5))
    for name, sw in report.get("sweeps", {}).items():
        key = _recall_key(sw)
        xs = [p[key] for p in sw["points"]]
        ys = [p["p50_ms"] for p in sw["points"]]
        label = f"{name} ({sw['n_images']:,} images)"
        ax.plot(xs, ys, marker="o", label=label)
    markers = iter("s^vDP*X")
    for name, r in report["engines"].items():
        if "skipped" in r:
            continue
        x = r.get("recall@10_vs_exact_dense") if name.startswith("faiss") else None
        x = r.get("recall@10_vs_exact_sparse") if x is None else x
        how = "exact" if x == 1.0 else "exact at its quantisation"
        ax.scatter(
            [x],
            [r["p50_ms"]],
            marker=next(markers, "o"),
            s=60,
            zorder=3,
            label=f"{name} ({r['n_images']:,} images, {how})",
        )
    for target in RECALL_TARGETS:
        ax.axvline(target, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 against the engine's own exact ranking (sparse or dense)")
    ax.set_ylabel("p50 latency, one thread (ms)")
    m = report["machine"]
    load = m["load_average"]
    ax.set_title(
        f"{report['n_images']:,} images, load {(load['start'] or ['?'])[0]}-"
        f"{(load['end'] or ['?'])[0]} on {m['cpus']} CPUs",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    save_png(fig, path, dpi=120)
