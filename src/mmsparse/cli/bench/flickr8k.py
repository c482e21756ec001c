"""``mmsparse bench flickr8k``: the whole Flickr8k table in one command."""

from __future__ import annotations

import argparse
import os
from typing import Any

from mmsparse.cli.common import add_overrides, print_json
from mmsparse.paths import ENV_FLICKR8K


def register(bench: argparse._SubParsersAction) -> None:
    """Add ``mmsparse bench flickr8k``."""
    p = bench.add_parser(
        "flickr8k",
        help="dense backbone, D2S, joint (all teacher modes), ablations, "
        "expansion control and the trade-off curve on Flickr8k",
        description="Reproduce the Flickr8k table (val split). Finished runs in --out are "
        "reused, so an interrupted benchmark continues where it stopped.",
    )
    add_flickr8k_bench_args(
        p,
        out="runs/bench-flickr8k",
        configs={"--config": ("configs/flickr8k-paper.json", "config of the joint method")},
        set_help="override a key of every sparse run (repeatable)",
        results="benchmarks/flickr8k.json",
        doc="docs/flickr8k.md",
        plot=("docs/flickr8k_tradeoff.png", "trade-off PNG"),
    )
    p.add_argument(
        "--no-variants",
        action="store_true",
        help="only the main rows and the curve (no teacher modes/ablations)",
    )
    p.set_defaults(func=cmd_bench_flickr8k)


def add_flickr8k_bench_args(
    p: argparse.ArgumentParser,
    *,
    out: str,
    configs: dict[str, tuple[str, str]],
    set_help: str,
    results: str,
    doc: str,
    plot: tuple[str, str],
) -> None:
    """The arguments every Flickr8k benchmark takes (``bench flickr8k``, ``bench frontier``).

    Args:
        p: The subcommand's parser.
        out: Default directory of the runs.
        configs: Config options after ``--stage0-config``: flag to (default, help).
        set_help: Help of ``--set``.
        results: Default JSON results file.
        doc: Default Markdown report.
        plot: Default PNG and its help.
    """
    p.add_argument(
        "--data",
        default=os.environ.get(ENV_FLICKR8K) or "../shared/flickr8k",
        help=f"Flickr8k feature directory (default: ${ENV_FLICKR8K}, else ../shared/flickr8k)",
    )
    p.add_argument(
        "--bundle",
        default=".cache/effnet-minilm-bundle",
        help="backbone bundle ('none' for the random fallback vocabulary)",
    )
    p.add_argument("--out", default=out, help="directory of the runs")
    p.add_argument(
        "--stage0-config",
        default="configs/flickr8k-stage0.json",
        help="config of the stage-0 dense fit, the dense backbone every run starts from",
    )
    for flag, (default, help_text) in configs.items():
        p.add_argument(flag, default=default, help=help_text)
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[42, 43, 44],
        help="seeds of the main rows; the first one also runs the single-seed rows "
        "(default 42 43 44)",
    )
    p.add_argument(
        "--reg-scales",
        type=float,
        nargs="+",
        default=[1 / 3, 1.0, 3.0],
        help="multipliers of q_reg/d_reg: the points of the trade-off curve (default 1/3 1 3)",
    )
    p.add_argument(
        "--text-topk",
        type=int,
        default=64,
        help="terms kept per caption at evaluation, as an index serves them (default 64)",
    )
    p.add_argument(
        "--image-topk",
        type=int,
        default=256,
        help="terms kept per image at evaluation (default 256)",
    )
    add_overrides(p, set_help)
    add_overrides(p, "override a key of the stage-0 runs", "--set-stage0", "stage0_overrides")
    p.add_argument("--results", default=results, help="JSON results file")
    p.add_argument("--doc", default=doc, help="Markdown report to update")
    p.add_argument("--plot", default=plot[0], help=plot[1])
    p.add_argument("--json", action="store_true", help="print the results JSON on stdout")


def flickr8k_bench_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The fields of a Flickr8k benchmark's spec that :func:`add_flickr8k_bench_args` sets."""
    return {
        "data": args.data,
        "bundle": None if args.bundle.lower() == "none" else args.bundle,
        "out": args.out,
        "stage0_config": args.stage0_config,
        "config": args.config,
        "seeds": tuple(args.seeds),
        "text_topk": args.text_topk,
        "image_topk": args.image_topk,
        "reg_scales": tuple(args.reg_scales),
        "overrides": tuple(args.overrides),
        "stage0_overrides": tuple(args.stage0_overrides),
    }


def cmd_bench_flickr8k(args: argparse.Namespace) -> int:
    """Run ``mmsparse bench flickr8k``."""
    from mmsparse.bench.flickr8k import (
        Flickr8kBench,
        markdown_table,
        run_flickr8k_bench,
    )

    spec = Flickr8kBench(**flickr8k_bench_fields(args), variants=not args.no_variants)
    results = run_flickr8k_bench(
        spec, results_path=args.results, doc_path=args.doc, plot_path=args.plot
    )
    if args.json:
        print_json(results)
    else:
        print(markdown_table(results))
        print(f"results: {args.results}; report: {args.doc}; curve: {args.plot}")
    return 0
