"""Lexical grounding of the sparse head (an extension for readable terms).

The paper's objective only asks sparse vectors to rank; nothing asks an image's heaviest
terms to be the words people use for it. This term does, in the manner of a bag-of-words
prediction head: over the head's vocabulary, the softmax of the pre-activation logits
``x = V · LayerNorm(U e + c)`` of a vector is pulled towards the uniform distribution over
the content words of its caption (for an image: the caption it is paired with in the batch;
over the epochs, all of its captions)::

    lex(X, M) = - mean_b  sum_v  (M_bv / |M_b|) · log softmax(X_b)_v

where ``M`` is the 0/1 mask of target terms (rows without a target are skipped). Logits,
not ``z = log(1 + relu(x))``, are used so that an inactive target term still gets a
gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lexical_grounding(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``lex(X, M)``: cross-entropy of ``softmax(X)`` against the uniform target words.

    Args:
        logits: ``(B, V)`` pre-activation logits of the sparse head.
        target: ``(B, V)`` 0/1 mask of each row's target terms.

    Returns:
        A 0-d float32 tensor (``0`` when no row has a target).
    """
    target = target.float()
    counts = target.sum(dim=1)  # (B,)
    logp = F.log_softmax(logits.float(), dim=1)
    per_row = -(target * logp).sum(dim=1) / counts.clamp_min(1.0)  # 0 where no target
    # The mean over rows with a target, without a data-dependent branch (no host sync,
    # one graph under torch.compile).
    return per_row.sum() / (counts > 0).sum().clamp_min(1).float()


def lexical_pair(
    img_logits: torch.Tensor, txt_logits: torch.Tensor | None, target: torch.Tensor
) -> torch.Tensor:
    """``(lex(X_img, M) + lex(X_txt, M)) / 2``: the lexical term of matched pairs.

    Args:
        img_logits: ``(B, V)`` logits of the images.
        txt_logits: ``(B, V)`` logits of their captions (row ``i`` describes image ``i``);
            ``None`` for inference-free (lookup) captions, which have no logits: their half
            is 0, so an image's term weighs what it weighs in the full model.
        target: ``(B, V)`` 0/1 content words of each pair's caption.
    """
    lex_txt = lexical_grounding(txt_logits, target) if txt_logits is not None else 0.0
    return (lexical_grounding(img_logits, target) + lex_txt) / 2
