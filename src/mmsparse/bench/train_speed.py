"""Deprecated module path: ``mmsparse bench train`` lives in :mod:`mmsparse.bench.train`.

Kept because docs/train_speed.md named it (``mmsparse.bench.train_speed.bench_train``); it
warns once on import and forwards every name to :mod:`mmsparse.bench.train`.
"""

from __future__ import annotations

import warnings
from typing import Any

from mmsparse.bench import train as _train

warnings.warn(
    "mmsparse.bench.train_speed is deprecated; use mmsparse.bench.train (the module of "
    "'mmsparse bench train')",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    return getattr(_train, name)
