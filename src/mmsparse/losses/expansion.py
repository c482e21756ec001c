"""Probabilistic expansion control (from D2S).

During training, with a probability that decays linearly over training, a caption's sparse
vector is masked to the vocabulary ids of its own tokens (no expansion terms). The caption
token ids live on the device as a padded ``(n_captions, max_len)`` matrix, so masking a
batch is one gather and one scatter.
"""

from __future__ import annotations

import numpy as np
import torch


def padded_token_ids(indptr: np.ndarray, indices: np.ndarray, pad: int) -> torch.Tensor:
    """CSR token ids to a ``(rows, max_len)`` int64 tensor padded with ``pad``."""
    lengths = np.diff(indptr)
    width = max(int(lengths.max(initial=0)), 1)
    out = np.full((lengths.size, width), pad, dtype=np.int64)
    cols = np.arange(indices.size) - np.repeat(indptr[:-1], lengths)
    out[np.repeat(np.arange(lengths.size), lengths), cols] = indices
    return torch.from_numpy(out)


def token_mask(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``(B, L)`` padded ids (pad = ``vocab_size``) to a ``(B, vocab_size)`` 0/1 mask."""
    mask = torch.zeros(token_ids.shape[0], vocab_size + 1, device=token_ids.device)
    mask.scatter_(1, token_ids, 1.0)
    return mask[:, :vocab_size]


class ExpansionControl:
    """Masks caption sparse vectors to their own tokens with a decaying probability.

    Args:
        token_ids: ``(n_captions, max_len)`` padded vocabulary ids of every caption
            (pad = ``vocab_size``), on the training device.
        vocab_size: Number of sparse dimensions.
        total_steps: All training steps.
        p0: Masking probability at step 0.
        decay_frac: Fraction of training over which the probability reaches 0.
    """

    def __init__(
        self,
        token_ids: torch.Tensor,
        vocab_size: int,
        total_steps: int,
        p0: float = 1.0,
        decay_frac: float = 1.0,
    ) -> None:
        self.token_ids = token_ids
        self.vocab_size = vocab_size
        self.horizon = max(1.0, decay_frac * total_steps)
        self.p0 = p0

    def probability(self, step: int) -> float:
        """Masking probability at optimisation step ``step``."""
        return self.p0 * max(0.0, 1.0 - step / self.horizon)

    def __call__(
        self,
        txt_sparse: torch.Tensor,
        caption_rows: torch.Tensor,
        step: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mask a batch ``(B, V)`` of caption vectors, given their caption rows ``(B,)``."""
        p = self.probability(step)
        if p <= 0.0:
            return txt_sparse
        u = torch.rand(txt_sparse.shape[0], device=txt_sparse.device, generator=generator)
        masked = (u < p).unsqueeze(1)  # (B, 1)
        keep = token_mask(self.token_ids[caption_rows], self.vocab_size).to(txt_sparse.dtype)
        return torch.where(masked, txt_sparse * keep, txt_sparse)
