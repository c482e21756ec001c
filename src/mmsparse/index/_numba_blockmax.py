"""numba kernel of :mod:`mmsparse.index.blockmax` (imported lazily, cached on disk)."""

import numpy as np
from numba import njit

from mmsparse.index._numba_kernels import push, sift_down


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
            if s > 0.0:
                n = push(hs, hd, n, k, s, d)
    for i in range(n_cand):
        ub[cand[i]] = 0.0
    for j in range(qt.size):
        qdense[qt[j]] = 0.0
    m = n
    while m > 0:
        out_s[m - 1] = hs[0]
        out_r[m - 1] = hd[0]
        m -= 1
        hs[0] = hs[m]
        hd[0] = hd[m]
        sift_down(hs, hd, m, 0)
    return n, read, scored
