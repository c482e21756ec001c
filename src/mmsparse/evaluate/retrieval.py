"""Text-to-image and image-to-text retrieval metrics for dense, sparse and hybrid scores.

The standard protocol: in text-to-image (t2i) each caption is a query and its one image is
relevant; in image-to-text (i2t) each image is a query and all its captions are relevant
(R@K hits if any is in the top K). Scores: ``dense = E_txt E_img^T`` (no temperature),
``sparse = Z_txt Z_img^T``, ``hybrid = w1 · dense + w2 · sparse``.

Everything is batched matrix work on the device. The rank of a relevant document is counted
exactly, ``1 + #(score > gold) + #(score == gold and row < gold row)``, so the tie rule is
stated and deterministic: **equal scores are ordered by the document's row in the split
(earlier first)**. TREC run files written here follow the same order, so metrics recomputed
from them equal the ones reported. All metrics are percentages.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmsparse.config import EvalConfig
from mmsparse.data.store import FeatureStore, Split
from mmsparse.errors import NonFiniteError
from mmsparse.model.model import SparseDenseModel
from mmsparse.sparse.ops import SparsityStats, flops, prune

SCORE_TYPES = ("dense", "sparse", "hybrid")
DIRECTIONS = ("t2i", "i2t")
KS = (1, 5, 10)


@dataclass
class EncodedSplit:
    """Dense and sparse vectors of every image and caption of a split.

    Attributes:
        image_dense: ``(n_img, D)``.
        image_sparse: ``(n_img, V)`` (pruned as asked).
        text_dense: ``(n_cap, D)``.
        text_sparse: ``(n_cap, V)`` (pruned as asked).
        caption_to_image: ``(n_cap,)`` image position of every caption.
        image_ids: Image ids in row order.
        caption_ids: Caption ids in row order.
    """

    image_dense: torch.Tensor
    image_sparse: torch.Tensor
    text_dense: torch.Tensor
    text_sparse: torch.Tensor
    caption_to_image: torch.Tensor
    image_ids: list[str]
    caption_ids: list[str]


@dataclass
class EvalResult:
    """Metrics of one evaluation, with per-query ranks for significance tests.

    Attributes:
        metrics: ``{"t2i": {"dense": {"R@1": ...}, ...}, "i2t": {...}}`` in percent.
        sparsity: FLOPs and mean non-zeros per caption (query) and per image (document).
        ranks: ``ranks[direction][score_type]``: 1-based rank of the first relevant
            document for every query.
        info: Split name, sizes, weights, pruning options, timing.
        readability: The readability measure of the sparse vectors
            (:func:`mmsparse.evaluate.readability.readability`), when computed.
    """

    metrics: dict[str, dict[str, dict[str, float]]]
    sparsity: dict[str, float | int | None]
    ranks: dict[str, dict[str, np.ndarray]] = field(repr=False)
    info: dict[str, Any]
    readability: dict[str, float | int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready result (without per-query ranks)."""
        out = {**self.info, **self.metrics, "sparsity": self.sparsity}
        if self.readability is not None:
            out["readability"] = self.readability
        return out

    def get(self, key: str) -> float:
        """A metric by path, e.g. ``"t2i/sparse/R@1"``."""
        direction, score_type, name = key.split("/")
        return self.metrics[direction][score_type][name]


def metrics_from_ranks(
    ranks: np.ndarray | torch.Tensor, ks: Sequence[int] = KS
) -> dict[str, float]:
    """R@K and MRR@10 (percent) from 1-based ranks of the first relevant document."""
    r = ranks.cpu().numpy() if isinstance(ranks, torch.Tensor) else np.asarray(ranks)
    r = r.astype(np.float64)
    out = {f"R@{k}": float(100.0 * np.mean(r <= k)) for k in ks}
    out["MRR@10"] = float(100.0 * np.mean(np.where(r <= 10, 1.0 / r, 0.0)))
    return out


@torch.no_grad()
def encode_features(
    model: SparseDenseModel,
    feats: np.ndarray | torch.Tensor,
    modality: str,
    *,
    batch_size: int = 1024,
    topk: int | None = None,
    threshold: float = 0.0,
    device: str | torch.device | None = None,
    with_sparse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode features of one modality in batches.

    Args:
        model: The model (in eval mode for the call).
        feats: ``(N, d)`` features.
        modality: ``"image"`` or ``"text"``.
        batch_size: Rows per forward pass.
        topk: Keep the top-k sparse terms per row.
        threshold: Zero sparse weights at or below it.
        device: Device to encode on (default: the model's).
        with_sparse: ``False`` skips the sparse head (the sparse result is ``(N, 0)``).

    Returns:
        ``(dense (N, D), sparse (N, V))`` float32 tensors on ``device``.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    encode = model.encode_image if modality == "image" else model.encode_text
    was_training = model.training
    model.eval()
    dense, sparse = [], []
    for start in range(0, len(feats), batch_size):
        chunk = feats[start : start + batch_size]
        h = torch.as_tensor(
            np.asarray(chunk) if not isinstance(chunk, torch.Tensor) else chunk, dtype=torch.float32
        ).to(device)
        if with_sparse:
            out = encode(h)
            dense.append(out.dense.float())
            sparse.append(prune(out.sparse.float(), topk, threshold))
        else:
            proj = model.vision_proj if modality == "image" else model.text_proj
            e = torch.nn.functional.normalize(proj(h.to(proj.weight.dtype)), dim=-1).float()
            dense.append(e)
            sparse.append(e.new_zeros((e.shape[0], 0)))
    model.train(was_training)
    return torch.cat(dense), torch.cat(sparse)


def encode_split(
    model: SparseDenseModel,
    store: FeatureStore,
    split: Split,
    eval_cfg: EvalConfig | None = None,
    device: str | torch.device | None = None,
    image_feats: torch.Tensor | None = None,
    caption_feats: torch.Tensor | None = None,
    with_sparse: bool = True,
) -> EncodedSplit:
    """Encode every image and caption of ``split``.

    ``image_feats`` / ``caption_feats`` may pass the store's features already resident on
    the device (the trainer does), to avoid copying them again every epoch. With
    ``with_sparse=False`` only dense vectors are computed (dense-only evaluation). A model
    with inference-free queries (``model.query_encoder=lookup``) gets its caption sparse
    vectors from the captions' own terms (:func:`lookup_split_queries`), not from the
    caption features.
    """
    eval_cfg = eval_cfg or EvalConfig()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    img_src = (
        image_feats[torch.as_tensor(split.image_rows, device=image_feats.device)]
        if image_feats is not None
        else store.image_feats[split.image_rows]
    )
    cap_src = (
        caption_feats[torch.as_tensor(split.caption_rows, device=caption_feats.device)]
        if caption_feats is not None
        else store.caption_feats[split.caption_rows]
    )
    img_dense, img_sparse = encode_features(
        model,
        img_src,
        "image",
        batch_size=eval_cfg.batch_size,
        topk=eval_cfg.image_topk,
        threshold=eval_cfg.threshold,
        device=device,
        with_sparse=with_sparse,
    )
    txt_dense, txt_sparse = encode_features(
        model,
        cap_src,
        "text",
        batch_size=eval_cfg.batch_size,
        topk=eval_cfg.text_topk,
        threshold=eval_cfg.threshold,
        device=device,
        with_sparse=with_sparse,
    )
    if with_sparse and model.inference_free:
        txt_sparse = lookup_split_queries(model, store, split.caption_rows, eval_cfg, device)
    return EncodedSplit(
        image_dense=img_dense,
        image_sparse=img_sparse,
        text_dense=txt_dense,
        text_sparse=txt_sparse,
        caption_to_image=torch.as_tensor(split.caption_to_image, device=device),
        image_ids=[store.image_ids[i] for i in split.image_rows],
        caption_ids=[store.caption_ids[i] for i in split.caption_rows],
    )


@torch.no_grad()
def lookup_split_queries(
    model: SparseDenseModel,
    store: FeatureStore,
    caption_rows: np.ndarray,
    eval_cfg: EvalConfig | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Inference-free sparse vectors ``(n, V)`` of captions of the store, from their terms.

    The captions are tokenised with the store's vocabulary (the Karpathy ``tokens``, else
    the raw text) and looked up in the model's per-term weights, then pruned as
    ``eval_cfg`` says.
    """
    eval_cfg = eval_cfg or EvalConfig()
    indptr, indices = store.caption_token_ids(store.vocabulary(model.vocab_size))
    terms = [indices[indptr[r] : indptr[r + 1]] for r in np.asarray(caption_rows)]
    q = model.encode_query_terms(terms)
    if device is not None:
        q = q.to(device)
    return prune(q, eval_cfg.text_topk, eval_cfg.threshold)


def _base_scores(
    enc: EncodedSplit,
    rows: slice,
    score_types: str | Sequence[str],
    text_sparse: torch.Tensor,
    image_sparse: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The dense and/or sparse score chunks ``(C, n_img)`` that ``score_types`` need."""
    types = (score_types,) if isinstance(score_types, str) else tuple(score_types)
    base = {}
    if "dense" in types or "hybrid" in types:
        base["dense"] = enc.text_dense[rows] @ enc.image_dense.T
    if "sparse" in types or "hybrid" in types:
        base["sparse"] = text_sparse[rows] @ image_sparse.T
    return base


def _combine(base: dict[str, torch.Tensor], score_type: str, w1: float, w2: float) -> torch.Tensor:
    """One score type from the base chunks (``hybrid = w1 · dense + w2 · sparse``)."""
    if score_type == "hybrid":
        return w1 * base["dense"] + w2 * base["sparse"]
    return base[score_type]


def shared_terms(
    text_sparse: torch.Tensor, image_sparse: torch.Tensor, max_fraction: float = 0.9
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop vocabulary columns that are zero in every caption or in every image.

    Such a column adds exactly ``0`` to every sparse score, so the scores are the same sums
    (the matrix products get shorter). Kept as is when more than ``max_fraction`` of the
    columns are shared.

    Returns:
        ``(text_sparse, image_sparse)`` restricted to the shared columns.
    """
    active = (text_sparse != 0).any(dim=0) & (image_sparse != 0).any(dim=0)
    cols = torch.nonzero(active).squeeze(1)
    if cols.numel() > max_fraction * active.numel():
        return text_sparse, image_sparse
    return text_sparse.index_select(1, cols), image_sparse.index_select(1, cols)


def _cache_budget(device: torch.device) -> int:
    """Bytes of score chunks :func:`rank_split` may keep between its two passes."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.4 * free)
    return 2 * 1024**3


def _gold_matrix(caption_to_image: torch.Tensor, n_images: int) -> torch.Tensor:
    """``(n_img, m)`` caption positions of every image (ascending), padded with -1."""
    order = torch.argsort(caption_to_image, stable=True)
    counts = torch.bincount(caption_to_image, minlength=n_images)
    m = int(counts.max().item())
    starts = torch.cumsum(counts, 0) - counts
    gold = torch.full((n_images, m), -1, dtype=torch.long, device=caption_to_image.device)
    sorted_img = caption_to_image[order]
    slot = torch.arange(order.numel(), device=order.device) - starts[sorted_img]
    gold[sorted_img, slot] = order
    return gold


def _best_gold(
    gold: torch.Tensor, gold_score: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: the best score of its captions, the first caption reaching it, any caption.

    The image-to-text rank of an image is the rank of that caption, because every other
    relevant caption scores lower or equally and comes later: ``1 + #(score > best) +
    #(score == best and row < that caption's row)``.

    Returns:
        ``(best (n_img,), best caption position (n_img,), has_caption (n_img,) bool)``.
    """
    valid = gold >= 0
    gs = torch.where(
        valid,
        gold_score[gold.clamp(min=0)],
        torch.full(gold.shape, float("-inf"), dtype=gold_score.dtype, device=gold.device),
    )
    best = gs.max(dim=1).values
    first = torch.argmax(((gs == best[:, None]) & valid).to(torch.uint8), dim=1)
    return best, gold.gather(1, first[:, None])[:, 0], valid.any(dim=1)


def _stable_topk(S: torch.Tensor, k: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` per row ordered by (score desc, column asc); columns shifted by ``offset``."""
    k = min(k, S.shape[1])
    values, idx = torch.sort(S, dim=1, descending=True, stable=True)
    return values[:, :k], idx[:, :k] + offset


def _merge_topk(
    va: torch.Tensor, ia: torch.Tensor, vb: torch.Tensor, ib: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two ranked lists per row, keeping the (score desc, index asc) order."""
    v = torch.cat([va, vb], dim=1)
    i = torch.cat([ia, ib], dim=1)
    by_index = torch.argsort(i, dim=1, stable=True)
    v, i = v.gather(1, by_index), i.gather(1, by_index)
    by_score = torch.argsort(v, dim=1, descending=True, stable=True)
    return v.gather(1, by_score)[:, :k], i.gather(1, by_score)[:, :k]


@torch.no_grad()
def rank_split(
    enc: EncodedSplit,
    *,
    w1: float,
    w2: float,
    batch_size: int = 1024,
    score_types: Sequence[str] = SCORE_TYPES,
    trec_depth: int | None = None,
    cache_bytes: int | None = None,
) -> tuple[
    dict[str, dict[str, torch.Tensor]], dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]
]:
    """Exact ranks of the relevant documents, in both directions, for each score type.

    All work is batched on the device of ``enc``. Captions are scored in chunks of
    ``batch_size`` rows against all images; each dense and sparse chunk is computed once
    and serves every score type (``hybrid`` is combined from them) and, when the chunks fit
    in ``cache_bytes``, both directions (otherwise the second pass recomputes them, with
    the same result). Sparse products skip vocabulary columns that are zero on one side
    (:func:`shared_terms`).

    Args:
        enc: Encoded split.
        w1: Dense weight of the hybrid score.
        w2: Sparse weight of the hybrid score.
        batch_size: Captions per score chunk.
        score_types: Subset of ``dense``, ``sparse``, ``hybrid``.
        trec_depth: Also return the top ``trec_depth`` documents of every query.
        cache_bytes: Memory for keeping score chunks between the passes (default: 40% of
            free GPU memory on CUDA, 2 GiB on CPU; ``0``: always recompute).

    Returns:
        ``(ranks, runs)``: ``ranks[direction][type]`` is a ``(n_queries,)`` tensor of 1-based
        ranks; ``runs[direction][type]`` is ``(scores, doc positions)`` of shape
        ``(n_queries, depth)`` when ``trec_depth`` is set, else empty.

    Raises:
        NonFiniteError: If a query's score against its relevant document is not finite.
    """
    n_cap, n_img = enc.text_dense.shape[0], enc.image_dense.shape[0]
    device = enc.text_dense.device
    c2i = enc.caption_to_image
    img_pos = torch.arange(n_img, device=device)
    gold = _gold_matrix(c2i, n_img)  # (n_img, m)
    score_types = tuple(score_types)
    text_sparse, image_sparse = enc.text_sparse, enc.image_sparse
    if "sparse" in score_types or "hybrid" in score_types:
        text_sparse, image_sparse = shared_terms(text_sparse, image_sparse)
    ranks: dict[str, dict[str, torch.Tensor]] = {"t2i": {}, "i2t": {}}
    runs: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {"t2i": {}, "i2t": {}}
    chunks = [slice(s, min(s + batch_size, n_cap)) for s in range(0, n_cap, batch_size)]
    n_base = int("dense" in score_types or "hybrid" in score_types) + int(
        "sparse" in score_types or "hybrid" in score_types
    )
    budget = _cache_budget(device) if cache_bytes is None else cache_bytes
    keep = n_base * n_cap * n_img * enc.text_dense.element_size() <= budget
    cached: list[dict[str, torch.Tensor]] = []

    # Pass 1: text-to-image ranks; the gold scores double as the i2t gold scores.
    gold_score = {st: torch.empty(n_cap, device=device) for st in score_types}
    for st in score_types:
        ranks["t2i"][st] = torch.empty(n_cap, dtype=torch.long, device=device)
    t2i_lists: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {st: [] for st in score_types}
    for rows in chunks:
        base = _base_scores(enc, rows, score_types, text_sparse, image_sparse)
        g = c2i[rows]
        before = img_pos[None, :] < g[:, None]  # (C, n_img)
        for st in score_types:
            S = _combine(base, st, w1, w2)  # (C, n_img)
            gs = S.gather(1, g[:, None])  # (C, 1)
            ranks["t2i"][st][rows] = 1 + (S > gs).sum(1) + ((S == gs) & before).sum(1)
            gold_score[st][rows] = gs[:, 0]
            if trec_depth:
                t2i_lists[st].append(_stable_topk(S, trec_depth))
        if keep:
            cached.append(base)
    _check_finite(gold_score, n_cap)
    if trec_depth:
        for st in score_types:
            runs["t2i"][st] = (
                torch.cat([v for v, _ in t2i_lists[st]]),
                torch.cat([i for _, i in t2i_lists[st]]),
            )

    # Pass 2: image-to-text counts over the same score chunks, transposed.
    best = {st: _best_gold(gold, gold_score[st]) for st in score_types}
    count = {st: torch.zeros(n_img, dtype=torch.long, device=device) for st in score_types}
    tops: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {st: None for st in score_types}
    for c, rows in enumerate(chunks):
        base = (
            cached[c] if keep else _base_scores(enc, rows, score_types, text_sparse, image_sparse)
        )
        cap_pos = torch.arange(rows.start, rows.stop, device=device)
        for st in score_types:
            ST = _combine(base, st, w1, w2).T  # (n_img, C)
            value, first, _ = best[st]
            count[st] += (ST > value[:, None]).sum(1)
            count[st] += ((ST == value[:, None]) & (cap_pos[None, :] < first[:, None])).sum(1)
            if trec_depth:
                v, i = _stable_topk(ST, trec_depth, offset=rows.start)
                top = tops[st]
                tops[st] = (v, i) if top is None else _merge_topk(*top, v, i, trec_depth)
        if keep:
            cached[c] = {}
    for st in score_types:
        has = best[st][2]
        ranks["i2t"][st] = torch.where(has, count[st] + 1, torch.full_like(count[st], n_cap + 1))
        if trec_depth:
            runs["i2t"][st] = tops[st]  # type: ignore[assignment]
    return ranks, runs


def _check_finite(gold_score: dict[str, torch.Tensor], n_cap: int) -> None:
    """Refuse non-finite scores (one read of the device for all score types).

    A NaN score compares false with everything, so a query whose relevant score is NaN
    would count nothing ahead of it and rank first: a diverged model would score 100.

    Raises:
        NonFiniteError: Naming the score type and how many captions it hits.
    """
    types = list(gold_score)
    counts = torch.stack([(~torch.isfinite(gold_score[st])).sum() for st in types]).tolist()
    bad = [f"{st} for {n} of {n_cap} captions" for st, n in zip(types, counts) if n]
    if bad:
        raise NonFiniteError(
            f"scores are not finite (NaN or inf): {'; '.join(bad)}; the model's weights are "
            "not finite (a diverged training run?), so its ranks would mean nothing"
        )


def sparsity_stats(enc: EncodedSplit) -> dict[str, float]:
    """FLOPs and mean non-zeros of captions (queries) and images (documents)."""
    vocab = enc.text_sparse.shape[1]
    q, d = SparsityStats(vocab), SparsityStats(vocab)
    for s in range(0, enc.text_sparse.shape[0], 4096):
        q.update(enc.text_sparse[s : s + 4096])
    for s in range(0, enc.image_sparse.shape[0], 4096):
        d.update(enc.image_sparse[s : s + 4096])
    return {"flops": flops(q, d), "text_nnz": q.mean_nnz, "image_nnz": d.mean_nnz}


def evaluate_encoded(
    enc: EncodedSplit,
    *,
    w1: float,
    w2: float,
    eval_cfg: EvalConfig | None = None,
    split_name: str = "",
    trec_dir: str | Path | None = None,
    run_tag: str = "mmsparse",
    score_types: Sequence[str] = SCORE_TYPES,
) -> EvalResult:
    """Metrics (and optionally TREC run files) of an encoded split.

    Args:
        enc: Vectors of the split.
        w1: Dense weight of the hybrid score.
        w2: Sparse weight of the hybrid score.
        eval_cfg: Batch size, TREC depth and the pruning options to record.
        split_name: Name recorded in the result.
        trec_dir: If set, write ``{t2i,i2t}.{dense,sparse,hybrid}.trec`` and
            ``{t2i,i2t}.qrels`` there.
        run_tag: Last column of the TREC run files.
        score_types: Score types to evaluate.

    Returns:
        The :class:`EvalResult`.

    Raises:
        NonFiniteError: If a score is NaN or infinite (a diverged model), naming the split.
    """
    eval_cfg = eval_cfg or EvalConfig()
    t0 = time.perf_counter()
    try:
        ranks, runs = rank_split(
            enc,
            w1=w1,
            w2=w2,
            batch_size=eval_cfg.batch_size,
            score_types=score_types,
            trec_depth=eval_cfg.trec_depth if trec_dir else None,
        )
    except NonFiniteError as exc:
        raise NonFiniteError(f"{split_name or 'evaluation'} split: {exc}") from None
    if enc.text_dense.is_cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    np_ranks = {d: {st: r.cpu().numpy() for st, r in ranks[d].items()} for d in DIRECTIONS}
    metrics = {
        d: {st: metrics_from_ranks(np_ranks[d][st]) for st in score_types} for d in DIRECTIONS
    }
    sparsity: dict[str, float | int | None] = {}
    if "sparse" in score_types or "hybrid" in score_types:
        sparsity.update(sparsity_stats(enc))
        sparsity.update(
            text_topk=eval_cfg.text_topk,
            image_topk=eval_cfg.image_topk,
            threshold=eval_cfg.threshold,
        )
    info = {
        "split": split_name,
        "n_images": int(enc.image_dense.shape[0]),
        "n_captions": int(enc.text_dense.shape[0]),
        "w1": w1,
        "w2": w2,
        "rank_seconds": round(elapsed, 4),
    }
    if trec_dir:
        from mmsparse.evaluate.trec import write_qrels, write_run

        trec_dir = Path(trec_dir)
        write_qrels(
            trec_dir / "t2i.qrels",
            {
                q: [enc.image_ids[int(i)]]
                for q, i in zip(enc.caption_ids, enc.caption_to_image.tolist())
            },
        )
        i2t_qrels: dict[str, list[str]] = {i: [] for i in enc.image_ids}
        for q, i in zip(enc.caption_ids, enc.caption_to_image.tolist()):
            i2t_qrels[enc.image_ids[int(i)]].append(q)
        write_qrels(trec_dir / "i2t.qrels", i2t_qrels)
        for direction in DIRECTIONS:
            qids, dids = (
                (enc.caption_ids, enc.image_ids)
                if direction == "t2i"
                else (enc.image_ids, enc.caption_ids)
            )
            for st in score_types:
                values, positions = runs[direction][st]
                write_run(
                    trec_dir / f"{direction}.{st}.trec",
                    qids,
                    dids,
                    values.cpu().numpy(),
                    positions.cpu().numpy(),
                    f"{run_tag}-{st}",
                )
    return EvalResult(metrics=metrics, sparsity=sparsity, ranks=np_ranks, info=info)


def evaluate_model(
    model: SparseDenseModel,
    store: FeatureStore,
    split: str | Split,
    *,
    w1: float,
    w2: float,
    eval_cfg: EvalConfig | None = None,
    device: str | torch.device | None = None,
    trec_dir: str | Path | None = None,
    run_tag: str = "mmsparse",
    score_types: Sequence[str] = SCORE_TYPES,
    readability_k: int | None = 10,
) -> EvalResult:
    """Encode a split with ``model`` and evaluate it (see :func:`evaluate_encoded`).

    Args:
        model: The trained model.
        store: Features of the split.
        split: Split name (e.g. ``"val"``) or a :class:`Split`.
        w1: Dense weight of the hybrid score.
        w2: Sparse weight of the hybrid score.
        eval_cfg: Pruning, batch size and TREC depth.
        device: Device for encoding and scoring (default: the model's).
        trec_dir: Directory for TREC run files and qrels.
        run_tag: Tag of the TREC runs.
        score_types: Score types to evaluate (``("dense",)`` skips the sparse head).
        readability_k: Heaviest terms examined by the readability measure
            (:mod:`mmsparse.evaluate.readability`); ``None`` skips it. It needs a named
            vocabulary (a backbone bundle) and the captions' texts.

    Returns:
        The :class:`EvalResult`.
    """
    sp = store.split(split) if isinstance(split, str) else split
    t0 = time.perf_counter()
    with_sparse = "sparse" in score_types or "hybrid" in score_types
    enc = encode_split(model, store, sp, eval_cfg, device, with_sparse=with_sparse)
    result = evaluate_encoded(
        enc,
        w1=w1,
        w2=w2,
        eval_cfg=eval_cfg,
        split_name=sp.name,
        trec_dir=trec_dir,
        run_tag=run_tag,
        score_types=score_types,
    )
    if with_sparse and readability_k:
        vocab = store.vocabulary(enc.text_sparse.shape[1])
        if vocab.named:
            from mmsparse.evaluate.readability import readability

            indptr, indices = store.caption_token_ids(vocab)
            rows = np.asarray(sp.caption_rows, dtype=np.int64)
            lengths = indptr[rows + 1] - indptr[rows]
            sub_indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            sub_indices = (
                np.concatenate([indices[indptr[r] : indptr[r + 1]] for r in rows])
                if rows.size
                else np.zeros(0, dtype=np.int64)
            )
            result.readability = readability(
                enc.image_sparse,
                enc.text_sparse,
                enc.caption_to_image,
                sub_indptr,
                sub_indices,
                vocab,
                k=readability_k,
            )
    result.info["seconds"] = round(time.perf_counter() - t0, 4)
    return result
