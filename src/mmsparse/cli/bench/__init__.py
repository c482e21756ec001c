"""``mmsparse bench <command>``: every benchmark, registered here and nowhere else.

One module per command, named as the command, both here (``mmsparse.cli.bench.<command>``:
its options and a thin ``cmd_bench_<command>``) and in the library
(``mmsparse.bench.<command>``: the benchmark itself, a module or a package). Each command
module exposes ``register(bench_subparsers)``. What each one measures and writes:
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib

#: The bench commands, in the order of ``mmsparse bench --help``.
BENCH_COMMANDS = (
    "e2e",
    "flickr8k",
    "frontier",
    "honest",
    "latency",
    "photos",
    "retrieval",
    "serve",
    "steps",
    "train",
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mmsparse bench`` and every command of :data:`BENCH_COMMANDS` to ``sub``."""
    bench = sub.add_parser(
        "bench",
        help="benchmarks (long-running; see docs/benchmarks.md)",
        description="Benchmarks (long-running). What each one measures, how to run it, the "
        "files it writes and the recorded results: docs/benchmarks.md.",
    )
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for name in BENCH_COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(bench_sub)
