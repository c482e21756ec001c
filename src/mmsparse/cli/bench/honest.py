"""``mmsparse bench honest``: flag rates of the confidence verdicts (docs/honest_answers.md)."""

from __future__ import annotations

import argparse
import json
import sys

from mmsparse.cli.common import add_index_args


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add ``mmsparse bench honest``."""
    p = bench_sub.add_parser(
        "honest",
        help="how often the no-match / low-confidence verdicts flag real and nonsense queries",
        description="Measure the confidence verdicts of an index (built with 'mmsparse index "
        "build', best of the run's val split) on held-out val captions, short real queries, "
        "odd and out-of-domain real queries, and generated and hand-written nonsense; with "
        "the comparison of the candidate signals (docs/honest_answers.md).",
    )
    add_index_args(p, "feature directory of the index's data")
    p.add_argument("--n", type=int, default=200, help="nonsense queries per generator and seed")
    p.add_argument("--no-compare", action="store_true", help="skip the signal comparison")
    p.add_argument("--out", help="write the report JSON here (e.g. benchmarks/honest.json)")
    p.add_argument("--table", help="also write the markdown tables to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_bench_honest)


def cmd_bench_honest(args: argparse.Namespace) -> int:
    """Run ``mmsparse bench honest``."""
    from mmsparse.bench.honest import compare_table, honest_benchmark, rates_table
    from mmsparse.io_utils import atomic_write_text

    report = honest_benchmark(
        args.index,
        run_dir=args.run,
        data=args.data,
        bundle=args.bundle,
        n_nonsense=args.n,
        compare=not args.no_compare,
        progress=not args.json,
    )
    command = f"mmsparse bench honest {args.index} --n {args.n}"
    report["command"] = command + (" --no-compare" if args.no_compare else "")
    text = json.dumps(report, indent=1, allow_nan=False)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    tables = "% flagged (% no_match) per set; * = seen while designing\n\n" + rates_table(report)
    if "compare" in report:
        tables += "\n\n% flagged per set\n\n" + compare_table(report)
    if args.table:
        atomic_write_text(args.table, tables + "\n")
    if args.json:
        sys.stdout.write(text + "\n")
    else:
        print(tables)
    return 0
