"""What the command modules share.

JSON output, ``KEY=VALUE`` and integer-list options, the arguments of commands that open an
index, and old option spellings kept working with a deprecation message.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from mmsparse.errors import MMSparseError


def print_json(obj: Any) -> None:
    """Print ``obj`` as one strict JSON object on stdout (what ``--json`` promises)."""
    from mmsparse.io_utils import json_text

    sys.stdout.write(json_text(obj, default=str, what="stdout") + "\n")


def parse_params(items: Sequence[str], option: str = "--param") -> dict[str, Any]:
    """``KEY=VALUE`` strings to a dict, values parsed as JSON where they are JSON.

    Raises:
        MMSparseError: Naming ``option`` for an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise MMSparseError(f"{option} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def parse_ints(text: str, option: str) -> list[int]:
    """``"1,2,3"`` to ``[1, 2, 3]``.

    Raises:
        MMSparseError: Naming ``option`` for anything else.
    """
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise MMSparseError(f"{option} expects comma-separated integers, got {text!r}") from exc


def add_overrides(
    p: argparse.ArgumentParser, help_text: str, flag: str = "--set", dest: str = "overrides"
) -> None:
    """A repeatable ``--set KEY=VALUE`` option: config keys to override (a list in ``dest``)."""
    p.add_argument(
        flag, dest=dest, action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def add_index_args(p: argparse.ArgumentParser, data_help: str) -> None:
    """The arguments of every command that opens an index: ``INDEX``, ``--run``, ``--data``.

    Args:
        p: The command's parser (``search``, ``serve``, ``bench honest``).
        data_help: What ``--data`` is for in this command.
    """
    p.add_argument("index", help="index directory written by 'mmsparse index build'")
    p.add_argument("--run", help="encode queries with this run (default: the index's)")
    p.add_argument("--data", help=data_help)
    p.add_argument("--bundle", help="backbone bundle directory (default: the run's)")


def warn_deprecated(old: str, new: str) -> None:
    """Say on stderr that the option spelling ``old`` is deprecated in favour of ``new``."""
    print(f"mmsparse: warning: {old} is deprecated; use {new}", file=sys.stderr)


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new option's ``dest`` and says so.

    Hidden from ``--help`` (the new spelling is documented there); the CLI's tests require
    every option without help text to be one of these.
    """

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        kwargs["help"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        """Warn, then store the value as the new option would."""
        warn_deprecated(option_string or self.option_strings[0], self.new)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(
    p: argparse.ArgumentParser | argparse._ActionsContainer,
    old: str,
    new: argparse.Action,
) -> None:
    """Accept ``old`` as a deprecated spelling of the option ``new`` (same value, same dest).

    Args:
        p: The parser or group ``new`` was added to (a mutually exclusive group keeps
            ``old`` exclusive with the others).
        old: The old spelling, e.g. ``--caption``.
        new: The action of the new option (what ``add_argument`` returned).
    """
    p.add_argument(
        old,
        action=DeprecatedAlias,
        dest=new.dest,
        new=new.option_strings[0],
        type=new.type,
        metavar=new.metavar,
        default=argparse.SUPPRESS,
    )


#: Workers of ``--encoder threads`` when ``--encoder-threads`` is not given.
ENCODER_THREADS = 2


def add_encoder_threads(p: argparse.ArgumentParser) -> None:
    """``--encoder-threads N``: the size of the ``--encoder threads`` pool (serve, bench serve)."""
    p.add_argument(
        "--encoder-threads",
        type=int,
        metavar="N",
        help=f"workers of --encoder threads, each encoding one query at a time (default "
        f"{ENCODER_THREADS}); the CPU threads each computes with are --threads",
    )


def encoder_threads(args: argparse.Namespace, uses_pool: bool) -> int:
    """The ``--encoder threads`` pool size: ``--encoder-threads``, else its default.

    Before ``--encoder-threads`` existed, ``serve --threads N`` and ``bench serve --threads
    N`` set this pool; such a command still gets an N-worker pool, with a deprecation
    message (``--threads`` itself now only sets the process's CPU threads).

    Args:
        args: The parsed command line.
        uses_pool: Whether an ``--encoder threads`` server is started at all.
    """
    if args.encoder_threads is not None:
        return int(args.encoder_threads)
    old = getattr(args, "threads", None)  # present only when given on the command line
    if uses_pool and old is not None:
        from mmsparse.threads import parse_threads

        n = parse_threads(old)
        if n is not None:
            warn_deprecated(
                f"--threads {old} as the size of the --encoder threads pool",
                f"--encoder-threads {n} (--threads sets the process's CPU threads only)",
            )
            return n
    return ENCODER_THREADS
