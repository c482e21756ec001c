"""Encoding features of a trained run into serving vectors (dense ndarray + sparse CSR).

Vectors are computed in chunks so that a large collection never needs a dense
``(N, vocab)`` matrix in memory; each chunk is pruned (top-k terms, threshold) exactly as
:func:`mmsparse.sparse.prune` does at evaluation, then converted to CSR.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from mmsparse.model.model import SparseDenseModel
from mmsparse.sparse.ops import prune


@torch.no_grad()
def encode_vectors(
    model: SparseDenseModel,
    feats: np.ndarray,
    modality: str,
    *,
    topk: int | None = None,
    threshold: float = 0.0,
    batch_size: int = 1024,
    progress: bool = False,
) -> tuple[np.ndarray, sp.csr_matrix]:
    """Dense and pruned sparse vectors of ``feats`` (one modality).

    Args:
        model: A trained model (any device; features are moved to it).
        feats: ``(N, d)`` float32 features of images or captions.
        modality: ``"image"`` or ``"text"``.
        topk: Terms kept per vector (``None``: all).
        threshold: Weights at or below it are zeroed.
        batch_size: Rows per forward pass.
        progress: Show a progress bar on stderr.

    Returns:
        ``(dense (N, dense_dim) float32, sparse (N, V) float32 CSR)``.

    Raises:
        ValueError: If ``modality`` is neither ``image`` nor ``text``.
    """
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    encode = model.encode_image if modality == "image" else model.encode_text
    was_training = model.training
    model.eval()
    dense_parts: list[np.ndarray] = []
    sparse_parts: list[sp.csr_matrix] = []
    starts = range(0, feats.shape[0], batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"encoding {modality}s", unit="batch", leave=False)
    try:
        for s in starts:
            out = encode(np.array(feats[s : s + batch_size], dtype=np.float32))  # writable copy
            z = prune(out.sparse.float(), topk=topk, threshold=threshold)
            dense_parts.append(out.dense.float().cpu().numpy())
            sparse_parts.append(sp.csr_matrix(z.cpu().numpy()))
    finally:
        model.train(was_training)
    if not dense_parts:
        return (
            np.zeros((0, model.dense_dim), dtype=np.float32),
            sp.csr_matrix((0, model.vocab_size), dtype=np.float32),
        )
    sparse = sp.vstack(sparse_parts, format="csr").astype(np.float32)
    sparse.sort_indices()
    return np.concatenate(dense_parts).astype(np.float32), sparse
