"""The ``mmsparse`` command line: one thin subcommand per public library function.

Each command module exposes ``register(subparsers)``; every ``mmsparse bench <command>`` is
registered by :mod:`mmsparse.cli.bench` (one module per command). Errors on bad input are
printed as one line (``mmsparse: error: ...``) with exit status 2; ``--json`` commands print
exactly one JSON object on stdout and send progress and logs to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from mmsparse import __version__
from mmsparse.errors import MMSparseError
from mmsparse.threads import LAST_DECISION, configure_threads

# Libraries whose INFO lines are noise on a command's stderr (shown with --verbose).
QUIET_LOGGERS = ("faiss", "milvus_lite")

# Command modules, in the order their commands appear in --help.
COMMAND_MODULES = (
    "mmsparse.cli.core_cmds",
    "mmsparse.cli.extract_cmds",
    "mmsparse.cli.index_cmds",
    "mmsparse.cli.serve_cmds",
    "mmsparse.cli.bench",
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
    _add_common_options(parser, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _add_to_commands(sub)
    return parser


def _add_common_options(parser: argparse.ArgumentParser, default: object) -> None:
    """``--threads`` and ``--no-verify``, accepted by every command (unless it has its own)."""
    if "--threads" not in parser._option_string_actions:
        parser.add_argument(
            "--threads",
            default=default,
            metavar="N",
            help="the CPU threads this process computes with: the thread pools of torch, "
            "OpenMP/BLAS and numba (default: the cores free when the command starts, at "
            "least 1; also MMSPARSE_THREADS; docs/benchmarks.md#threads-on-a-busy-machine)",
        )
    if "--no-verify" not in parser._option_string_actions:
        parser.add_argument(
            "--no-verify",
            action="store_true",
            default=default,
            help="load checkpoints without checking their recorded sha256 checksums",
        )


def _add_to_commands(sub: argparse._SubParsersAction) -> None:
    for parser in sub.choices.values():
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            for action in nested:
                _add_to_commands(action)
        else:
            _add_common_options(parser, argparse.SUPPRESS)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mmsparse`` console script.

    Returns:
        The exit status (0 success, 2 bad input, 130 interrupted).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # Before torch, numba or BLAS start their thread pools (see mmsparse.threads).
        configure_threads(argv)
    except MMSparseError as exc:
        print(f"mmsparse: error: {exc}", file=sys.stderr)
        return 2
    from mmsparse.io_utils import set_verify, verify_enabled  # numpy: after the pools' env

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if LAST_DECISION:
        logging.getLogger("mmsparse.threads").debug(
            "%d CPU threads (%s), OMP_WAIT_POLICY=%s",
            LAST_DECISION[0],
            LAST_DECISION[1],
            os.environ.get("OMP_WAIT_POLICY"),
        )
    if not args.verbose:
        # faiss logs its optional-import attempts (ModuleNotFoundError ...) at INFO, and
        # milvus-lite every start and stop of its in-process server.
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    verify = verify_enabled()
    if getattr(args, "no_verify", False):
        set_verify(False)
    try:
        return int(args.func(args) or 0)
    except MMSparseError as exc:
        print(f"mmsparse: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # stdout closed early (e.g. piped into `head`): not an error of the command.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(_interrupted_message(args), file=sys.stderr)
        return 130
    finally:
        set_verify(verify)


def _interrupted_message(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves behind, and for ``train`` how to continue."""
    if getattr(args, "command", None) == "train" and getattr(args, "out", None):
        return (
            "mmsparse: interrupted; completed epochs are kept: continue with "
            f"'mmsparse train --resume --out {args.out}'"
        )
    if getattr(args, "images", None) and getattr(args, "index_command", None) == "build":
        return (
            f"mmsparse: interrupted; the encoded batches are kept in {args.out}/features: "
            "run the same command again to continue"
        )
    return "mmsparse: interrupted (completed checkpoints are kept)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
