"""``mmsparse bench frontier``: R@1 against FLOPs, recipe against paper, option by option."""

from __future__ import annotations

import argparse

from mmsparse.cli.bench.flickr8k import add_flickr8k_bench_args, flickr8k_bench_fields
from mmsparse.cli.common import print_json


def register(bench: argparse._SubParsersAction) -> None:
    """Add ``mmsparse bench frontier``."""
    p = bench.add_parser(
        "frontier",
        help="the accuracy-cost frontier on Flickr8k: the recipe against the paper's "
        "method, each option alone and removed, R@1 against FLOPs, 3 seeds, paired tests",
        description="Train and evaluate (val) the dense backbone, D2S and the joint method "
        "with the recipe (--config) and the paper's configuration (--paper-config), an "
        "ablation of every option that differs between the two, and trade-off curves over "
        "regulariser strengths. Finished runs in --out are reused. See docs/frontier.md.",
    )
    add_flickr8k_bench_args(
        p,
        out="runs/bench-frontier",
        configs={
            "--paper-config": (
                "configs/flickr8k-paper.json",
                "the paper's method on this data (every frontier option off)",
            ),
            "--config": ("configs/flickr8k.json", "the recipe"),
        },
        set_help="override a key of every sparse run, both configurations (repeatable)",
        results="benchmarks/frontier.json",
        doc="docs/frontier.md",
        plot=("docs/img/frontier.png", "R@1 against FLOPs (PNG)"),
    )
    p.add_argument("--no-ablation", action="store_true", help="skip the per-option rows")
    p.add_argument(
        "--no-paper",
        action="store_true",
        help="skip the paper configuration's rows (unless the ablation or a paper curve needs "
        "them)",
    )
    p.add_argument(
        "--curves",
        nargs="*",
        choices=["recipe", "paper"],
        default=["recipe", "paper"],
        help="configurations that get a trade-off curve (none: no curve)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train N runs at once, each in its own process with 1/N of the threads "
        "(e.g. --jobs 2 --threads 2 on 2 cores; results are the same as one at a time)",
    )
    p.set_defaults(func=cmd_bench_frontier)


def cmd_bench_frontier(args: argparse.Namespace) -> int:
    """Run ``mmsparse bench frontier``."""
    from mmsparse.bench.frontier import FrontierBench, frontier_tables, run_frontier_bench
    from mmsparse.errors import ConfigError

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    spec = FrontierBench(
        **flickr8k_bench_fields(args),
        paper_config=args.paper_config,
        ablation=not args.no_ablation,
        paper=not args.no_paper,
        curves=tuple(args.curves),
        jobs=args.jobs,
    )
    results = run_frontier_bench(
        spec, results_path=args.results, doc_path=args.doc, plot_path=args.plot
    )
    if args.json:
        print_json(results)
    else:
        print(frontier_tables(results))
        print(f"results: {args.results}; report: {args.doc}; curve: {args.plot}")
    return 0
