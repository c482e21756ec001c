"""``mmsparse bench e2e``: a text query's whole time (encoding + search), sparse and dense."""

from __future__ import annotations

import argparse
import sys

from mmsparse.cli.common import parse_ints


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add ``mmsparse bench e2e``."""
    p = bench_sub.add_parser(
        "e2e",
        help="end-to-end query time (encode + search), sparse vs dense, per corpus size",
        description="Time real caption texts one by one on one thread: the run's sparse "
        "pipeline (tokenise + lookup for inference-free runs, else the text encoder and "
        "heads; then the inverted index) and the dense one (text encoder + dense head + "
        "faiss IndexFlatIP), at each corpus size (docs/frontier.md). Take it on a quiet "
        "machine.",
    )
    p.add_argument("--run", required=True, help="trained run directory")
    p.add_argument("--data", help="feature directory (default: the run's)")
    p.add_argument(
        "--sizes", default="1000,100000,1000000", help="comma-separated corpus sizes (images)"
    )
    p.add_argument("--n-queries", type=int, default=500, help="queries timed per size")
    p.add_argument("--no-dense", action="store_true", help="time the sparse pipeline only")
    p.add_argument("--seed", type=int, default=0, help="seed of the query draw and the corpus")
    p.add_argument("--out", default="benchmarks/end_to_end.json", help="results JSON")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_bench_e2e)


def cmd_bench_e2e(args: argparse.Namespace) -> int:
    """Run ``mmsparse bench e2e``."""
    from mmsparse.bench.e2e import bench_end_to_end, format_e2e_table

    sizes = parse_ints(args.sizes, "--sizes")
    report = bench_end_to_end(
        args.run,
        sizes=sizes,
        n_queries=args.n_queries,
        seed=args.seed,
        data=args.data,
        dense=not args.no_dense,
        out=args.out,
        progress=not args.json,
    )
    if args.json:
        from mmsparse.io_utils import json_text

        sys.stdout.write(json_text(report, indent=None, what="stdout") + "\n")
    else:
        sys.stdout.write(format_e2e_table(report) + "\n")
    return 0
