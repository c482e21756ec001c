"""``mmsparse bench e2e``: a text query's whole time, encoding included, sparse against dense.

At the sizes people serve (thousands to a hundred thousand images) encoding the query text
costs more than searching the index. This benchmark times what a user waits for, one query
at a time on one thread, for real caption texts of the run's data:

- **sparse**: the query text to a sparse vector — for a run with inference-free queries
  (``model.query_encoder=lookup``) the run's tokenizer and per-term weights only
  (``tokenise + lookup``); otherwise the run's text encoder and its heads — then the exact
  inverted index (``inverted`` engine, one thread) for the top 10;
- **dense**: the same text through the run's text encoder and dense head, then faiss
  ``IndexFlatIP`` (exact inner product, one thread) for the top 10.

Each stage is timed per query (``encode``, ``search``) and so is their sum (``total``);
the report gives p50 and p99 of each, per corpus size, and ``dense total / sparse total``.
The corpora are those of ``mmsparse bench retrieval`` (the run's real image vectors first,
then perturbed mixtures of them: :func:`mmsparse.bench.retrieval.corpus.synthesize_corpus`), so the
posting lists keep the real term distribution. Timings depend on the machine and on
everything else it runs: take them on a quiet machine (the report records the load).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.bench.local_server import p50_p99_ms
from mmsparse.bench.machine import load_average, machine_record
from mmsparse.errors import MissingExtraError, MMSparseError
from mmsparse.io_utils import atomic_write_json

K = 10
DEFAULT_SIZES = (1_000, 100_000, 1_000_000)


def bench_end_to_end(
    run_dir: str | Path,
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    n_queries: int = 500,
    seed: int = 0,
    data: str | Path | None = None,
    text_encoder: Any = None,
    dense: bool = True,
    out: str | Path | None = "benchmarks/end_to_end.json",
    progress: bool = True,
) -> dict[str, Any]:
    """Time sparse and dense text search end to end (module docstring).

    Args:
        run_dir: A trained run (any: with inference-free queries or not).
        sizes: Corpus sizes (images).
        n_queries: Real caption texts timed one by one (per size and pipeline).
        seed: Seed of the query draw and the corpus.
        data: Feature directory (default: the run's).
        text_encoder: An object with ``encode(list[str]) -> (N, d_txt)`` to use instead of
            the run's extraction backend (tests).
        dense: Also time the dense pipeline (needs the text encoder and faiss).
        out: Results JSON to write (``None``: do not write).
        progress: Log lines on stderr.

    Returns:
        The report (also written to ``out``).

    Raises:
        MMSparseError: On bad sizes, or a run whose sparse queries need a text encoder
            that is not available.
    """
    import torch

    from mmsparse.bench.retrieval import synthesize_corpus
    from mmsparse.index.encode import encode_vectors
    from mmsparse.index.inverted import InvertedIndex, write_postings
    from mmsparse.index.search import Searcher, load_text_encoder
    from mmsparse.runs import load_run, load_run_data
    from mmsparse.sparse.ops import prune

    if not sizes or min(sizes) < 1 or n_queries < 1:
        raise MMSparseError("--sizes must be positive integers and --n-queries at least 1")
    torch.set_num_threads(1)
    load_start = load_average()
    run = load_run(run_dir)
    store = load_run_data(run, data)
    model, ev = run.model, run.config.serving
    lookup = model.inference_free
    rng = np.random.default_rng(seed)
    rows = rng.choice(
        len(store.caption_ids), size=n_queries, replace=n_queries > len(store.caption_ids)
    )
    texts = [store.caption_texts[r] for r in rows]

    encoder = text_encoder
    encoder_error = None
    if encoder is None and (dense or not lookup):
        try:
            encoder = load_text_encoder(Searcher.checkpoint_extraction(run))
        except MMSparseError as exc:
            encoder_error = str(exc)
    if not lookup and encoder is None:
        raise MMSparseError(f"the run's sparse queries need its text encoder: {encoder_error}")
    if encoder is not None:
        encoder.encode(texts[:2])  # warm-up: weights in memory, first-call costs paid

    @torch.no_grad()
    def encode_sparse(text: str) -> sp.csr_matrix:
        if lookup:
            q = model.encode_query_terms([run.vocab.encode(text)])
        else:
            h = torch.from_numpy(np.asarray(encoder.encode([text]), dtype=np.float32))
            q = model.encode_text(h).sparse
        return sp.csr_matrix(prune(q, ev.text_topk, ev.threshold).numpy())

    @torch.no_grad()
    def encode_dense(text: str) -> np.ndarray:
        h = torch.from_numpy(np.asarray(encoder.encode([text]), dtype=np.float32))
        e = torch.nn.functional.normalize(model.text_proj(h), dim=-1)
        return e.numpy().astype(np.float32)

    img_dense, img_sparse = encode_vectors(
        model, store.image_feats, "image", topk=ev.image_topk, threshold=ev.threshold
    )
    faiss = None
    dense_skip = None
    if dense:
        if encoder is None:
            dense_skip = f"no text encoder: {encoder_error}"
        else:
            try:
                from mmsparse.errors import require_extra

                faiss = require_extra("faiss", "index", "The faiss dense baseline (faiss-cpu)")
                faiss.omp_set_num_threads(1)
            except MissingExtraError as exc:
                dense_skip = str(exc)
    report: dict[str, Any] = {
        "run": str(Path(run_dir).resolve()),
        "query_encoder": "lookup" if lookup else "head",
        "sparse_pipeline": "tokenise + lookup + inverted (1 thread)"
        if lookup
        else "text encoder + heads + inverted (1 thread)",
        "dense_pipeline": "text encoder + dense head + faiss IndexFlatIP (1 thread)",
        "n_queries": n_queries,
        "k": K,
        "seed": seed,
        "text_topk": ev.text_topk,
        "image_topk": ev.image_topk,
        "machine": machine_record(load_start),
        "sizes": {},
    }
    if dense_skip:
        report["dense_skipped"] = dense_skip
    # Every query is encoded again at every size: each timing is the whole pipeline of one
    # query, as a server runs it.
    with tempfile.TemporaryDirectory(prefix="mmsparse-e2e-") as work:
        for n in sizes:
            if progress:
                print(f"e2e: {n} images", flush=True)
            sparse_docs, dense_docs = synthesize_corpus(img_sparse, img_dense, int(n), seed=seed)
            path = Path(work) / f"inv-{n}" / "postings.mmsi"
            write_postings(path, sparse_docs)
            index = InvertedIndex(path, verify=False)
            index.search_batch(encode_sparse(texts[0]), K, threads=1)  # warm-up
            enc_t, search_t, total_t = [], [], []
            for text in texts:
                t0 = time.perf_counter()
                q = encode_sparse(text)
                t1 = time.perf_counter()
                index.search_batch(q, K, threads=1)
                t2 = time.perf_counter()
                enc_t.append(t1 - t0)
                search_t.append(t2 - t1)
                total_t.append(t2 - t0)
            entry: dict[str, Any] = {
                "sparse": {
                    "encode": p50_p99_ms(enc_t),
                    "search": p50_p99_ms(search_t),
                    "total": p50_p99_ms(total_t),
                }
            }
            if faiss is not None:
                flat = faiss.IndexFlatIP(dense_docs.shape[1])
                flat.add(np.ascontiguousarray(dense_docs, dtype=np.float32))
                flat.search(encode_dense(texts[0]), K)  # warm-up
                enc_t, search_t, total_t = [], [], []
                for text in texts:
                    t0 = time.perf_counter()
                    e = encode_dense(text)
                    t1 = time.perf_counter()
                    flat.search(e, K)
                    t2 = time.perf_counter()
                    enc_t.append(t1 - t0)
                    search_t.append(t2 - t1)
                    total_t.append(t2 - t0)
                entry["dense"] = {
                    "encode": p50_p99_ms(enc_t),
                    "search": p50_p99_ms(search_t),
                    "total": p50_p99_ms(total_t),
                }
                ratio = entry["dense"]["total"]["p50_ms"] / max(
                    entry["sparse"]["total"]["p50_ms"], 1e-9
                )
                entry["dense_over_sparse_p50"] = round(ratio, 2)
            report["sizes"][str(int(n))] = entry
            if out:
                atomic_write_json(out, report)
    report["machine"] = machine_record(load_start)
    if out:
        atomic_write_json(out, report)
    return report


def format_e2e_table(report: dict[str, Any]) -> str:
    """A markdown table of the report: per size, p50 ms of each stage and the ratio."""
    lines = [
        f"sparse: {report['sparse_pipeline']}; dense: {report['dense_pipeline']}; "
        f"{report['n_queries']} queries, p50 (p99) ms",
        "",
        "| images | sparse encode | sparse search | sparse total | dense encode | dense search "
        "| dense total | dense / sparse |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(x: dict[str, Any] | None, stage: str) -> str:
        if not x:
            return ""
        return f"{x[stage]['p50_ms']:.3f} ({x[stage]['p99_ms']:.3f})"

    for n, e in report["sizes"].items():
        s, d = e.get("sparse"), e.get("dense")
        ratio = e.get("dense_over_sparse_p50")
        lines.append(
            f"| {int(n):,} | {cell(s, 'encode')} | {cell(s, 'search')} | {cell(s, 'total')} "
            f"| {cell(d, 'encode')} | {cell(d, 'search')} | {cell(d, 'total')} "
            f"| {'' if ratio is None else f'{ratio:.1f}x'} |"
        )
    return "\n".join(lines)
