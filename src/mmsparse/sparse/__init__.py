"""Sparse vocabulary vectors: pruning, non-zero statistics, FLOPs, CSR conversion, terms."""

from mmsparse.sparse.ops import (
    SparsityStats,
    contributions,
    flops,
    from_csr,
    prune,
    to_csr,
    top_terms,
)

__all__ = [
    "SparsityStats",
    "contributions",
    "flops",
    "from_csr",
    "prune",
    "to_csr",
    "top_terms",
]
