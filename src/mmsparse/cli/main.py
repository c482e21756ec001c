"""The ``mmsparse`` command line: one thin subcommand per public library function.

Each command module exposes ``register(subparsers)`` for top-level commands and may expose
``register_bench(bench_subparsers)`` for ``mmsparse bench <name>``. Errors on bad input are
printed as one line (``mmsparse: error: ...``) with exit status 2; ``--json`` commands print
exactly one JSON object on stdout and send progress and logs to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from mmsparse import __version__
from mmsparse.errors import MMSparseError

# Command modules, in the order their commands appear in --help.
COMMAND_MODULES = (
    "mmsparse.cli.core_cmds",
    "mmsparse.cli.extract_cmds",
    "mmsparse.cli.index_cmds",
    "mmsparse.cli.serve_cmds",
    "mmsparse.cli.flickr8k_cmds",
    "mmsparse.cli.frontier_cmds",
    "mmsparse.cli.bench_cmds",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="mmsparse",
        description="Multimodal learned sparse retrieval: joint sparse + dense text-image "
        "retrievers trained on precomputed dual-encoder features.",
    )
    parser.add_argument("--version", action="version", version=f"mmsparse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = sub.add_parser("bench", help="benchmarks (long-running; see docs/benchmarks.md)")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
        if hasattr(module, "register_bench"):
            module.register_bench(bench_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mmsparse`` console script.

    Returns:
        The exit status (0 success, 2 bad input, 130 interrupted).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except MMSparseError as exc:
        print(f"mmsparse: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # stdout closed early (e.g. piped into `head`): not an error of the command.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("mmsparse: interrupted (completed checkpoints are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
