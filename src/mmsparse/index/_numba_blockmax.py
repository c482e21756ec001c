"""numba kernel of :mod:`mmsparse.index.blockmax` (imported lazily, cached on disk)."""

import numpy as np
from numba import njit

from mmsparse.index._numba_kernels import pop_all, push


@njit(cache=True)
def blockmax_query(
    bm_indptr,
    bm_block,
    bm_max,
    f_indptr,
    f_terms,
    f_weights,
    n_docs,
    bsize,
    qt,
    qw,
    k,
    margin,
    ub,
    qdense,
    hs,
    hd,
    out_r,
    out_s,
):  # pragma: no cover - compiled
    """Exact top-k by block-max pruning; returns ``(n results, entries read, blocks scored)``."""
    read = 0
    # 1. Upper bound of every block: sum over query terms of weight x block maximum.
    n_cand = 0
    for j in range(qt.size):
        t = qt[j]
        w = np.float64(qw[j])
        qdense[t] = qw[j]
        for p in range(bm_indptr[t], bm_indptr[t + 1]):
            b = bm_block[p]
            ub[b] += w * np.float64(bm_max[p])
        read += bm_indptr[t + 1] - bm_indptr[t]
    cand = np.flatnonzero(ub > 0.0)
    n_cand = cand.size
    order = np.argsort(-ub[cand])
    # 2. Score whole blocks, best bound first, until the k-th score beats the next bound.
    n = 0
    thr = np.float32(0.0)  # the heap's worst once full (push is costly: _numba_kernels doc)
    scored = 0
    for i in range(n_cand):
        b = cand[order[i]]
        bound = ub[b] * (1.0 + margin)
        if n == k and bound < hs[0]:
            break
        scored += 1
        start = b * bsize
        stop = min(n_docs, start + bsize)
        for d in range(start, stop):
            s = np.float32(0.0)
            for p in range(f_indptr[d], f_indptr[d + 1]):
                q = qdense[f_terms[p]]
                if q != 0.0:
                    s += q * f_weights[p]
            read += f_indptr[d + 1] - f_indptr[d]
            # blocks are not visited in row order: an equal score may still enter (lower row)
            if s > 0.0 and s >= thr:
                n = push(hs, hd, n, k, s, d)
                if n == k:
                    thr = hs[0]
    for i in range(n_cand):
        ub[cand[i]] = 0.0
    for j in range(qt.size):
        qdense[qt[j]] = 0.0
    pop_all(hs, hd, n, out_r, out_s)
    return n, read, scored
