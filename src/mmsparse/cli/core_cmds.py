"""``mmsparse train``, ``mmsparse evaluate`` and ``mmsparse demo``."""

from __future__ import annotations

import argparse
import dataclasses

from mmsparse.cli.common import add_overrides, print_json
from mmsparse.errors import ConfigError, DataError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the core subcommands to ``sub``."""
    p = sub.add_parser(
        "train",
        help="train a run from a config file",
        description="Train a run; --resume continues an interrupted one.",
    )
    p.add_argument("--config", help="JSON/YAML config (optional with --resume)")
    add_overrides(p, "override a config key, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="evaluate a trained run",
        description="Evaluate a run's selected checkpoint (R@1/5/10, MRR@10 "
        "for dense, sparse and hybrid; FLOPs and non-zeros).",
    )
    p.add_argument("run_dir", help="run directory written by 'mmsparse train'")
    p.add_argument("--split", default="val", help="split to evaluate (val or test)")
    p.add_argument("--data", help="another feature directory of the same backbone")
    p.add_argument("--bundle", help="backbone bundle directory (default: the run's)")
    p.add_argument("--trec", metavar="DIR", help="write TREC run files and qrels to DIR")
    p.add_argument("--text-topk", type=int, help="keep the top-k terms of each caption vector")
    p.add_argument("--image-topk", type=int, help="keep the top-k terms of each image vector")
    p.add_argument("--threshold", type=float, help="zero sparse weights at or below this")
    p.add_argument(
        "--hybrid",
        choices=("published", "integrated"),
        help="hybrid score: published (w1 dense + w2 sparse) or integrated (the training's "
        "S_i: w1 dense / tau + w2 s sparse); default: the run's eval.hybrid",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "demo",
        help="the method end to end on built-in synthetic data",
        description="Train the dense baseline, D2S and the joint method on a "
        "synthetic dataset and show results and sparse terms (~1 minute, CPU).",
    )
    p.add_argument("--out", help="keep the three runs in this directory")
    p.add_argument(
        "--seed", type=int, default=42, help="seed of the synthetic data and the runs (42)"
    )
    p.add_argument("--epochs", type=int, help="epochs per run (default 12)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_demo)


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``mmsparse train``."""
    from mmsparse.config import apply_overrides, load_config
    from mmsparse.evaluate.report import results_table
    from mmsparse.train.distributed import is_main_process
    from mmsparse.train.trainer import missing_data_fix, resume_config, train

    if args.config:
        cfg = load_config(args.config, args.overrides)
    elif args.resume:
        cfg = apply_overrides(resume_config(args.out), args.overrides)
    else:
        raise ConfigError("mmsparse train needs --config FILE (or --resume with --out RUN_DIR)")
    try:
        result = train(cfg, args.out, resume=args.resume)
    except DataError as exc:
        fix = missing_data_fix(cfg, args.out, resume=args.resume)
        if fix is None:
            raise
        raise DataError(f"{exc}; {fix}") from exc
    if not is_main_process():  # under torchrun every rank trains; rank 0 reports
        return 0
    summary = {
        "run_dir": str(result.run_dir),
        "best_epoch": result.best_epoch,
        "select_metric": result.select_metric,
        "best_metric": result.best_metric,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.train_seconds, 2),
        "val": result.val,
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"run {result.run_dir}: best epoch {result.best_epoch} of {result.epochs_run} "
            f"({result.select_metric} = {result.best_metric:.2f}), "
            f"{result.train_seconds:.1f} s of training"
        )
        print(results_table({cfg.name: result.val}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run ``mmsparse evaluate``."""
    from mmsparse.evaluate.report import results_table
    from mmsparse.evaluate.run import evaluate_run
    from mmsparse.runs import load_run

    eval_cfg = None
    changes = {
        k: v
        for k, v in (
            ("text_topk", args.text_topk),
            ("image_topk", args.image_topk),
            ("threshold", args.threshold),
            ("hybrid", args.hybrid),
        )
        if v is not None
    }
    if changes:
        from mmsparse.config import validate_config

        base = load_run(args.run_dir).config
        cfg = dataclasses.replace(base, eval=dataclasses.replace(base.eval, **changes))
        validate_config(cfg, "command line")
        eval_cfg = cfg.serving
    result = evaluate_run(
        args.run_dir,
        args.split,
        data=args.data,
        bundle=args.bundle,
        trec_dir=args.trec,
        eval_cfg=eval_cfg,
        device=args.device,
    )
    if args.json:
        print_json(result.to_dict())
    else:
        print(
            f"{args.run_dir} on {result.info['split']} ({result.info['n_captions']} captions, "
            f"{result.info['n_images']} images; metrics in %)"
        )
        print(results_table({result.info.get("method", "run"): result.to_dict()}))
        if args.trec:
            print(f"TREC runs and qrels written to {args.trec}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run ``mmsparse demo``."""
    from mmsparse.demo import format_demo, run_demo

    report = run_demo(args.out, seed=args.seed, epochs=args.epochs)
    if args.json:
        print_json({k: v for k, v in report.items() if k != "table"})
    else:
        print(format_demo(report))
    return 0
