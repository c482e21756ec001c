"""Exception types of mmsparse.

Every error raised on bad user input is a subclass of :class:`MMSparseError`, so the
command-line tool can print it as one clear line instead of a traceback.
"""

from __future__ import annotations


class MMSparseError(Exception):
    """Base class of all errors mmsparse raises on bad input or state."""


class ConfigError(MMSparseError, ValueError):
    """A configuration file or override is invalid (unknown key, wrong type or value)."""


class DataError(MMSparseError, ValueError):
    """Feature files or metadata are invalid; the message names the file, id or row."""


class CheckpointError(MMSparseError, ValueError):
    """A checkpoint is unreadable, truncated or incompatible with the data."""


class IndexFormatError(MMSparseError, ValueError):
    """An index file is corrupt, foreign or built with incompatible options."""


class NonFiniteError(MMSparseError, ArithmeticError):
    """A loss or a score is not finite (NaN or infinity): a diverged model."""


class QueryError(MMSparseError, ValueError):
    """A search request is invalid: ``k``, mode, query weights or an engine parameter."""


class MissingExtraError(MMSparseError, ImportError):
    """An optional dependency is not installed; the message gives the install command."""


def require_extra(module: str, extra: str, purpose: str):
    """Import an optional dependency lazily, with an install hint when it is missing.

    Args:
        module: Importable module name, e.g. ``"matplotlib.pyplot"``.
        extra: Name of the mmsparse extra that provides it, e.g. ``"plot"``.
        purpose: What the module is needed for, used in the error message.

    Returns:
        The imported module.

    Raises:
        MissingExtraError: If the module cannot be imported.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            f"{purpose} needs the optional package '{module.split('.')[0]}': "
            f"pip install 'mmsparse[{extra}]'"
        ) from exc
