"""The stored image vectors that the bmp and kannolo engines keep beside their own files.

Neither library returns the weight of a term in a document, which explanations need, so
each engine also writes its images' vectors (CSR: ``indptr``, ``indices``, ``data``,
``shape``) and its own extra arrays into one ``.npz`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError


def save_stored(
    path: Path,
    matrix: sp.csr_matrix,
    *,
    indices_dtype: Any = np.int32,
    data_dtype: Any = np.float32,
    **extra: np.ndarray,
) -> None:
    """Write ``matrix`` (one row per image) and the ``extra`` arrays to ``path`` (``.npz``)."""
    np.savez(
        path,
        indptr=matrix.indptr.astype(np.int64),
        indices=matrix.indices.astype(indices_dtype),
        data=matrix.data.astype(data_dtype),
        shape=np.array(matrix.shape, dtype=np.int64),
        **extra,
    )


def load_stored(
    path: Path, engine: str, extra: tuple[str, ...] = ()
) -> tuple[sp.csr_matrix, dict[str, np.ndarray]]:
    """Read what :func:`save_stored` wrote.

    Args:
        path: The ``.npz`` file.
        engine: The engine's name, for the error message.
        extra: Names of the extra arrays to read.

    Returns:
        The stored matrix (``int32`` indices) and the extra arrays.

    Raises:
        IndexFormatError: If the file is unreadable or an array is missing.
    """
    try:
        with np.load(path) as meta:
            shape = tuple(int(x) for x in meta["shape"])
            matrix = sp.csr_matrix(
                (meta["data"], meta["indices"].astype(np.int32), meta["indptr"]), shape=shape
            )
            arrays = {name: meta[name] for name in extra}
    except (OSError, KeyError, ValueError) as exc:
        raise IndexFormatError(f"{path}: unreadable {engine} metadata ({exc})") from exc
    return matrix, arrays


def stored_weights(
    matrix: sp.csr_matrix, rows: np.ndarray, terms: np.ndarray, scale: float = 1.0
) -> np.ndarray:
    """``(len(rows), len(terms))`` float32 weights of ``rows`` at ``terms``, times ``scale``."""
    sub = matrix[np.asarray(rows, dtype=np.int64)][:, np.asarray(terms, dtype=np.int64)]
    return (sub.toarray().astype(np.float32) * np.float32(scale)).astype(np.float32)
