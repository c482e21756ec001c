"""numba kernels of the ``inverted`` engine (imported lazily by :mod:`mmsparse.index.kernels`).

Kept in their own module so that numba's on-disk cache (``cache=True``) works and numba is
imported only when the first search runs.

Why the top-k passes test a running threshold before calling :func:`push`: a call of an
njit function that takes arrays costs numba reference-count updates of those arrays (atomic
operations, about 20 ns each time), so calling ``push`` for every positive score cost more
than the accumulation itself at a million documents (20 of 32 ms a query). Once the heap
holds ``k`` documents only a score above its worst one can enter, so the test skips the call
for nearly every document without changing the result.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def worse(s_a, d_a, s_b, d_b):  # pragma: no cover - compiled
    # True when (s_a, d_a) ranks below (s_b, d_b): lower score, or equal and higher row.
    return s_a < s_b or (s_a == s_b and d_a > d_b)


@njit(cache=True)
def sift_down(hs, hd, n, i):  # pragma: no cover - compiled
    while True:
        left = 2 * i + 1
        if left >= n:
            return
        child = left
        right = left + 1
        if right < n and worse(hs[right], hd[right], hs[left], hd[left]):
            child = right
        if worse(hs[child], hd[child], hs[i], hd[i]):
            hs[i], hs[child] = hs[child], hs[i]
            hd[i], hd[child] = hd[child], hd[i]
            i = child
        else:
            return


@njit(cache=True, inline="always")
def push(hs, hd, n, k, s, d):  # pragma: no cover - compiled
    # Offer (s, d) to the min-heap of the k best pairs (root = the worst kept); new size.
    if n < k:
        hs[n] = s
        hd[n] = d
        n += 1
        c = n - 1
        while c > 0:
            parent = (c - 1) // 2
            if worse(hs[c], hd[c], hs[parent], hd[parent]):
                hs[c], hs[parent] = hs[parent], hs[c]
                hd[c], hd[parent] = hd[parent], hd[c]
                c = parent
            else:
                break
    elif worse(hs[0], hd[0], s, d):
        hs[0] = s
        hd[0] = d
        sift_down(hs, hd, n, 0)
    return n


@njit(cache=True)
def pop_all(hs, hd, n, out_r, out_s):  # pragma: no cover - compiled
    # Pop worst first into the tail: output best first.
    m = n
    while m > 0:
        out_s[m - 1] = hs[0]
        out_r[m - 1] = hd[0]
        m -= 1
        hs[0] = hs[m]
        hd[0] = hd[m]
        sift_down(hs, hd, m, 0)


@njit(cache=True)
def blocked(
    indptr, doc_ids, weights, slot, dense, qt, qw, k, block, scores, hs, hd, live
):  # pragma: no cover - compiled
    """Long posting lists: accumulate block by block of documents, then scan the block.

    Every query term adds its postings of the block (``slot[t] < 0``) or its dense column
    (``dense[slot[t]]``, one weight per document, 0 where absent: a vector loop) to the
    first ``block`` scores, in increasing term order, so each score is the same float32 sum
    as the term-at-a-time pass over whole lists. Blocks are visited in increasing row order,
    so a later document with a score equal to the heap's worst ranks below it: only a score
    above the running threshold can enter the heap. Rows where a non-empty ``live`` is false
    are left out.
    """
    n_docs = scores.size
    masked = live.size > 0
    nq = qt.size
    cur = np.empty(nq, dtype=np.int64)
    for j in range(nq):
        cur[j] = indptr[qt[j]]
    n = 0
    thr = np.float32(0.0)
    for base in range(0, n_docs, block):
        m = min(block, n_docs - base)
        lim = base + m
        for j in range(nq):
            t = qt[j]
            w = qw[j]
            sl = slot[t]
            if sl >= 0:
                col = dense[sl, base:lim]  # a slice, so that i >= 0 is known: a vector loop
                for i in range(m):
                    scores[i] += w * np.float32(col[i])
            else:
                p = cur[j]
                # first posting of the next block (doc ids increase within a list)
                e = p + np.searchsorted(doc_ids[p : indptr[t + 1]], lim)
                for q in range(p, e):
                    # unsigned: no negative-index wrap-around test (the row is in the block)
                    scores[np.uint64(doc_ids[q] - base)] += w * np.float32(weights[q])
                cur[j] = e
        for i in range(m):
            s = scores[i]
            if s > thr and (not masked or live[base + i]):
                n = push(hs, hd, n, k, s, base + i)
                if n == k:
                    thr = hs[0]
        scores[:m] = 0.0
    return n


@njit(cache=True)
def touched_only(
    indptr, doc_ids, weights, qt, qw, k, scores, touched, hs, hd, live
):  # pragma: no cover - compiled
    """Short posting lists: remember the touched documents, visit only those."""
    masked = live.size > 0
    n_touched = 0
    for j in range(qt.size):
        t = qt[j]
        w = qw[j]
        for p in range(indptr[t], indptr[t + 1]):
            d = doc_ids[p]
            if scores[d] == 0.0:
                touched[n_touched] = d
                n_touched += 1
            scores[d] += w * np.float32(weights[p])
    n = 0
    thr = np.float32(0.0)
    for i in range(n_touched):
        d = touched[i]
        s = scores[d]
        scores[d] = 0.0
        # touched rows are not in row order: an equal score may still enter (lower row)
        if s >= thr and s > 0.0 and (not masked or live[d]):
            n = push(hs, hd, n, k, s, d)
            if n == k:
                thr = hs[0]
    return n


@njit(cache=True)
def long_lists(indptr, qt, n_docs):  # pragma: no cover - compiled
    """Whether the query's posting lists hold more postings than a quarter of the documents."""
    total = 0
    for j in range(qt.size):
        total += indptr[qt[j] + 1] - indptr[qt[j]]
    return total * 4 > n_docs


@njit(cache=True)
def one_query(
    indptr,
    doc_ids,
    weights,
    slot,
    dense,
    qt,
    qw,
    k,
    block,
    scores,
    touched,
    hs,
    hd,
    out_r,
    out_s,
    live,
):  # pragma: no cover - compiled
    # live: bool per document, rows that may be returned; empty = every row.
    if long_lists(indptr, qt, scores.size):
        n = blocked(indptr, doc_ids, weights, slot, dense, qt, qw, k, block, scores, hs, hd, live)
    else:
        n = touched_only(indptr, doc_ids, weights, qt, qw, k, scores, touched, hs, hd, live)
    pop_all(hs, hd, n, out_r, out_s)
    return n


@njit(cache=True)
def group_query(
    indptr,
    doc_ids,
    weights,
    slot,
    dense,
    n_docs,
    q_indptr,
    q_terms,
    q_weights,
    members,
    k,
    block,
    live,
    out_r,
    out_s,
):  # pragma: no cover - compiled
    """Long queries ``members`` together: each block's postings and dense columns are read once.

    The queries' terms are merged into one increasing list of distinct terms, each with the
    queries that have it; per block of documents every such term is read once and added to
    the score row (``acc[g]``) of each of its queries. Each query's scores thus receive its
    own terms in increasing term order, the same float32 sums as :func:`blocked`, and the
    same thresholded top-k pass.
    """
    G = members.size
    masked = live.size > 0
    cnt = 0
    for g in range(G):
        i = members[g]
        cnt += q_indptr[i + 1] - q_indptr[i]
    keys = np.empty(cnt, dtype=np.int64)
    ws = np.empty(cnt, dtype=np.float32)
    pos = 0
    for g in range(G):
        i = members[g]
        for j in range(q_indptr[i], q_indptr[i + 1]):
            keys[pos] = q_terms[j] * G + g
            ws[pos] = q_weights[j]
            pos += 1
    order = np.argsort(keys, kind="mergesort")
    ut = np.empty(cnt, dtype=np.int64)  # distinct terms, increasing
    u_ptr = np.empty(cnt + 1, dtype=np.int64)  # term u is in queries u_q[u_ptr[u]:u_ptr[u+1]]
    u_q = np.empty(cnt, dtype=np.int64)
    u_w = np.empty(cnt, dtype=np.float32)
    nu = 0
    for r in range(cnt):
        key = keys[order[r]]
        t = key // G
        if nu == 0 or ut[nu - 1] != t:
            ut[nu] = t
            u_ptr[nu] = r
            nu += 1
        u_q[r] = key - t * G
        u_w[r] = ws[order[r]]
    u_ptr[nu] = cnt
    cur = np.empty(nu, dtype=np.int64)
    for u in range(nu):
        cur[u] = indptr[ut[u]]
    acc = np.zeros((G, block), dtype=np.float32)
    hs = np.empty((G, k), dtype=np.float32)
    hd = np.empty((G, k), dtype=np.int64)
    nn = np.zeros(G, dtype=np.int64)
    thr = np.zeros(G, dtype=np.float32)
    for base in range(0, n_docs, block):
        m = min(block, n_docs - base)
        lim = base + m
        for u in range(nu):
            t = ut[u]
            sl = slot[t]
            if sl >= 0:
                col = dense[sl, base:lim]
                for r in range(u_ptr[u], u_ptr[u + 1]):
                    a = acc[u_q[r]]
                    w = u_w[r]
                    for i in range(m):
                        a[i] += w * np.float32(col[i])
            else:
                p = cur[u]
                e = p + np.searchsorted(doc_ids[p : indptr[t + 1]], lim)
                for r in range(u_ptr[u], u_ptr[u + 1]):
                    a = acc[u_q[r]]
                    w = u_w[r]
                    for q in range(p, e):
                        a[np.uint64(doc_ids[q] - base)] += w * np.float32(weights[q])
                cur[u] = e
        for g in range(G):
            a = acc[g]
            h_s = hs[g]
            h_d = hd[g]
            n = nn[g]
            th = thr[g]
            for i in range(m):
                sc = a[i]
                if sc > th and (not masked or live[base + i]):
                    n = push(h_s, h_d, n, k, sc, base + i)
                    if n == k:
                        th = h_s[0]
            a[:m] = 0.0
            nn[g] = n
            thr[g] = th
    for g in range(G):
        pop_all(hs[g], hd[g], nn[g], out_r[members[g]], out_s[members[g]])


@njit(cache=True, parallel=True)
def batch(
    indptr,
    doc_ids,
    weights,
    slot,
    dense,
    n_docs,
    q_indptr,
    q_terms,
    q_weights,
    k,
    block,
    n_chunks,
    live,
    group,
    group_block,
):  # pragma: no cover - compiled
    """Every query of a batch: short ones one by one, long ones in groups of ``group``.

    ``group`` <= 1: every query one by one (:func:`one_query`). Otherwise queries with long
    lists are answered ``group`` at a time by :func:`group_query` over blocks of
    ``group_block`` documents. Both are spread over the threads.
    """
    n_q = q_indptr.size - 1
    out_r = np.full((n_q, k), -1, dtype=np.int64)
    out_s = np.zeros((n_q, k), dtype=np.float32)
    is_long = np.zeros(n_q, dtype=np.bool_)
    if group > 1:
        for i in range(n_q):
            is_long[i] = long_lists(indptr, q_terms[q_indptr[i] : q_indptr[i + 1]], n_docs)
    singles = np.flatnonzero(~is_long)
    grouped = np.flatnonzero(is_long)
    n_s = singles.size
    chunks = max(1, min(n_chunks, n_s))
    per = (n_s + chunks - 1) // chunks
    for c in prange(chunks):
        scores = np.zeros(n_docs, dtype=np.float32)
        touched = np.empty(n_docs, dtype=np.int64)
        hs = np.empty(k, dtype=np.float32)
        hd = np.empty(k, dtype=np.int64)
        for r in range(c * per, min(n_s, (c + 1) * per)):
            i = singles[r]
            s, e = q_indptr[i], q_indptr[i + 1]
            one_query(
                indptr,
                doc_ids,
                weights,
                slot,
                dense,
                q_terms[s:e],
                q_weights[s:e],
                k,
                block,
                scores,
                touched,
                hs,
                hd,
                out_r[i],
                out_s[i],
                live,
            )
    n_groups = (grouped.size + group - 1) // max(group, 1)
    for gi in prange(n_groups):
        members = grouped[gi * group : min(grouped.size, (gi + 1) * group)]
        group_query(
            indptr,
            doc_ids,
            weights,
            slot,
            dense,
            n_docs,
            q_indptr,
            q_terms,
            q_weights,
            members,
            k,
            group_block,
            live,
            out_r,
            out_s,
        )
    return out_r, out_s


@njit(cache=True)
def single(
    indptr, doc_ids, weights, slot, dense, qt, qw, k, block, scores, touched, hs, hd, live
):  # pragma: no cover - compiled
    out_r = np.full(k, -1, dtype=np.int64)
    out_s = np.zeros(k, dtype=np.float32)
    one_query(
        indptr,
        doc_ids,
        weights,
        slot,
        dense,
        qt,
        qw,
        k,
        block,
        scores,
        touched,
        hs,
        hd,
        out_r,
        out_s,
        live,
    )
    return out_r, out_s


@njit(cache=True)
def fill_dense(indptr, doc_ids, weights, terms, dense):  # pragma: no cover - compiled
    """``dense[i, d] = w[terms[i], d]`` (the rows must start zeroed)."""
    for i in range(terms.size):
        t = terms[i]
        row = dense[i]
        for p in range(indptr[t], indptr[t + 1]):
            row[doc_ids[p]] = weights[p]
