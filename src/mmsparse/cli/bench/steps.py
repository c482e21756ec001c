"""``mmsparse bench steps``: training-step time of config variants, in alternating rounds."""

from __future__ import annotations

import argparse

from mmsparse.cli.common import add_overrides, print_json


def register(bench: argparse._SubParsersAction) -> None:
    """Add ``mmsparse bench steps``."""
    p = bench.add_parser(
        "steps",
        help="training speed of config variants on real data, timed in alternating rounds",
        description="Time the training step of each --variant of one config (same data, "
        "same process, alternating rounds so that machine load hits every variant alike); "
        "report ms per step, s per epoch and the speed-up against the first variant.",
    )
    p.add_argument(
        "--config",
        default="configs/flickr8k-paper.json",
        help="run config whose variants are timed (its data is loaded once)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=KEY=VALUE[,KEY=VALUE]",
        help="a variant (repeatable; the first is the baseline), e.g. "
        "'restricted=model.vocab_restrict=train-captions'",
    )
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds; every variant runs --steps steps in each, in turn (default 3)",
    )
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed steps per variant before the first round"
    )
    add_overrides(p, "override a key of every variant")
    p.add_argument("--out", help="write the JSON report there")
    p.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    p.set_defaults(func=cmd_bench_steps)


def cmd_bench_steps(args: argparse.Namespace) -> int:
    """Run ``mmsparse bench steps``."""
    from mmsparse.bench.machine import describe_machine
    from mmsparse.bench.steps import compare_steps, format_steps, parse_variant
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
        print_json(report)
    else:
        print(format_steps(report))
        print(f"machine: {describe_machine(report['machine'])}")
    return 0
