"""Integer quantisation of sparse weights (impacts), shared by the index and the exports.

``quantize(docs, "uint8")`` maps every weight ``w`` to the integer impact
``round(w / scale)`` with ``scale = max(w) / 255`` (``65535`` for ``uint16``), so the largest
weight of the collection becomes the largest integer. Weights that round to 0 are dropped
(they would contribute nothing). The dequantised weight is ``impact · scale``; a sparse
score computed on impacts is multiplied by ``scale`` to be comparable with the float one.
``none`` keeps float32 weights and ``scale = 1``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

QUANTIZE_MODES = ("none", "uint8", "uint16")
QUANT_DTYPES = {"none": np.float32, "uint8": np.uint8, "uint16": np.uint16}
_QMAX = {"uint8": 255, "uint16": 65535}


def quantize_scale(max_weight: float, mode: str) -> float:
    """The scale of ``mode`` for a collection whose largest weight is ``max_weight``."""
    if mode == "none" or max_weight <= 0:
        return 1.0
    return float(max_weight) / _QMAX[mode]


def quantize(
    docs: sp.spmatrix, mode: str, scale: float | None = None
) -> tuple[sp.csr_matrix, float]:
    """Quantise non-negative sparse weights to integer impacts.

    Args:
        docs: ``(N, V)`` non-negative sparse vectors.
        mode: ``none``, ``uint8`` or ``uint16``.
        scale: Use this scale instead of ``max / qmax`` (e.g. to quantise queries or
            another shard with a collection's scale); larger impacts are clipped.

    Returns:
        ``(quantised CSR with integer values stored as float32, scale)``.

    Raises:
        ValueError: On an unknown mode.
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantisation {mode!r} (one of {', '.join(QUANTIZE_MODES)})")
    out = sp.csr_matrix(docs, dtype=np.float32, copy=True)
    if mode == "none":
        return out, 1.0
    if scale is None:
        scale = quantize_scale(float(out.data.max()) if out.nnz else 0.0, mode)
    out.data = np.clip(np.rint(out.data / np.float32(scale)), 0, _QMAX[mode]).astype(np.float32)
    out.eliminate_zeros()
    return out, float(scale)


def dequantize(docs: sp.spmatrix, scale: float) -> sp.csr_matrix:
    """Impacts back to approximate float weights (``impact · scale``)."""
    out = sp.csr_matrix(docs, dtype=np.float32, copy=True)
    out.data *= np.float32(scale)
    return out
