"""``mmsparse bench retrieval``: the serving engines at scale, measured on one machine.

The corpus
    A trained run's real image vectors, then perturbed mixtures of them, and real caption
    queries (the recipe: :mod:`mmsparse.bench.retrieval.corpus`).

The measurements (per engine)
    build time; bytes per image on disk; single-thread latency p50/p99 over up to
    ``latency_queries`` queries searched one by one (at most ``latency_budget`` seconds per
    engine or setting, at least 20 queries); batched throughput (queries per second over the
    queries, all cores, or one thread for engines that search one query at a time); recall@10
    against the exact sparse top-10 (our ``inverted`` engine, itself checked against scipy
    brute force on a sample of queries), and for dense engines against the exact dense
    top-10 (faiss ``IndexFlatIP``); for the exact sparse engines the postings (or forward
    index entries) read per query.

    Exact engines: ``inverted`` (score accumulation over every posting of every query term;
    its build time includes the dense columns of the longest lists, built in memory, see
    :mod:`mmsparse.index.kernels`), ``inverted-uint8`` and ``inverted-uint16`` (the same
    engine on 8- or 16-bit integer impacts: exact on the quantised vectors, recall against
    the float ranking), ``inverted-blockmax`` (our block-max pruning,
    :mod:`mmsparse.index.blockmax`) and
    ``bmp`` (Block-Max Pruning at 8-bit impacts, :mod:`mmsparse.index.engines.bmp`). The
    last two search one query at a time and stop after ``serial_budget`` seconds (at least
    20 queries): their recall and throughput are over the queries they answered.

    Approximate engines are swept over their search knob — Seismic over
    ``(query_cut, heap_factor)``, kannolo over ``ef_search``, faiss HNSW over ``efSearch`` —
    on the first ``sweep_queries`` queries; the report gives every point (recall, latency)
    and each engine at the first setting reaching recall@10 >= 0.95 and >= 0.99 (against
    its own exact ranking: sparse for Seismic and kannolo, dense for HNSW), so the engines
    are compared at equal recall. kannolo builds its graph on at most ``kannolo_images``
    images (a graph build is the slowest step) and milvus-lite (pure Python) on at most
    ``milvus_images``; their recall is against the exact ranking of that subset.

The modules
    :mod:`~mmsparse.bench.retrieval.options` (engines, defaults, the option groups),
    :mod:`~mmsparse.bench.retrieval.corpus` (corpus, queries, exact sparse top-k, recall),
    :mod:`~mmsparse.bench.retrieval.measure` (timers, recall targets, engine builds),
    :mod:`~mmsparse.bench.retrieval.exact` (``inverted`` and its quantised forms,
    ``inverted-blockmax``, ``bmp``, milvus-lite), :mod:`~mmsparse.bench.retrieval.approximate`
    (Seismic, kannolo), :mod:`~mmsparse.bench.retrieval.dense` (faiss flat and HNSW),
    :mod:`~mmsparse.bench.retrieval.report` (table, plot) and
    :mod:`~mmsparse.bench.retrieval.run` (:func:`bench_retrieval`, the JSON report).
"""

from __future__ import annotations

from mmsparse.bench.retrieval.corpus import (
    BORROW,
    BORROW_WEIGHT,
    DENSE_NOISE,
    KEEP,
    encode_images_and_queries,
    exact_sparse_topk,
    postings_per_query,
    recall_at_k,
    synthesize_corpus,
)
from mmsparse.bench.retrieval.exact import MILVUS_MAX_LATENCY, MILVUS_MAX_QUERIES
from mmsparse.bench.retrieval.measure import MIN_TIMED, at_recall
from mmsparse.bench.retrieval.options import (
    BENCH_ENGINES,
    DEFAULT_ENGINES,
    DEFAULT_HNSW,
    DEFAULT_HNSW_EF,
    DEFAULT_KANNOLO,
    DEFAULT_KANNOLO_EF,
    DEFAULT_SEISMIC_BUILD,
    DEFAULT_SEISMIC_SEARCH,
    RECALL_TARGETS,
    CorpusOptions,
    EngineSweep,
    K,
    Outputs,
    ServingCap,
    Timing,
)
from mmsparse.bench.retrieval.report import format_bench_table, plot_latency_recall
from mmsparse.bench.retrieval.run import bench_retrieval

__all__ = [
    "BENCH_ENGINES",
    "BORROW",
    "BORROW_WEIGHT",
    "DEFAULT_ENGINES",
    "DEFAULT_HNSW",
    "DEFAULT_HNSW_EF",
    "DEFAULT_KANNOLO",
    "DEFAULT_KANNOLO_EF",
    "DEFAULT_SEISMIC_BUILD",
    "DEFAULT_SEISMIC_SEARCH",
    "DENSE_NOISE",
    "KEEP",
    "MILVUS_MAX_LATENCY",
    "MILVUS_MAX_QUERIES",
    "MIN_TIMED",
    "RECALL_TARGETS",
    "CorpusOptions",
    "EngineSweep",
    "K",
    "Outputs",
    "ServingCap",
    "Timing",
    "at_recall",
    "bench_retrieval",
    "encode_images_and_queries",
    "exact_sparse_topk",
    "format_bench_table",
    "plot_latency_recall",
    "postings_per_query",
    "recall_at_k",
    "synthesize_corpus",
]
