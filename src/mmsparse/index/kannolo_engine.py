"""Deprecated module path: the ``kannolo`` engine lives in :mod:`mmsparse.index.engines.kannolo`.

Kept so that older code importing ``mmsparse.index.kannolo_engine`` keeps working; it warns
once on import. Use ``mmsparse.index.engines.get_engine("kannolo")`` instead.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import scipy.sparse as sp

from mmsparse.index.engines.kannolo import KANNOLO_FILE, KANNOLO_META, KannoloEngine

__all__ = ["KANNOLO_FILE", "KANNOLO_META", "KannoloEngine", "build_kannolo"]

warnings.warn(
    "mmsparse.index.kannolo_engine is deprecated; use mmsparse.index.engines.kannolo, or "
    "mmsparse.index.engines.get_engine('kannolo')",
    DeprecationWarning,
    stacklevel=2,
)


def build_kannolo(
    directory: str | Path, sparse: sp.spmatrix, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Deprecated: ``get_engine("kannolo").build(directory, sparse, params=params)``."""
    return KannoloEngine.build(directory, sparse, params=params)
