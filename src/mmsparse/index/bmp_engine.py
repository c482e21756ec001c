"""Deprecated module path: the ``bmp`` engine lives in :mod:`mmsparse.index.engines.bmp`.

Kept so that older code importing ``mmsparse.index.bmp_engine`` keeps working; it warns
once on import. Use ``mmsparse.index.engines.get_engine("bmp")`` instead.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import scipy.sparse as sp

from mmsparse.index.engines.bmp import (
    BMP_FILE,
    BMP_MAX_K,
    BMP_META,
    MAX_IMPACT,
    MAX_QUERY_WEIGHT,
    SCORE_LIMIT,
    BmpEngine,
    quantize_query,
    write_bmp,
)

__all__ = [
    "BMP_FILE",
    "BMP_MAX_K",
    "BMP_META",
    "MAX_IMPACT",
    "MAX_QUERY_WEIGHT",
    "SCORE_LIMIT",
    "BmpEngine",
    "build_bmp",
    "quantize_query",
    "write_bmp",
]

warnings.warn(
    "mmsparse.index.bmp_engine is deprecated; use mmsparse.index.engines.bmp, or "
    "mmsparse.index.engines.get_engine('bmp')",
    DeprecationWarning,
    stacklevel=2,
)


def build_bmp(
    directory: str | Path, sparse: sp.spmatrix, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Deprecated: ``get_engine("bmp").build(directory, sparse, params=params)``."""
    return BmpEngine.build(directory, sparse, params=params)
