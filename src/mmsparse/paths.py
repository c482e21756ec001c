"""Paths in configs: environment variables, and the absolute paths a run records.

A config may name its data through the environment, shell style::

    "path": "${MMSPARSE_FLICKR8K:-../shared/flickr8k}"

(``$VAR``, ``${VAR}``, ``${VAR:-default}`` and a leading ``~`` are expanded; an unset
variable without a default is an error naming it). Relative paths are relative to the
working folder of the command, as on a shell. ``mmsparse train`` records every path of
the run (``data.path``, ``data.bundle``, ``model.init_from``) expanded and absolute in
``RUN_DIR/config.json``, so the run can be evaluated, explained, indexed and searched from
any folder; a run moved to another machine is given its data with ``--data`` and
``--bundle``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from mmsparse.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from mmsparse.config import RunConfig

ENV_FLICKR8K = "MMSPARSE_FLICKR8K"
_VAR = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def expand_path(value: str, key: str = "path") -> str:
    """Expand environment variables and ``~`` in a config path.

    Args:
        value: The path as written, e.g. ``${MMSPARSE_FLICKR8K:-../shared/flickr8k}``.
        key: The config key, named in errors.

    Returns:
        The expanded path (still relative if it was).

    Raises:
        ConfigError: If a variable without default is not set.
    """

    def sub(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        env = os.environ.get(name)
        if env:
            return env
        if match.group("default") is not None:
            return match.group("default")
        raise ConfigError(
            f"{key}={value!r}: environment variable {name} is not set (set it, or write "
            f"${{{name}:-DEFAULT}})"
        )

    return os.path.expanduser(_VAR.sub(sub, value))


def absolute_path(value: str, key: str = "path") -> str:
    """:func:`expand_path`, then made absolute against the working folder."""
    return str(Path(expand_path(value, key)).absolute())


def resolve_run_paths(cfg: RunConfig) -> RunConfig:
    """The config with its paths expanded and absolute, as a run records them.

    ``data.path``, ``data.bundle`` and ``model.init_from`` are resolved; empty or unset
    ones are left as they are.

    Raises:
        ConfigError: On an unset environment variable.
    """
    data = cfg.data
    changes = {}
    if data.path:
        changes["path"] = absolute_path(data.path, "data.path")
    if data.bundle:
        changes["bundle"] = absolute_path(data.bundle, "data.bundle")
    new = dataclasses.replace(cfg, data=dataclasses.replace(data, **changes))
    if cfg.model.init_from:
        init_from = absolute_path(cfg.model.init_from, "model.init_from")
        new = dataclasses.replace(new, model=dataclasses.replace(cfg.model, init_from=init_from))
    return new
