"""``mmsparse bench frontier``: R@1 against FLOPs, recipe against paper, option by option."""

from __future__ import annotations

import argparse
import sys

from mmsparse.cli.flickr8k_cmds import add_flickr8k_bench_args


def register(sub: argparse._SubParsersAction) -> None:
    """No top-level commands here (see :func:`register_bench`)."""


def register_bench(bench: argparse._SubParsersAction) -> None:
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
            "--paper-config": ("configs/flickr8k-paper.json", None),
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
    register_steps(bench)


def cmd_bench_frontier(args: argparse.Namespace) -> int:
    """Run ``mmsparse bench frontier``."""
    from mmsparse.bench.frontier import FrontierBench, frontier_tables, run_frontier_bench
    from mmsparse.errors import ConfigError

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    spec = FrontierBench(
        data=args.data,
        bundle=None if args.bundle.lower() == "none" else args.bundle,
        out=args.out,
        stage0_config=args.stage0_config,
        paper_config=args.paper_config,
        config=args.config,
        seeds=tuple(args.seeds),
        text_topk=args.text_topk,
        image_topk=args.image_topk,
        reg_scales=tuple(args.reg_scales),
        ablation=not args.no_ablation,
        paper=not args.no_paper,
        curves=tuple(args.curves),
        overrides=tuple(args.overrides),
        stage0_overrides=tuple(args.stage0_overrides),
        jobs=args.jobs,
    )
    results = run_frontier_bench(
        spec, results_path=args.results, doc_path=args.doc, plot_path=args.plot
    )
    if args.json:
        from mmsparse.io_utils import json_text

        sys.stdout.write(json_text(results, what="stdout") + "\n")
    else:
        print(frontier_tables(results))
        print(f"results: {args.results}; report: {args.doc}; curve: {args.plot}")
    return 0


def register_steps(bench: argparse._SubParsersAction) -> None:
    """Add ``mmsparse bench steps``."""
    p = bench.add_parser(
        "steps",
        help="training speed of config variants on real data, timed in alternating rounds",
        description="Time the training step of each --variant of one config (same data, "
        "same process, alternating rounds so that machine load hits every variant alike); "
        "report ms per step, s per epoch and the speed-up against the first variant.",
    )
    p.add_argument("--config", default="configs/flickr8k-paper.json")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=KEY=VALUE[,KEY=VALUE]",
        help="a variant (repeatable; the first is the baseline), e.g. "
        "'restricted=model.vocab_restrict=train-captions'",
    )
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of every variant",
    )
    p.add_argument("--out", help="write the JSON report there")
    p.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    p.set_defaults(func=cmd_bench_steps)


def cmd_bench_steps(args: argparse.Namespace) -> int:
    """Run ``mmsparse bench steps``."""
    from mmsparse.bench.step_compare import compare_steps, format_steps, parse_variant
    from mmsparse.io_utils import atomic_write_json

    variants = [parse_variant(v) for v in args.variant] or [
        ("full", []),
        ("restricted", ["model.vocab_restrict=train-captions"]),
    ]
    report = compare_steps(
        args.config,
        variants,
        steps=args.steps,
        rounds=args.rounds,
        warmup=args.warmup,
        overrides=args.overrides,
    )
    if args.out:
        atomic_write_json(args.out, report)
    if args.json:
        from mmsparse.io_utils import json_text

        sys.stdout.write(json_text(report, what="stdout") + "\n")
    else:
        print(format_steps(report))
        print(f"load average {report['load_average']}, {report['threads']} threads")
    return 0
