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
def add_columns(dense, slot, qt, qw, j, r, base, lim, scores):  # pragma: no cover - compiled
    """``scores[i] += qw[j'] · column(qt[j'])[base + i]`` for the ``r`` (1 to 4) terms from j.

    The columns are sliced to the block, so that the index is known to be non-negative and
    the loops vectorise; with several columns the score stays in a register between the
    additions, which are the same float32 operations in the same order as one at a time.
    """
    m = lim - base
    c0 = dense[slot[qt[j]], base:lim]
    w0 = qw[j]
    if r == 1:
        for i in range(m):
            scores[i] += w0 * np.float32(c0[i])
        return
    c1 = dense[slot[qt[j + 1]], base:lim]
    w1 = qw[j + 1]
    if r == 2:
        for i in range(m):
            scores[i] = (scores[i] + w0 * np.float32(c0[i])) + w1 * np.float32(c1[i])
        return
    c2 = dense[slot[qt[j + 2]], base:lim]
    w2 = qw[j + 2]
    if r == 3:
        for i in range(m):
            s = (scores[i] + w0 * np.float32(c0[i])) + w1 * np.float32(c1[i])
            scores[i] = s + w2 * np.float32(c2[i])
        return
    c3 = dense[slot[qt[j + 3]], base:lim]
    w3 = qw[j + 3]
    for i in range(m):
        s = (scores[i] + w0 * np.float32(c0[i])) + w1 * np.float32(c1[i])
        scores[i] = (s + w2 * np.float32(c2[i])) + w3 * np.float32(c3[i])


@njit(cache=True)
def add_block(
    indptr, doc_ids, weights, slot, dense, qt, qw, cur, base, lim, scores
):  # pragma: no cover - compiled
    """Add every query term's weights of documents ``[base, lim)`` to ``scores[:lim - base]``.

    Terms in the given order: a dense column (``slot[t] >= 0``; up to 4 consecutive ones in
    one pass) or the term's postings from ``cur[j]`` (advanced past the block).
    """
    nq = qt.size
    j = 0
    while j < nq:
        t = qt[j]
        if slot[t] >= 0:
            # up to 4 consecutive dense terms in one pass: each score is read and written
            # once instead of once per column (same additions, same order)
            r = 1
            while r < 4 and j + r < nq and slot[qt[j + r]] >= 0:
                r += 1
            add_columns(dense, slot, qt, qw, j, r, base, lim, scores)
            j += r
        else:
            w = qw[j]
            p = cur[j]
            # first posting of the next block (doc ids increase within a list)
            e = p + np.searchsorted(doc_ids[p : indptr[t + 1]], lim)
            for q in range(p, e):
                # unsigned: no negative-index wrap-around test (the row is in the block)
                scores[np.uint64(doc_ids[q] - base)] += w * np.float32(weights[q])
            cur[j] = e
            j += 1


@njit(cache=True)
def scan_block(scores, base, m, k, hs, hd, n, thr, live):  # pragma: no cover - compiled
    """Offer ``scores[:m]`` (rows ``base + i``) to the heap, zero them; ``(n, threshold)``.

    Blocks come in increasing row order, so a later row with a score equal to the heap's
    worst ranks below it: only a score above the threshold can enter.
    """
    masked = live.size > 0
    for i in range(m):
        s = scores[i]
        if s > thr and (not masked or live[base + i]):
            n = push(hs, hd, n, k, s, base + i)
            if n == k:
                thr = hs[0]
    scores[:m] = 0.0
    return n, thr


@njit(cache=True)
def blocked(
    indptr, doc_ids, weights, slot, dense, qt, qw, k, block, scores, hs, hd, live
):  # pragma: no cover - compiled
    """Long posting lists: accumulate block by block of documents, then scan the block.

    Every query term adds its postings of the block (``slot[t] < 0``) or its dense column
    (``dense[slot[t]]``, one weight per document, 0 where absent: a vector loop) to the
    first ``block`` scores, in increasing term order, so each score is the same float32 sum
    as the term-at-a-time pass over whole lists. Only a score above the running threshold
    is offered to the heap. Rows where a non-empty ``live`` is false are left out.
    """
    n_docs = scores.size
    nq = qt.size
    cur = np.empty(nq, dtype=np.int64)
    for j in range(nq):
        cur[j] = indptr[qt[j]]
    n = 0
    thr = np.float32(0.0)
    for base in range(0, n_docs, block):
        lim = min(base + block, n_docs)
        add_block(indptr, doc_ids, weights, slot, dense, qt, qw, cur, base, lim, scores)
        n, thr = scan_block(scores, base, lim - base, k, hs, hd, n, thr, live)
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
):  # pragma: no cover - compiled
    n_q = q_indptr.size - 1
    out_r = np.full((n_q, k), -1, dtype=np.int64)
    out_s = np.zeros((n_q, k), dtype=np.float32)
    per = (n_q + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        scores = np.zeros(n_docs, dtype=np.float32)
        touched = np.empty(n_docs, dtype=np.int64)
        hs = np.empty(k, dtype=np.float32)
        hd = np.empty(k, dtype=np.int64)
        for i in range(c * per, min(n_q, (c + 1) * per)):
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
