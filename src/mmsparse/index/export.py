"""Exports of a run's image vectors for engines mmsparse does not drive itself.

``anserini`` — a JsonVectorCollection for Lucene impact search with Anserini::

    OUT/collection/part-00000.jsonl   {"id": image id, "contents": file name,
                                       "vector": {term: integer impact}}
    OUT/queries.tsv                   caption id <TAB> query terms, each repeated by its
                                      integer weight (Anserini's pre-tokenised impact queries)
    OUT/export.json                   what was exported, the scales, commands to run

Impacts are the image weights quantised with :func:`mmsparse.index.quantize.quantize`
(``uint8`` by default: ``round(w / scale)``, ``scale = max(w) / 255``); a query's weights
become ``round(50 · w / max_w)`` repetitions of their term (a per-query factor, which does
not change that query's ranking).

``opensearch`` / ``elasticsearch`` — bulk NDJSON and the index body to create first::

    OUT/mapping.json      settings + mappings: ``sparse`` (OpenSearch ``rank_features``,
                          Elasticsearch ``sparse_vector``), ``dense`` (OpenSearch
                          ``knn_vector``, HNSW inner product; Elasticsearch ``dense_vector``,
                          ``dot_product``), ``image_id``, ``filename`` (keyword)
    OUT/bulk.ndjson       {"index": {"_index", "_id"}} then the document, one pair per image
    OUT/example_query.json      a sparse search body for the split's first caption
    OUT/example_knn_query.json  the dense kNN search body of the same caption
    OUT/export.json

Float weights are written as they are (both engines keep 9 significant bits). Feature
names are the vocabulary terms with ``%`` written ``%25`` and ``.`` written ``%2E``, because
both engines read a dot in a feature name as an object path; queries must use the same
escaping (:func:`feature_name`).

A run with inference-free queries (``model.query_encoder=lookup``) exports its query side
as OpenSearch's doc-only mode expects it (both ``opensearch`` and ``elasticsearch``)::

    OUT/idf.json                    {term: weight}: the run's per-term query weights (the
                                    lookup table of a doc-only tokenizer model), terms of
                                    weight 0 left out
    OUT/example_query.json          the first caption's lookup vector as a sparse search
    OUT/example_neural_sparse_query.json   (opensearch) the same as a ``neural_sparse``
                                    query with ``query_tokens``

Its queries have no dense side, so no kNN example is written. To let OpenSearch tokenise
raw text itself, register a ``SPARSE_TOKENIZE`` model from the run's tokenizer
(``tokenizer.json`` of the text backbone) and this ``idf.json``, and query with
``query_text`` and its ``model_id`` (docs/serving.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import MMSparseError
from mmsparse.index.quantize import quantize
from mmsparse.io_utils import atomic_write_json, atomic_write_text

EXPORT_FORMATS = ("anserini", "opensearch", "elasticsearch")
QUERY_LEVELS = 50  # Anserini queries: the heaviest term of a query is repeated 50 times


def feature_name(term: str) -> str:
    """A vocabulary term as an OpenSearch/Elasticsearch feature name (``%``, ``.`` escaped)."""
    return term.replace("%", "%25").replace(".", "%2E")


def _row_items(matrix: sp.csr_matrix, i: int) -> tuple[np.ndarray, np.ndarray]:
    s, e = matrix.indptr[i], matrix.indptr[i + 1]
    return matrix.indices[s:e], matrix.data[s:e]


def _vector_dict(matrix: sp.csr_matrix, i: int, terms: list[str], integer: bool, escape: bool):
    idx, val = _row_items(matrix, i)
    order = np.argsort(idx, kind="stable")
    out: dict[str, Any] = {}
    for j in order:
        name = terms[int(idx[j])]
        out[feature_name(name) if escape else name] = (
            int(val[j]) if integer else round(float(val[j]), 6)
        )
    return out


def write_anserini(
    out: Path,
    sparse: sp.csr_matrix,
    image_ids: list[str],
    filenames: list[str],
    terms: list[str],
    queries: sp.csr_matrix,
    query_ids: list[str],
    quantize_mode: str = "uint8",
) -> dict[str, Any]:
    """Write a JsonVectorCollection and impact queries (see the module doc)."""
    qdocs, scale = quantize(sparse, quantize_mode)
    # Per-query scale: the heaviest term of each query is repeated QUERY_LEVELS times (a
    # constant factor per query does not change its ranking).
    qmax = np.asarray(queries.max(axis=1).todense()).ravel()
    qq = sp.csr_matrix(queries, dtype=np.float32, copy=True)
    row_of = np.repeat(np.arange(qq.shape[0]), np.diff(qq.indptr))
    qq.data = np.rint(qq.data / np.where(qmax > 0, qmax, 1)[row_of] * QUERY_LEVELS)
    qq.eliminate_zeros()
    lines = []
    for i, image_id in enumerate(image_ids):
        doc = {
            "id": image_id,
            "contents": filenames[i],
            "vector": _vector_dict(qdocs, i, terms, integer=True, escape=False),
        }
        lines.append(json.dumps(doc, ensure_ascii=False, allow_nan=False))
    atomic_write_text(out / "collection" / "part-00000.jsonl", "\n".join(lines) + "\n")
    qlines = []
    for i, qid in enumerate(query_ids):
        idx, val = _row_items(qq, i)
        order = np.argsort(idx, kind="stable")
        words = [" ".join([terms[int(idx[j])]] * int(val[j])) for j in order]
        qlines.append(f"{qid}\t{' '.join(w for w in words if w)}")
    atomic_write_text(out / "queries.tsv", "\n".join(qlines) + "\n")
    return {
        "files": ["collection/part-00000.jsonl", "queries.tsv"],
        "quantize": quantize_mode,
        "doc_scale": scale,
        "query_levels": QUERY_LEVELS,
        "commands": [
            "python -m pyserini.index.lucene --collection JsonVectorCollection "
            f"--input {out}/collection --index {out}/lucene "
            "--generator DefaultLuceneDocumentGenerator --threads 1 --impact --pretokenized",
            f"python -m pyserini.search.lucene --index {out}/lucene --topics {out}/queries.tsv "
            f"--output {out}/run.trec --impact --pretokenized --hits 100",
        ],
    }


def index_body(fmt: str, dense_dim: int) -> dict[str, Any]:
    """The index body (settings + mappings) to create before the bulk load."""
    if fmt == "opensearch":
        return {
            "settings": {"index": {"knn": True}},
            "mappings": {
                "properties": {
                    "image_id": {"type": "keyword"},
                    "filename": {"type": "keyword"},
                    "sparse": {"type": "rank_features"},
                    "dense": {
                        "type": "knn_vector",
                        "dimension": int(dense_dim),
                        "method": {
                            "name": "hnsw",
                            "space_type": "innerproduct",
                            "engine": "faiss",
                        },
                    },
                }
            },
        }
    return {
        "mappings": {
            "properties": {
                "image_id": {"type": "keyword"},
                "filename": {"type": "keyword"},
                "sparse": {"type": "sparse_vector"},
                "dense": {
                    "type": "dense_vector",
                    "dims": int(dense_dim),
                    "index": True,
                    "similarity": "dot_product",
                },
            }
        }
    }


def example_queries(
    fmt: str, q_sparse: dict[str, float], q_dense: list[float], k: int = 10
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Search bodies for one query: ``(sparse, dense kNN)``."""
    if fmt == "opensearch":
        sparse = {
            "size": k,
            "query": {
                "bool": {
                    "should": [
                        {"rank_feature": {"field": f"sparse.{t}", "linear": {}, "boost": w}}
                        for t, w in q_sparse.items()
                    ]
                }
            },
        }
        dense = {"size": k, "query": {"knn": {"dense": {"vector": q_dense, "k": k}}}}
        return sparse, dense
    sparse = {"size": k, "query": {"sparse_vector": {"field": "sparse", "query_vector": q_sparse}}}
    dense = {
        "size": k,
        "knn": {"field": "dense", "query_vector": q_dense, "k": k, "num_candidates": 10 * k},
    }
    return sparse, dense


def write_bulk(
    out: Path,
    fmt: str,
    sparse: sp.csr_matrix,
    dense: np.ndarray,
    image_ids: list[str],
    filenames: list[str],
    terms: list[str],
    queries: sp.csr_matrix,
    query_dense: np.ndarray | None,
    index_name: str,
) -> dict[str, Any]:
    """Write ``mapping.json``, ``bulk.ndjson`` and ``example_query.json``.

    ``query_dense`` ``None`` (inference-free queries): no kNN example; OpenSearch gets a
    ``neural_sparse`` example with ``query_tokens`` instead.
    """
    lines = []
    for i, image_id in enumerate(image_ids):
        lines.append(
            json.dumps({"index": {"_index": index_name, "_id": image_id}}, allow_nan=False)
        )
        doc = {
            "image_id": image_id,
            "filename": filenames[i],
            "sparse": _vector_dict(sparse, i, terms, integer=False, escape=True),
            "dense": [round(float(x), 6) for x in dense[i]],
        }
        lines.append(json.dumps(doc, ensure_ascii=False, allow_nan=False))
    atomic_write_json(out / "mapping.json", index_body(fmt, dense.shape[1]))
    atomic_write_text(out / "bulk.ndjson", "\n".join(lines) + "\n")
    files = ["mapping.json", "bulk.ndjson"]
    if queries.shape[0]:
        q = _vector_dict(queries, 0, terms, integer=False, escape=True)
        dense0 = [] if query_dense is None else [round(float(x), 6) for x in query_dense[0]]
        sparse_q, dense_q = example_queries(fmt, q, dense0)
        atomic_write_json(out / "example_query.json", sparse_q)
        files.append("example_query.json")
        if query_dense is not None:
            atomic_write_json(out / "example_knn_query.json", dense_q)
            files.append("example_knn_query.json")
        elif fmt == "opensearch":
            neural = {"size": 10, "query": {"neural_sparse": {"sparse": {"query_tokens": q}}}}
            atomic_write_json(out / "example_neural_sparse_query.json", neural)
            files.append("example_neural_sparse_query.json")
    return {
        "files": files,
        "index_name": index_name,
        "commands": [
            f"curl -XPUT localhost:9200/{index_name} -H 'Content-Type: application/json' "
            f"--data-binary @{out}/mapping.json",
            "curl -XPOST localhost:9200/_bulk -H 'Content-Type: application/x-ndjson' "
            f"--data-binary @{out}/bulk.ndjson",
        ],
    }


def write_idf(out: Path, model: Any, terms: list[str]) -> dict[str, Any]:
    """Write ``idf.json``, the per-term query weights of an inference-free run.

    The format of OpenSearch's doc-only models: one JSON object mapping each term, as the
    tokenizer writes it, to its weight ``relu(w)``; terms of weight 0 are left out (a query
    term missing from the table scores nothing there either).

    Returns:
        ``{"idf": {"file", "terms", "escaped_terms"}}``: ``escaped_terms`` counts the terms
        with ``.`` or ``%``, whose document feature names are escaped
        (:func:`feature_name`) and which OpenSearch's own tokenizer path therefore cannot
        match (``query_tokens`` with escaped names can).
    """
    import torch

    w = torch.relu(model.query_weight.detach().float()).cpu().numpy()
    ids = model.term_ids.cpu().numpy() if model.term_ids is not None else np.arange(w.size)
    table = {terms[int(i)]: round(float(x), 6) for i, x in zip(ids, w) if x > 0}
    atomic_write_json(out / "idf.json", table)
    escaped = sum(1 for t in table if feature_name(t) != t)
    return {"idf": {"file": "idf.json", "terms": len(table), "escaped_terms": escaped}}


def check_export_out(out: Path, overwrite: bool = False) -> None:
    """Refuse an export folder that would overwrite a user's files.

    Raises:
        MMSparseError: If ``out`` is a file, or a non-empty directory and not ``overwrite``.
    """
    if out.exists() and not out.is_dir():
        raise MMSparseError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and not overwrite:
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (
                f" and {len(entries) - 3} more" if entries[3:] else ""
            )
            raise MMSparseError(
                f"{out}: directory exists and is not empty ({shown}); choose another --out, "
                "or pass --overwrite to replace the export's files there"
            )


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    split: str = "val",
    fmt: str = "anserini",
    data: str | Path | None = None,
    image_topk: int | None = None,
    threshold: float | None = None,
    text_topk: int | None = None,
    quantize: str = "uint8",
    index_name: str = "mmsparse-images",
    bundle: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export a split's image vectors (and its captions as queries) for another engine.

    Args:
        run_dir: A run directory written by ``mmsparse train``.
        out: Output directory (created): it must not exist or be empty, unless
            ``overwrite``.
        split: Split to export.
        fmt: ``anserini``, ``opensearch`` or ``elasticsearch``.
        data: Another feature directory of the same backbone.
        image_topk: Terms kept per image (default: the run's ``eval.image_topk``).
        threshold: Weights at or below it dropped (default: the run's ``eval.threshold``).
        text_topk: Terms kept per caption query (default: the run's ``eval.text_topk``).
        quantize: Anserini impacts: ``uint8`` or ``uint16``.
        index_name: OpenSearch/Elasticsearch index name.
        bundle: The backbone bundle directory to use instead of the run's (a moved run).
        overwrite: Write into a non-empty ``out``: the export's own files there are
            replaced, every other file is left as it is.

    Returns:
        What was written (``export.json``): format, counts, files, scales, commands.

    Raises:
        MMSparseError: On an unknown format or option, or an ``out`` that is a file or a
            non-empty directory (without ``overwrite``); checked before anything is read.
    """
    from mmsparse.index.encode import encode_vectors
    from mmsparse.runs import load_run, load_run_data

    if fmt not in EXPORT_FORMATS:
        raise MMSparseError(f"unknown export format {fmt!r} (one of {', '.join(EXPORT_FORMATS)})")
    if quantize not in ("uint8", "uint16"):
        raise MMSparseError(f"anserini impacts are uint8 or uint16, not {quantize!r}")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise MMSparseError(f"--threshold must be a finite number >= 0, got {threshold}")
    if image_topk is not None and image_topk < 1:
        raise MMSparseError(f"--image-topk must be >= 1, got {image_topk}")
    if text_topk is not None and text_topk < 1:
        raise MMSparseError(f"--text-topk must be >= 1, got {text_topk}")
    out = Path(out)
    check_export_out(out, overwrite)
    run = load_run(run_dir)
    store = load_run_data(run, data, bundle)
    sp_ = store.split(split)
    ev = run.config.serving
    topk = ev.image_topk if image_topk is None else image_topk
    thr = ev.threshold if threshold is None else float(threshold)
    dense, sparse = encode_vectors(
        run.model, store.image_feats[sp_.image_rows], "image", topk=topk, threshold=thr
    )
    q_topk = ev.text_topk if text_topk is None else text_topk
    q_dense: np.ndarray | None
    if run.model.inference_free:
        from mmsparse.evaluate.retrieval import lookup_split_queries

        q_dense = None
        q_cfg = dataclasses.replace(ev, text_topk=q_topk, threshold=thr)
        q = lookup_split_queries(run.model, store, sp_.caption_rows, q_cfg)
        q_sparse = sp.csr_matrix(q.numpy())
    else:
        q_dense, q_sparse = encode_vectors(
            run.model,
            store.caption_feats[sp_.caption_rows],
            "text",
            topk=q_topk,
            threshold=thr,
        )
    image_ids = [store.image_ids[i] for i in sp_.image_rows]
    filenames = [store.image_filenames[i] for i in sp_.image_rows]
    query_ids = [store.caption_ids[i] for i in sp_.caption_rows]
    out.mkdir(parents=True, exist_ok=True)
    terms = run.vocab.tokens
    if fmt == "anserini":
        info = write_anserini(
            out, sparse, image_ids, filenames, terms, q_sparse, query_ids, quantize
        )
    else:
        info = write_bulk(
            out, fmt, sparse, dense, image_ids, filenames, terms, q_sparse, q_dense, index_name
        )
        if run.model.inference_free:
            extra = write_idf(out, run.model, terms)
            info["files"].append("idf.json")
            info.update(extra)
    info = {
        "format": fmt,
        "run_dir": str(Path(run_dir).resolve()),
        "split": sp_.name,
        "n_images": len(image_ids),
        "n_queries": len(query_ids),
        "image_topk": topk,
        "text_topk": q_topk,
        "threshold": thr,
        "query_encoder": "lookup" if run.model.inference_free else "head",
        **info,
    }
    atomic_write_json(out / "export.json", info)
    info["files"] = [*info["files"], "export.json"]
    return info
