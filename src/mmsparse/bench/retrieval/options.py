"""The options of ``mmsparse bench retrieval``: engines, defaults, argument groups.

The groups are those of :func:`mmsparse.bench.retrieval.bench_retrieval`'s arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_ENGINES = (
    "inverted",
    "inverted-uint8",
    "inverted-uint16",
    "inverted-blockmax",
    "bmp",
    "seismic",
    "kannolo",
    "milvus",
    "faiss-flat",
    "faiss-hnsw",
)
DEFAULT_ENGINES = tuple(
    e for e in BENCH_ENGINES if e not in ("milvus", "inverted-uint8", "inverted-uint16")
)
DEFAULT_SEISMIC_BUILD: dict[str, Any] = {
    "n_postings": 4000,
    "centroid_fraction": 0.1,
    "summary_energy": 0.4,
}
DEFAULT_SEISMIC_SEARCH: tuple[tuple[int, float], ...] = (
    (3, 0.7),
    (5, 0.8),
    (10, 0.9),
    (20, 0.9),
    (30, 1.0),
    (50, 1.0),
)
# efConstruction 80 capped recall@10 at 0.91 on the synthetic million (200: 0.974 at efSearch
# 1024, 0.994 at 4096; docs/benchmarks.md, "The exact engine")
DEFAULT_HNSW: dict[str, int] = {"M": 32, "efConstruction": 200}
DEFAULT_HNSW_EF: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048)
DEFAULT_KANNOLO: dict[str, int] = {"m": 32, "ef_construction": 100}
DEFAULT_KANNOLO_EF: tuple[int, ...] = (10, 20, 40, 80, 160, 320, 640)
RECALL_TARGETS = (0.95, 0.99)  # approximate engines are reported at these recall@10
K = 10  # top-k of every search and of recall@k


@dataclass(frozen=True)
class CorpusOptions:
    """The corpus and its queries (the recipe: :mod:`mmsparse.bench.retrieval.corpus`).

    Attributes:
        n_images: Corpus size (real images first, then synthetic ones).
        n_queries: Real caption queries (batched throughput and recall).
        seed: Seed of corpus and query sampling.
        data: Feature directory (default: the run's).
    """

    n_images: int = 1_000_000
    n_queries: int = 10_000
    seed: int = 0
    data: str | Path | None = None


@dataclass(frozen=True)
class ServingCap:
    """Terms kept per vector, as an index would serve them.

    Attributes:
        image_topk: Terms kept per image (default: the run's ``eval.image_topk``).
        text_topk: Terms kept per query (default: the run's ``eval.text_topk``).
    """

    image_topk: int | None = None
    text_topk: int | None = None


@dataclass(frozen=True)
class EngineSweep:
    """Which engines, built how, and the settings the approximate ones are swept over.

    Attributes:
        engines: Subset of :data:`BENCH_ENGINES`; engines whose package is missing are
            reported as skipped.
        seismic_build: Seismic build parameters over :data:`DEFAULT_SEISMIC_BUILD`.
        seismic_search: ``(query_cut, heap_factor)`` sweep, in increasing recall order.
        hnsw: faiss HNSW ``M`` and ``efConstruction`` over :data:`DEFAULT_HNSW`.
        hnsw_ef: faiss HNSW ``efSearch`` sweep.
        kannolo: kannolo ``m`` and ``ef_construction`` over :data:`DEFAULT_KANNOLO`.
        kannolo_ef: kannolo ``ef_search`` sweep.
        kannolo_images: kannolo builds its graph on at most this many images.
        milvus_images: milvus-lite is measured on at most this many images.
        bmp_bsize: bmp images per block.
        blockmax_bsize: ``inverted-blockmax`` images per block.
    """

    engines: tuple[str, ...] = DEFAULT_ENGINES
    seismic_build: Mapping[str, Any] = field(default_factory=dict)
    seismic_search: tuple[tuple[int, float], ...] = DEFAULT_SEISMIC_SEARCH
    hnsw: Mapping[str, int] = field(default_factory=dict)
    hnsw_ef: tuple[int, ...] = DEFAULT_HNSW_EF
    kannolo: Mapping[str, int] = field(default_factory=dict)
    kannolo_ef: tuple[int, ...] = DEFAULT_KANNOLO_EF
    kannolo_images: int = 100_000
    milvus_images: int = 20_000
    bmp_bsize: int = 32
    blockmax_bsize: int = 64


@dataclass(frozen=True)
class Timing:
    """How many queries are timed, and for how long at most.

    Attributes:
        latency_queries: Queries timed one at a time on one thread (per engine/setting).
        latency_budget: Seconds of single-query timing per engine or setting (>= 20
            queries).
        serial_budget: Seconds for the one-query-at-a-time exact engines (``bmp``,
            ``inverted-blockmax``) to answer queries (>= 20).
        sweep_queries: Queries of every sweep point's recall and throughput.
    """

    latency_queries: int = 1000
    latency_budget: float = 20.0
    serial_budget: float = 60.0
    sweep_queries: int = 2000


@dataclass(frozen=True)
class Outputs:
    """Where the results go.

    Attributes:
        out: Results JSON (``None``: not written); rewritten after every engine, so an
            interrupted run keeps what it measured.
        table: Markdown table file (``None``: not written).
        plot: Latency-against-recall PNG (``None``: not drawn; needs matplotlib).
        work: Directory for the built indexes (default: a temporary one, removed after).
    """

    out: str | Path | None = "benchmarks/retrieval.json"
    table: str | Path | None = None
    plot: str | Path | None = None
    work: str | Path | None = None
