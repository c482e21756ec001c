"""Explaining sparse vectors: their top vocabulary terms, and why a query matches an image.

A trained run's sparse vectors live in the backbone's vocabulary, so each can be read as
weighted words. :func:`explain` encodes one image, one caption or a raw text with a run's
selected (best) model, lists its heaviest terms and, for a (query, image) pair, the terms
whose products ``q_v * d_v`` add up to their sparse score ``q · d``.

Sparse vectors are pruned exactly as in ``mmsparse evaluate`` (the run's ``eval``
settings: ``text_topk``, ``image_topk``, ``threshold``), so the score shown is the one
retrieval uses.

Example:
    >>> out = explain("runs/joint", caption_id="1234")              # doctest: +SKIP
    >>> [t["term"] for t in out["query"]["terms"][:3]]            # doctest: +SKIP
    ['dog', 'grass', 'running']
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmsparse.data.store import FeatureStore
from mmsparse.errors import ConfigError, MMSparseError
from mmsparse.evaluate.retrieval import encode_features
from mmsparse.runs import (
    LoadedRun,
    checkpoint_dir,
    hybrid_weights,
    load_run,
    load_run_data,
    resolve_device,
    run_extraction,
)
from mmsparse.sparse.ops import contributions, top_terms


def explain(
    run_dir: str | Path,
    *,
    image: str | None = None,
    caption_id: str | None = None,
    text: str | None = None,
    with_image: str | None = None,
    k: int = 10,
    data: str | Path | None = None,
    device: str = "cpu",
    bundle: str | Path | None = None,
    text_encoder: Any = None,
    caption: str | None = None,
) -> dict[str, Any]:
    """Top terms of one sparse vector, and the terms behind a (query, image) score.

    Exactly one of ``image``, ``caption_id`` and ``text`` is given.

    Args:
        run_dir: A run directory written by ``mmsparse train`` (its best model is used).
        image: An image id (Karpathy ``imgid``) of the run's data.
        caption_id: A caption id (Karpathy ``sentid``); paired with its own image unless
            ``with_image`` names another.
        text: A raw text query, encoded through the run's extraction backend.
        with_image: An image id to pair the caption or text query with.
        k: How many terms to list.
        data: Another feature directory of the same backbone (default: the run's data).
        bundle: The backbone bundle directory to use instead of the run's (a moved run).
        device: Torch device for the text encoder and the model.
        text_encoder: A text encoder to use for ``text`` instead of loading one from the
            run's extraction description (anything with ``encode(list[str])``).
        caption: Deprecated spelling of ``caption_id`` (a ``DeprecationWarning``).

    Returns:
        ``{"run_dir", "checkpoint", "pruning", "query": {"kind", "id", "text", "nnz",
        "terms": [{"term", "weight"}]}, "pair": None | {"image_id", "filename",
        "sparse_score", "dense_score", "hybrid_score", "shared_terms", "image_nnz",
        "image_terms", "contributions": [{"term", "query_weight", "image_weight",
        "product"}]}}``. Weights are the pruned sparse values; ``sparse_score`` is the
        full dot product (the listed products add up to it when ``k`` covers all shared
        terms); ``dense_score`` is the cosine of the dense vectors (no temperature).

    Raises:
        ConfigError: On a bad combination of arguments.
        DataError: On an unknown image or caption id.
        MMSparseError: If ``text`` cannot be encoded here (no extraction backend).
    """
    if caption is not None:
        warnings.warn(
            "explain(caption=...) is deprecated; use explain(caption_id=...)",
            DeprecationWarning,
            stacklevel=2,
        )
        if caption_id is None:
            caption_id = caption
    given = [n for n, v in (("image", image), ("caption", caption_id), ("text", text)) if v]
    if len(given) != 1:
        raise ConfigError("explain needs exactly one of --image ID, --caption-id ID, --text TEXT")
    if image is not None and with_image is not None:
        raise ConfigError("--with-image pairs a caption or text query with an image; not --image")
    if k < 1:
        raise ConfigError(f"k must be positive, got {k}")
    if text is not None and not text.strip():
        raise ConfigError("--text is empty")
    run = load_run(run_dir, device=resolve_device(device))
    model = run.model.eval()
    cfg = run.config
    vocab = run.vocab
    ev = cfg.serving
    stores: list[FeatureStore] = []

    def the_store() -> FeatureStore:
        if not stores:  # loaded only when an image or caption id is involved
            stores.append(load_run_data(run, data, bundle))
        return stores[0]

    def encode(feats: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray]:
        topk = ev.image_topk if modality == "image" else ev.text_topk
        feats = np.array(feats, dtype=np.float32)  # a writable copy of one row
        with torch.no_grad():
            dense, sparse = encode_features(
                model, feats, modality, topk=topk, threshold=ev.threshold, batch_size=1
            )
        return dense[0].cpu().double().numpy(), sparse[0].cpu().double().numpy()

    query: dict[str, Any]
    pair_image = with_image
    if image is not None:
        store = the_store()
        row = store.image_row(image)
        dense_q, sparse_q = encode(store.image_feats[row : row + 1], "image")
        query = {"kind": "image", "id": str(image), "text": store.image_filenames[row]}
    elif caption_id is not None:
        store = the_store()
        row = store.caption_row(caption_id)
        dense_q, sparse_q = encode(store.caption_feats[row : row + 1], "text")
        query = {"kind": "caption", "id": str(caption_id), "text": store.caption_texts[row]}
        if pair_image is None:
            pair_image = store.image_ids[int(store.caption_image[row])]
    else:
        encoder = text_encoder if text_encoder is not None else _run_text_encoder(run, device)
        feats = np.asarray(encoder.encode([str(text)]), dtype=np.float32)
        if feats.shape != (1, model.d_txt):
            raise MMSparseError(
                f"the text encoder gave features of shape {feats.shape}, but the model expects "
                f"{model.d_txt} values per caption"
            )
        dense_q, sparse_q = encode(feats, "text")
        query = {"kind": "text", "id": None, "text": str(text)}
    query["nnz"] = int(np.count_nonzero(sparse_q))
    query["terms"] = [{"term": t, "weight": w} for t, w in top_terms(sparse_q, vocab, k)]

    pair = None
    if pair_image is not None:
        store = the_store()
        row = store.image_row(pair_image)
        dense_d, sparse_d = encode(store.image_feats[row : row + 1], "image")
        sparse_score = float(sparse_q @ sparse_d)
        dense_score = float(dense_q @ dense_d)
        w1, w2 = hybrid_weights(cfg, model)
        pair = {
            "image_id": str(pair_image),
            "filename": store.image_filenames[row],
            "sparse_score": sparse_score,
            "dense_score": dense_score,
            "hybrid_score": float(w1 * dense_score + w2 * sparse_score),
            "shared_terms": int(np.count_nonzero(sparse_q * sparse_d)),
            "image_nnz": int(np.count_nonzero(sparse_d)),
            "image_terms": [{"term": t, "weight": w} for t, w in top_terms(sparse_d, vocab, k)],
            "contributions": [
                {"term": t, "query_weight": qw, "image_weight": dw, "product": p}
                for t, qw, dw, p in contributions(sparse_q, sparse_d, vocab, k)
            ],
        }
    return {
        "run_dir": str(run.run_dir),
        "checkpoint": str(checkpoint_dir(run.run_dir)),
        "method": cfg.objective.method,
        "pruning": {
            "text_topk": ev.text_topk,
            "image_topk": ev.image_topk,
            "threshold": ev.threshold,
        },
        "vocab_named": bool(vocab.named),
        "query": query,
        "pair": pair,
    }


def _run_text_encoder(run: LoadedRun, device: str) -> Any:
    from mmsparse.extract import load_text_encoder

    extraction = run_extraction(run)
    if extraction is None:
        raise MMSparseError(
            f"{run.run_dir}: cannot encode raw text: the run's features carry no extraction "
            "backend (no 'extraction' in its model.json or data bundle; features made with "
            "'mmsparse extract' record one). Use --caption-id ID instead."
        )
    return load_text_encoder(extraction, device=device)


def format_explain(result: dict[str, Any]) -> str:
    """The result of :func:`explain` as text for people."""
    q = result["query"]
    head = {
        "image": f"image {q['id']} ({q['text']})",
        "caption": f"caption {q['id']}: {q['text']!r}",
        "text": f"text {q['text']!r}",
    }[q["kind"]]
    lines = [f"{head}: top {len(q['terms'])} of {q['nnz']} non-zero terms (term  weight):"]
    lines += [f"  {t['term']:<20} {t['weight']:.4f}" for t in q["terms"]]
    pair = result["pair"]
    if pair is not None:
        lines.append("")
        lines.append(
            f"paired with image {pair['image_id']} ({pair['filename']}): sparse score "
            f"{pair['sparse_score']:.4f} over {pair['shared_terms']} shared terms, dense "
            f"cosine {pair['dense_score']:.4f}, hybrid {pair['hybrid_score']:.4f}"
        )
        listed = sum(c["product"] for c in pair["contributions"])
        lines.append(
            f"top {len(pair['contributions'])} of {pair['shared_terms']} shared terms, summing "
            f"to {listed:.4f} of the sparse score (term  query x image = product):"
        )
        lines += [
            f"  {c['term']:<20} {c['query_weight']:.4f} x {c['image_weight']:.4f} = "
            f"{c['product']:.4f}"
            for c in pair["contributions"]
        ]
        if not pair["contributions"]:
            lines.append("  (no shared terms: sparse score 0)")
        lines.append(f"image's top terms: {', '.join(t['term'] for t in pair['image_terms'])}")
    if not result["vocab_named"]:
        lines.append("(terms are named by index: the run was trained without a vocabulary)")
    return "\n".join(lines)
