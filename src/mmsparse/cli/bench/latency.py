"""``mmsparse bench latency``: a warm text query's time on the server, one thread, per size."""

from __future__ import annotations

import argparse
import sys

from mmsparse.cli.common import parse_ints


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add ``mmsparse bench latency``."""
    p = bench_sub.add_parser(
        "latency",
        help="warm text-query time on the server (one thread) at each corpus size",
        description="Index a run's split (real images, then synthetic mixtures up to each "
        "size), serve each index with 'mmsparse serve --threads 1', send the split's "
        "captions one at a time and report the server's own encode / search / total "
        "seconds and the client's wall time (docs/benchmarks.md). Take it on a quiet "
        "machine.",
    )
    p.add_argument("run", help="trained run directory")
    p.add_argument("--sizes", default="1000,100000", help="comma-separated corpus sizes")
    p.add_argument("--n-queries", type=int, default=300, help="queries timed per size")
    p.add_argument("--warmup", type=int, default=20, help="untimed queries sent first")
    p.add_argument("--split", default="val", help="split of the images and captions")
    p.add_argument("--engine", default="inverted", help="index engine")
    p.add_argument("--data", help="feature directory (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the captions and images")
    p.add_argument("--work", help="keep the indexes in this folder (reused when present)")
    p.add_argument("--out", default="benchmarks/serve_latency.json", help="results JSON")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_bench_latency)


def cmd_bench_latency(args: argparse.Namespace) -> int:
    """Run ``mmsparse bench latency``."""
    from mmsparse.bench.latency import bench_latency, format_latency_table

    sizes = parse_ints(args.sizes, "--sizes")
    report = bench_latency(
        args.run,
        sizes=sizes,
        n_queries=args.n_queries,
        warmup=args.warmup,
        split=args.split,
        engine=args.engine,
        data=args.data,
        seed=args.seed,
        work=args.work,
        out=args.out,
        progress=not args.json,
    )
    if args.json:
        from mmsparse.io_utils import json_text

        sys.stdout.write(json_text(report, indent=None, what="stdout") + "\n")
    else:
        sys.stdout.write(format_latency_table(report) + "\n")
    return 0
