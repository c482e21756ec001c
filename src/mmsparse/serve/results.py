"""The JSON of a search answer: hits, what each score is made of, and the query's terms.

Every hit says what its score is made of (``parts``) and what share of it the listed terms
explain (``explained``):

- ``sparse``: the score is the sparse score ``S_s = q · d``, the sum of the shared terms'
  contributions: ``parts = {"sparse": S_s}``, ``explained = 1``;
- ``dense``: the score is the dense score ``S_d`` (no words): ``parts = {"dense": S_d}``,
  ``explained = 0`` (the shared terms are listed, but they are not part of the score);
- ``hybrid``: ``score = w1 · S_d + w2 · S_s``: ``parts = {"dense": w1 · S_d, "sparse":
  w2 · S_s}``, and ``explained = |w2 · S_s| / (|w1 · S_d| + |w2 · S_s|)``, the share of
  the score's magnitude that the words carry (a dense part can be negative, so a share of
  the total itself could exceed 1).

The query's terms are all listed (``n_query_terms`` counts them), each with its weight as
searched and as encoded (``original_weight``; an edited query differs), whether it is a
word piece of the query text itself (``in_query``; the others are the model's expansions),
a word piece (``##...``), and a known word of the run's training captions (``known``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.index.search import Searcher, SearchResult

MISSING_LISTED = 12  # query terms an image lacks, listed per hit (all are counted)


def _finite(x: float | None) -> float | None:
    if x is None:
        return None
    return float(x) if math.isfinite(x) else 0.0


def known_ids(searcher: Searcher) -> set[int]:
    """Ids of the run's known words (the calibration's, else the head's whole words)."""
    if searcher.calibration is not None:
        return searcher.calibration.known_set
    known = getattr(searcher, "_known", None)
    if known is None and searcher.vocab is not None:
        from mmsparse.index.verdict import vocabulary_word_ids

        term_ids = getattr(searcher.run.model, "term_ids", None)
        ids = None if term_ids is None else term_ids.cpu().numpy()
        known = set(vocabulary_word_ids(searcher.vocab, ids).tolist())
        searcher._known = known
    return known or set()


def assess(searcher: Searcher, text: str, result: SearchResult, words_only: bool = False) -> Any:
    """The verdict on a text query.

    ``words_only`` skips the calibrated score test: an edited query, or other hybrid
    weights, scores unlike the calibration's real queries.
    """
    if not words_only:
        return searcher.assess(text, result)
    from mmsparse.index.verdict import assess as assess_words

    top = result.hits[0].score if result.hits else None
    return assess_words(text, top, result.mode, searcher.vocab, None, known_ids(searcher))


def breakdown(
    mode: str, score: float, sparse: float | None, dense: float | None, weights: Any
) -> tuple[dict[str, float], float | None]:
    """``(parts, explained)`` of one hit (see the module docstring)."""
    s = 0.0 if sparse is None else float(sparse)
    if mode == "sparse":
        return {"sparse": s}, 1.0 if s else 0.0
    d = 0.0 if dense is None else float(dense)
    if mode == "dense":
        return {"dense": d}, 0.0
    w1, w2 = weights
    parts = {"dense": w1 * d, "sparse": w2 * s}
    mag = abs(parts["dense"]) + abs(parts["sparse"])
    return parts, (abs(parts["sparse"]) / mag) if mag > 0 else 0.0


def query_terms_json(
    searcher: Searcher, searched: sp.csr_matrix, original: sp.csr_matrix, text: str | None
) -> list[dict[str, Any]]:
    """Every term of the query as encoded, heaviest first, with its searched weight."""
    vocab = searcher.vocab
    orig = sp.csr_matrix(original)
    now = dict(zip(sp.csr_matrix(searched).indices.tolist(), searched.data.tolist()))
    typed: set[int] = set()
    if text and vocab is not None and getattr(vocab, "named", False):
        typed = set(vocab.encode(text))
    known = known_ids(searcher) if vocab is not None else set()
    order = np.lexsort((orig.indices, -orig.data))
    out = []
    for j in order.tolist():
        t = int(orig.indices[j])
        name = vocab.term(t) if vocab is not None else f"#{t}"
        out.append(
            {
                "term": name,
                "weight": _finite(float(now.get(t, 0.0))),
                "original_weight": _finite(float(orig.data[j])),
                "in_query": t in typed,
                "word_piece": name.startswith("##"),
                "known": t in known,
            }
        )
    return out


def result_json(
    svc: Any,
    result: SearchResult,
    explain: bool,
    *,
    searched: sp.csr_matrix,
    original: sp.csr_matrix,
    text: str | None,
) -> dict[str, Any]:
    """The JSON-ready answer of one search (hits already cut to the page asked for)."""
    mode = result.mode
    hits = []
    for hit in result.hits:
        item: dict[str, Any] = {
            "rank": hit.rank,
            "image_id": hit.image_id,
            "filename": hit.filename,
            "url": svc._image_url(hit.filename),
            "score": _finite(hit.score),
        }
        if explain:
            terms = [
                {
                    "term": t,
                    "query_weight": _finite(qw),
                    "image_weight": _finite(dw),
                    "contribution": _finite(c),
                }
                for t, qw, dw, c in hit.terms or []
            ]
            parts, explained = breakdown(
                mode, hit.score, hit.sparse_score, hit.dense_score, result.weights
            )
            item["terms"] = terms
            item["shared_terms"] = hit.shared_terms
            item["sparse_score"] = _finite(float(sum(t["contribution"] for t in terms)))
            item["dense_score"] = _finite(hit.dense_score)
            item["parts"] = {key: _finite(v) for key, v in parts.items()}
            item["explained"] = _finite(explained)
            item["missing_terms"] = [
                {"term": t, "query_weight": _finite(w)}
                for t, w in (hit.missing_terms or [])[:MISSING_LISTED]
            ]
            item["n_missing"] = hit.n_missing
        hits.append(item)
    m = svc.manifest
    weights = result.weights
    formula = {
        "sparse": "sparse score S_s = q · d (the sum of the shared terms' contributions)",
        "dense": "dense score S_d = q_dense · d_dense (not made of words)",
        "hybrid": "w1 · S_d + w2 · S_s",
    }[mode]
    return {
        "k": result.k,
        "mode": mode,
        "engine": result.engine,
        "score": {
            "formula": formula,
            "w1": None if weights is None else _finite(weights[0]),
            "w2": None if weights is None else _finite(weights[1]),
            "default_w1": _finite(m.w1),
            "default_w2": _finite(m.w2),
        },
        "query_terms": query_terms_json(svc.searcher, searched, original, text),
        "n_query_terms": int(sp.csr_matrix(original).nnz),
        "hits": hits,
        "notes": list(result.notes),
    }
