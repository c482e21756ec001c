"""The corpus of ``mmsparse bench retrieval``, its queries and their exact top-k.

A trained run (any run directory: re-run with a new model by pointing ``--run`` at it)
encodes every real image of its data (all splits) and ``n_queries`` real captions
(sampled without replacement, with replacement only if there are fewer). The real images
are the first rows of the corpus; every further image blends a random real image ``s``
(its main content) with a second random real image ``s'`` (both uniform)::

    z = z_s ⊙ exp(0.2 ε) ⊙ keep  +  0.8 · z_s' ⊙ exp(0.2 ε') ⊙ borrow
    e = normalize(0.75 · e_s + 0.25 · e_s' + 0.1 · ξ / sqrt(d))

with ``ε, ε' ~ N(0, 1)`` per non-zero weight, ``keep ~ Bernoulli(0.7)`` (each term of
``s`` survives with probability 0.7), ``borrow ~ Bernoulli(0.3)`` (each term of ``s'`` is
added with probability 0.3, at 0.8 of its weight), ``ξ ~ N(0, I)``. So every synthetic
image has about as many terms as a real one, only terms that real images use, with
weights of the real scale: posting-list lengths keep the real term distribution. With
~49 million possible ``(s, s')`` pairs, a million images are rarely near-duplicates of
each other. The run's own pruning (``eval.image_topk``/``threshold``, or
``image_topk``/``text_topk`` of :class:`~mmsparse.bench.retrieval.options.ServingCap`) is
applied to the real vectors before sampling
and to the queries.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from mmsparse.bench.retrieval.options import K
from mmsparse.index import kernels

if TYPE_CHECKING:
    from mmsparse.data.store import FeatureStore
    from mmsparse.runs import LoadedRun


KEEP, BORROW, BORROW_WEIGHT, DENSE_NOISE = 0.7, 0.3, 0.8, 0.1  # corpus synthesis (module doc)


def synthesize_corpus(
    real_sparse: sp.csr_matrix,
    real_dense: np.ndarray,
    n_images: int,
    seed: int = 0,
    chunk: int = 50_000,
    progress: bool = False,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """``n_images`` image vectors: the real ones first, then perturbed mixtures (module doc).

    Args:
        real_sparse: ``(n_real, V)`` real image sparse vectors.
        real_dense: ``(n_real, d)`` real image dense vectors.
        n_images: Corpus size (may be smaller than ``n_real``: the first rows are taken).
        seed: Seed of the sampling.
        chunk: Rows generated at a time.
        progress: Show a progress bar.

    Returns:
        ``(sparse CSR (n_images, V) float32, dense (n_images, d) float32)``.
    """
    rng = np.random.default_rng(seed)
    n_real = real_sparse.shape[0]
    if n_images <= n_real:
        return real_sparse[:n_images].astype(np.float32), real_dense[:n_images].copy()
    parts = [real_sparse.astype(np.float32)]
    dense = np.empty((n_images, real_dense.shape[1]), dtype=np.float32)
    dense[:n_real] = real_dense
    starts = range(n_real, n_images, chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="synthesizing images", unit="chunk", leave=False)
    d = real_dense.shape[1]
    for s in starts:
        m = min(chunk, n_images - s)
        src = rng.integers(0, n_real, m)
        src2 = rng.integers(0, n_real, m)
        a = real_sparse[src].astype(np.float32)
        a.data *= np.exp(0.2 * rng.standard_normal(a.nnz)).astype(np.float32)
        a.data *= rng.random(a.nnz) < KEEP
        b = real_sparse[src2].astype(np.float32)
        b.data *= np.exp(0.2 * rng.standard_normal(b.nnz)).astype(np.float32)
        b.data *= BORROW_WEIGHT * (rng.random(b.nnz) < BORROW)
        z = (a + b).tocsr()
        z.eliminate_zeros()
        z.sort_indices()
        parts.append(z.astype(np.float32))
        e = 0.75 * real_dense[src] + 0.25 * real_dense[src2]
        e += (DENSE_NOISE / np.sqrt(d)) * rng.standard_normal(e.shape).astype(np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        dense[s : s + m] = e
    sparse = sp.vstack(parts, format="csr").astype(np.float32)
    return sparse, dense


def encode_images_and_queries(
    run: LoadedRun,
    store: FeatureStore,
    n_queries: int,
    seed: int,
    *,
    image_topk: int | None,
    text_topk: int | None,
    progress: bool = False,
) -> tuple[sp.csr_matrix, np.ndarray, sp.csr_matrix, np.ndarray]:
    """Every real image of a run's data and ``n_queries`` sampled real captions, encoded.

    The captions are sampled without replacement (with replacement only if there are fewer);
    an inference-free model's sparse queries are the captions' own terms looked up.

    Args:
        run: The trained run.
        store: Its features (all splits).
        n_queries: Caption queries to sample.
        seed: Seed of the sampling.
        image_topk: Terms kept per image.
        text_topk: Terms kept per query.
        progress: Show progress bars.

    Returns:
        ``(image sparse CSR (n_real, V), image dense (n_real, d), query sparse CSR
        (n_queries, V) float32 with sorted indices, query dense (n_queries, d))``.
    """
    from mmsparse.index.encode import encode_vectors

    rng = np.random.default_rng(seed)
    ev = run.config.serving
    img_dense, img_sparse = encode_vectors(
        run.model,
        store.image_feats,
        "image",
        topk=image_topk,
        threshold=ev.threshold,
        progress=progress,
    )
    n_cap = len(store.caption_ids)
    q_rows = rng.choice(n_cap, size=n_queries, replace=n_queries > n_cap)
    q_dense, q_sparse = encode_vectors(
        run.model,
        store.caption_feats[q_rows],
        "text",
        topk=text_topk,
        threshold=ev.threshold,
        progress=progress,
    )
    if run.model.inference_free:
        # Inference-free queries: the captions' own terms looked up (the dense queries stay
        # the dense head's, the faiss baseline).
        from mmsparse.evaluate.retrieval import lookup_split_queries

        q_cfg = dataclasses.replace(ev, text_topk=text_topk)
        q_sparse = lookup_split_queries(run.model, store, q_rows, q_cfg).numpy()
    q_sparse = sp.csr_matrix(q_sparse, dtype=np.float32)
    q_sparse.sort_indices()
    return img_sparse, img_dense, q_sparse, q_dense


def exact_sparse_topk(
    docs: sp.csr_matrix, queries: sp.csr_matrix, k: int = K, threads: int | None = None
) -> np.ndarray:
    """Exact sparse top-``k`` rows (the inverted engine's kernel on in-memory postings)."""
    csc = docs.tocsc()
    csc.sort_indices()
    q = sp.csr_matrix(queries, dtype=np.float32)
    q.sort_indices()
    backend = kernels.resolve_backend("auto")
    indptr = csc.indptr.astype(np.int64)
    doc_ids = csc.indices.astype(np.int32)
    weights = csc.data.astype(np.float32)
    dense = None
    if backend == "numba":
        dense = kernels.dense_columns(indptr, doc_ids, weights, docs.shape[0])
    rows, _ = kernels.search_csr(
        backend,
        indptr,
        doc_ids,
        weights,
        docs.shape[0],
        q.indptr.astype(np.int64),
        q.indices.astype(np.int64),
        q.data.astype(np.float32),
        k,
        threads,
        dense=dense,
    )
    return rows


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    """Mean over queries of ``|found[:k] ∩ truth[:k]| / |truth[:k]|`` (padding ``-1`` ignored)."""
    total, n = 0.0, 0
    for f, t in zip(found, truth):
        t = t[:k][t[:k] >= 0]
        if t.size == 0:
            continue
        total += np.intersect1d(f[:k], t).size / t.size
        n += 1
    return float(total / max(n, 1))


def postings_per_query(docs: sp.csr_matrix, queries: sp.csr_matrix) -> np.ndarray:
    """Postings an exhaustive term-at-a-time engine reads per query (sum of list lengths)."""
    lengths = np.bincount(docs.indices, minlength=docs.shape[1]).astype(np.int64)
    q = sp.csr_matrix(queries)
    rows = np.repeat(np.arange(q.shape[0]), np.diff(q.indptr))
    return np.bincount(rows, weights=lengths[q.indices], minlength=q.shape[0]).astype(np.int64)
