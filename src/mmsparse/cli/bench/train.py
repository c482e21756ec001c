"""``mmsparse bench train``: training and evaluation speed at a dataset's size."""

from __future__ import annotations

import argparse
import sys

from mmsparse.cli.common import add_deprecated_alias, print_json


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add ``mmsparse bench train`` to ``bench_sub``."""
    p = bench_sub.add_parser(
        "train",
        help="ms per training step and evaluation time at MSCOCO / Flickr30k size",
        description="Train on synthetic features of a dataset's size (BLIP dimensions) and "
        "report ms per step (median), s per epoch, the projected 200 epochs, peak memory and "
        "the time of a full test-split evaluation, with the device named. At the tiny scale "
        "a published-style loop (DataLoader workers, per-step .item()) is timed too. Under "
        "torchrun the step is data-parallel over the global batch.",
    )
    p.add_argument(
        "--scale",
        choices=("coco", "flickr30k", "tiny"),
        default="tiny",
        help="dataset size of the synthetic features: MSCOCO, Flickr30k or a tiny one for a "
        "quick check (default tiny)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--steps", type=int, default=200, help="timed steps (median over them)")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    p.add_argument(
        "--compile",
        choices=("off", "default", "reduce-overhead", "max-autotune"),
        default="off",
        help="train.compile of the step (reduce-overhead: CUDA graphs on a GPU)",
    )
    p.add_argument(
        "--amp",
        choices=("auto", "fp16", "bf16", "off"),
        default="auto",
        help="train.amp: mixed precision of the model (auto: fp16 on CUDA, fp32 on CPU)",
    )
    p.add_argument(
        "--fused-optimizer",
        choices=("auto", "on", "off"),
        default="auto",
        help="train.fused_optimizer: the fused AdamW kernel (auto: where this torch has one)",
    )
    ref = p.add_mutually_exclusive_group()
    ref.add_argument(
        "--reference",
        dest="reference",
        action="store_true",
        default=None,
        help="also time the published-style loop (default at --scale tiny)",
    )
    ref.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="do not time the published-style loop (default at --scale coco and flickr30k)",
    )
    workers = p.add_argument(
        "--reference-workers",
        type=int,
        default=2,
        metavar="N",
        help="DataLoader worker processes of the published-style loop (default 2)",
    )
    add_deprecated_alias(p, "--workers", workers)
    p.add_argument("--eval-repeats", type=int, default=3, help="timed evaluations")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic features")
    p.add_argument(
        "--out", help="add the report to this JSON file (e.g. benchmarks/train_speed.json)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_bench_train)


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this measurement."""
    parts = [
        "mmsparse bench train",
        f"--scale {args.scale}",
        f"--device {args.device}",
        f"--steps {args.steps}",
        f"--warmup {args.warmup}",
        f"--compile {args.compile}",
        f"--amp {args.amp}",
        f"--fused-optimizer {args.fused_optimizer}",
    ]
    if args.reference is not None:
        parts.append("--reference" if args.reference else "--no-reference")
    if getattr(args, "threads", None) is not None:  # the CPU threads, when given
        parts.append(f"--threads {args.threads}")
    return " ".join(parts)


def cmd_bench_train(args: argparse.Namespace) -> int:
    """Run ``mmsparse bench train``."""
    from mmsparse.bench.train import bench_train, format_report, write_report

    # The CPU threads are the command line's --threads (mmsparse.threads sets torch's pool).
    report = bench_train(
        args.scale,
        device=args.device,
        steps=args.steps,
        warmup=args.warmup,
        compile=args.compile,
        amp=args.amp,
        fused_optimizer=args.fused_optimizer,
        reference=args.reference,
        reference_workers=args.reference_workers,
        eval_repeats=args.eval_repeats,
        seed=args.seed,
    )
    if not report:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    report["command"] = _command(args)
    if report.get("world_size", 1) > 1:
        report["command"] = (
            f"torchrun --nproc_per_node {report['world_size']} -m {report['command']}"
        )
    if args.out:
        write_report(report, args.out)
        print(f"report added to {args.out}", file=sys.stderr)
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
    return 0
