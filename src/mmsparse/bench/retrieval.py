"""``mmsparse bench retrieval``: the serving engines at scale, measured on one machine.

The corpus
    A trained run (any run directory: re-run with a new model by pointing ``--run`` at it)
    encodes every real image of its data (all splits) and ``n_queries`` real captions
    (sampled without replacement, with replacement only if there are fewer). The real images
    are the first rows of the corpus; every further image blends a random real image ``s``
    (its main content) with a second random real image ``s'`` (both uniform)::

        z = z_s ⊙ exp(0.2 ε) ⊙ keep  +  0.8 · z_s' ⊙ exp(0.2 ε') ⊙ borrow
        e = normalize(0.75 · e_s + 0.25 · e_s' + 0.1 · ξ / sqrt(d))

    with ``ε, ε' ~ N(0, 1)`` per non-zero weight, ``keep ~ Bernoulli(0.7)`` (each term of
    ``s`` survives with probability 0.7), ``borrow ~ Bernoulli(0.3)`` (each term of ``s'`` is
    added with probability 0.3, at 0.8 of its weight), ``ξ ~ N(0, I)``. So every synthetic
    image has about as many terms as a real one, only terms that real images use, with
    weights of the real scale: posting-list lengths keep the real term distribution. With
    ~49 million possible ``(s, s')`` pairs, a million images are rarely near-duplicates of
    each other. The run's own pruning (``eval.image_topk``/``threshold``, or
    ``image_topk``/``text_topk`` given here) is applied to the real vectors before sampling
    and to the queries.

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
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.bench.machine import describe_machine, load_average, machine_record
from mmsparse.errors import MissingExtraError, MMSparseError
from mmsparse.index import kernels
from mmsparse.io_utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

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
RECALL_TARGETS = (0.95, 0.99)
K = 10
KEEP, BORROW, BORROW_WEIGHT, DENSE_NOISE = 0.7, 0.3, 0.8, 0.1  # corpus synthesis (module doc)
MILVUS_MAX_QUERIES = 200  # milvus-lite is pure Python (~0.3 s/query at 20k images here)
MILVUS_MAX_LATENCY = 50
MIN_TIMED = 20


# -- corpus -------------------------------------------------------------------------------


def synthesize_corpus(
    real_sparse: sp.csr_matrix,
    real_dense: np.ndarray,
    n_images: int,
    seed: int = 0,
    chunk: int = 50_000,
    progress: bool = False,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """``n_images`` image vectors: the real ones first, then perturbed mixtures (module doc).

    Args:
        real_sparse: ``(n_real, V)`` real image sparse vectors.
        real_dense: ``(n_real, d)`` real image dense vectors.
        n_images: Corpus size (may be smaller than ``n_real``: the first rows are taken).
        seed: Seed of the sampling.
        chunk: Rows generated at a time.
        progress: Show a progress bar.

    Returns:
        ``(sparse CSR (n_images, V) float32, dense (n_images, d) float32)``.
    """
    rng = np.random.default_rng(seed)
    n_real = real_sparse.shape[0]
    if n_images <= n_real:
        return real_sparse[:n_images].astype(np.float32), real_dense[:n_images].copy()
    parts = [real_sparse.astype(np.float32)]
    dense = np.empty((n_images, real_dense.shape[1]), dtype=np.float32)
    dense[:n_real] = real_dense
    starts = range(n_real, n_images, chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="synthesizing images", unit="chunk", leave=False)
    d = real_dense.shape[1]
    for s in starts:
        m = min(chunk, n_images - s)
        src = rng.integers(0, n_real, m)
        src2 = rng.integers(0, n_real, m)
        a = real_sparse[src].astype(np.float32)
        a.data *= np.exp(0.2 * rng.standard_normal(a.nnz)).astype(np.float32)
        a.data *= rng.random(a.nnz) < KEEP
        b = real_sparse[src2].astype(np.float32)
        b.data *= np.exp(0.2 * rng.standard_normal(b.nnz)).astype(np.float32)
        b.data *= BORROW_WEIGHT * (rng.random(b.nnz) < BORROW)
        z = (a + b).tocsr()
        z.eliminate_zeros()
        z.sort_indices()
        parts.append(z.astype(np.float32))
        e = 0.75 * real_dense[src] + 0.25 * real_dense[src2]
        e += (DENSE_NOISE / np.sqrt(d)) * rng.standard_normal(e.shape).astype(np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        dense[s : s + m] = e
    sparse = sp.vstack(parts, format="csr").astype(np.float32)
    return sparse, dense


# -- helpers ------------------------------------------------------------------------------


def exact_sparse_topk(
    docs: sp.csr_matrix, queries: sp.csr_matrix, k: int = K, threads: int | None = None
) -> np.ndarray:
    """Exact sparse top-``k`` rows (the inverted engine's kernel on in-memory postings)."""
    csc = docs.tocsc()
    csc.sort_indices()
    q = sp.csr_matrix(queries, dtype=np.float32)
    q.sort_indices()
    backend = kernels.resolve_backend("auto")
    indptr = csc.indptr.astype(np.int64)
    doc_ids = csc.indices.astype(np.int32)
    weights = csc.data.astype(np.float32)
    dense = None
    if backend == "numba":
        dense = kernels.dense_columns(indptr, doc_ids, weights, docs.shape[0])
    rows, _ = kernels.search_csr(
        backend,
        indptr,
        doc_ids,
        weights,
        docs.shape[0],
        q.indptr.astype(np.int64),
        q.indices.astype(np.int64),
        q.data.astype(np.float32),
        k,
        threads,
        dense=dense,
    )
    return rows


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    """Mean over queries of ``|found[:k] ∩ truth[:k]| / |truth[:k]|`` (padding ``-1`` ignored)."""
    total, n = 0.0, 0
    for f, t in zip(found, truth):
        t = t[:k][t[:k] >= 0]
        if t.size == 0:
            continue
        total += np.intersect1d(f[:k], t).size / t.size
        n += 1
    return float(total / max(n, 1))


def _sig(x: float, digits: int = 4) -> float:
    # significant digits, not decimals: a small build or a fast query takes microseconds
    return float(f"{x:.{digits}g}")


def _latency(fn: Callable[[int], Any], n: int, budget_s: float = float("inf")) -> dict[str, float]:
    """Time ``fn(i)`` for ``i < n`` one by one, stopping after ``budget_s`` (>= 20 queries)."""
    times = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
        if i + 1 >= MIN_TIMED and time.perf_counter() - start > budget_s:
            break
    return _times_summary(np.asarray(times))


def _serial(
    fn: Callable[[int], np.ndarray], n: int, budget_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Answer queries one by one until ``budget_s``: ``(rows (m, K), seconds (m,))``."""
    rows, times = [], []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        rows.append(fn(i))
        times.append(time.perf_counter() - t0)
        if i + 1 >= MIN_TIMED and time.perf_counter() - start > budget_s:
            break
    return np.stack(rows), np.asarray(times)


def _times_summary(t: np.ndarray) -> dict[str, float]:
    return {
        "p50_ms": _sig(np.percentile(t, 50) * 1e3),
        "p99_ms": _sig(np.percentile(t, 99) * 1e3),
        "mean_ms": _sig(t.mean() * 1e3),
        "latency_queries": int(t.size),
    }


def postings_per_query(docs: sp.csr_matrix, queries: sp.csr_matrix) -> np.ndarray:
    """Postings an exhaustive term-at-a-time engine reads per query (sum of list lengths)."""
    lengths = np.bincount(docs.indices, minlength=docs.shape[1]).astype(np.int64)
    q = sp.csr_matrix(queries)
    rows = np.repeat(np.arange(q.shape[0]), np.diff(q.indptr))
    return np.bincount(rows, weights=lengths[q.indices], minlength=q.shape[0]).astype(np.int64)


def at_recall(points: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """The first sweep point (in sweep order) whose ``key`` recall reaches each target."""
    out: dict[str, Any] = {}
    for target in RECALL_TARGETS:
        hit = next((p for p in points if p[key] >= target), None)
        out[f"{target:.2f}"] = hit
    return out


def _dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- the benchmark ------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusOptions:
    """The corpus and its queries (module doc, *The corpus*).

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


def bench_retrieval(
    run_dir: str | Path,
    corpus: CorpusOptions = CorpusOptions(),
    *,
    cap: ServingCap = ServingCap(),
    sweep: EngineSweep = EngineSweep(),
    timing: Timing = Timing(),
    outputs: Outputs = Outputs(),
    progress: bool = True,
) -> dict[str, Any]:
    """Build every engine on a realistic corpus of a run's vectors and measure it.

    Args:
        run_dir: A trained run (its data must be readable); any run, e.g. a new model's.
        corpus: Corpus size, queries, seed and data.
        cap: Terms kept per image and per query.
        sweep: The engines and their settings.
        timing: Queries timed and time budgets.
        outputs: Results JSON, table, plot and work directory.
        progress: Progress bars and log lines on stderr.

    Returns:
        The report (also written to ``outputs.out``).

    Raises:
        MMSparseError: On bad sizes or an unknown engine.
    """
    from mmsparse.index.encode import encode_vectors
    from mmsparse.runs import load_run, load_run_data

    engines, seed = sweep.engines, corpus.seed
    n_images, n_queries = corpus.n_images, corpus.n_queries
    unknown = set(engines) - set(BENCH_ENGINES)
    if unknown:
        raise MMSparseError(f"unknown engine(s) {sorted(unknown)}; known: {BENCH_ENGINES}")
    if min(n_images, n_queries, timing.latency_queries, timing.sweep_queries) < 1:
        raise MMSparseError(
            "--n-images, --n-queries, --latency-queries and --sweep-queries must be >= 1"
        )
    latency_queries = min(timing.latency_queries, n_queries)
    sweep_queries = min(timing.sweep_queries, n_queries)
    out, work = outputs.out, outputs.work
    load_start = load_average()
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    run = load_run(run_dir)
    store = load_run_data(run, corpus.data)
    ev = run.config.serving
    image_topk = ev.image_topk if cap.image_topk is None else cap.image_topk
    text_topk = ev.text_topk if cap.text_topk is None else cap.text_topk
    img_dense, img_sparse = encode_vectors(
        run.model,
        store.image_feats,
        "image",
        topk=image_topk,
        threshold=ev.threshold,
        progress=progress,
    )
    n_cap = len(store.caption_ids)
    q_rows = rng.choice(n_cap, size=n_queries, replace=n_queries > n_cap)
    q_dense, q_sparse = encode_vectors(
        run.model,
        store.caption_feats[q_rows],
        "text",
        topk=text_topk,
        threshold=ev.threshold,
        progress=progress,
    )
    if run.model.inference_free:
        # Inference-free queries: the captions' own terms looked up (the dense queries stay
        # the dense head's, the faiss baseline).
        from mmsparse.evaluate.retrieval import lookup_split_queries

        q_cfg = dataclasses.replace(ev, text_topk=text_topk)
        q_sparse = lookup_split_queries(run.model, store, q_rows, q_cfg).numpy()
    q_sparse = sp.csr_matrix(q_sparse, dtype=np.float32)
    q_sparse.sort_indices()
    sparse, dense = synthesize_corpus(img_sparse, img_dense, n_images, seed=seed, progress=progress)
    report: dict[str, Any] = {
        "run": str(Path(run_dir).resolve()),
        "data": str(store.root),
        "n_images": int(n_images),
        "n_real_images": int(img_sparse.shape[0]),
        "n_queries": int(n_queries),
        "sweep_queries": int(sweep_queries),
        "k": K,
        "seed": seed,
        "corpus": {
            "how": "real image vectors first, then z = z_s*exp(0.2 eps)*Bernoulli(0.7) + "
            "0.8*z_s'*exp(0.2 eps')*Bernoulli(0.3), "
            "e = normalize(0.75 e_s + 0.25 e_s' + 0.1 xi/sqrt(d)) "
            "(see mmsparse.bench.retrieval)",
            "mean_terms_per_image": round(sparse.nnz / n_images, 2),
            "mean_terms_per_real_image": round(img_sparse.nnz / img_sparse.shape[0], 2),
            "mean_terms_per_query": round(q_sparse.nnz / n_queries, 2),
            "vocab_size": int(sparse.shape[1]),
            "dense_dim": int(dense.shape[1]),
            "image_topk": image_topk,
            "text_topk": text_topk,
            "threshold": ev.threshold,
        },
        "machine": machine_record(load_start),
        "engines": {},
        "sweeps": {},
    }
    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="mmsparse-bench-")
        work_dir = Path(tmp.name)
    else:
        work_dir = Path(work)
        work_dir.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # partial results survive an interrupted run
        report["machine"] = machine_record(load_start)
        if out:
            atomic_write_json(out, report)

    budgets = {
        "n_lat": latency_queries,
        "lat_s": timing.latency_budget,
        "serial_s": timing.serial_budget,
        "n_sweep": sweep_queries,
    }
    try:
        truth_sparse = _bench_inverted(
            report, work_dir, sparse, q_sparse, budgets, "inverted" in engines, progress
        )
        save()
        for mode in ("uint8", "uint16"):
            if f"inverted-{mode}" in engines:
                _bench_inverted_quantized(
                    report, work_dir, sparse, q_sparse, truth_sparse, budgets, mode, progress
                )
                save()
        if "faiss-flat" in engines or "faiss-hnsw" in engines:
            _bench_faiss(
                report,
                work_dir,
                dense,
                q_dense,
                truth_sparse,
                budgets,
                engines,
                {**DEFAULT_HNSW, **sweep.hnsw},
                sweep.hnsw_ef,
                progress,
            )
            save()
        if "seismic" in engines:
            _bench_seismic(
                report,
                work_dir,
                sparse,
                q_sparse,
                truth_sparse,
                budgets,
                {**DEFAULT_SEISMIC_BUILD, **sweep.seismic_build},
                sweep.seismic_search,
                progress,
            )
            save()
        if "inverted-blockmax" in engines:
            _bench_blockmax(report, sparse, q_sparse, truth_sparse, budgets, sweep.blockmax_bsize)
            save()
        if "bmp" in engines:
            _bench_bmp(report, work_dir, sparse, q_sparse, truth_sparse, budgets, sweep.bmp_bsize)
            save()
        if "kannolo" in engines:
            m = min(sweep.kannolo_images, n_images)
            sub_truth = truth_sparse if m == n_images else None
            _bench_kannolo(
                report,
                work_dir,
                sparse[:m],
                q_sparse,
                sub_truth,
                budgets,
                {**DEFAULT_KANNOLO, **sweep.kannolo},
                sweep.kannolo_ef,
                progress,
            )
            save()
        if "milvus" in engines:
            _bench_milvus(
                report,
                work_dir,
                sparse,
                dense,
                q_sparse,
                min(sweep.milvus_images, n_images),
                latency_queries,
                progress,
            )
    finally:
        if tmp is not None:
            tmp.cleanup()
    report["machine"] = machine_record(load_start)
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    if out:
        atomic_write_json(out, report)
    if outputs.table:
        atomic_write_text(outputs.table, format_bench_table(report) + "\n")
    if outputs.plot:
        plot_latency_recall(report, outputs.plot)
    return report


def _log(progress: bool, msg: str, *args: Any) -> None:
    if progress:
        log.info(msg, *args)


def _build_engine(
    skipped: dict[str, Any],
    name: str,
    directory: Path,
    sparse: sp.csr_matrix,
    params: dict[str, Any],
    *,
    dense: np.ndarray | None = None,
    label: str | None = None,
) -> tuple[Any, float] | None:
    """Build and open a registry engine on the corpus: ``(engine, build seconds)``.

    A missing optional package is recorded under ``skipped[label or name]``; ``None``.
    """
    from mmsparse.index.engines import get_engine

    cls = get_engine(name)
    try:
        t0 = time.perf_counter()
        built = cls.build(directory, sparse, dense, params=params)
        seconds = time.perf_counter() - t0
    except MissingExtraError as exc:
        skipped[label or name] = {"skipped": str(exc)}
        return None
    engine = cls.open(directory, built, n_docs=sparse.shape[0], vocab_size=sparse.shape[1])
    return engine, seconds


def _bench_inverted(
    report: dict[str, Any],
    work: Path,
    sparse: sp.csr_matrix,
    q_sparse: sp.csr_matrix,
    budgets: dict[str, Any],
    measure: bool,
    progress: bool,
) -> np.ndarray:
    """Build and measure ``inverted``; return the exact sparse top-10 of every query."""
    from mmsparse.index.inverted import InvertedIndex, write_postings

    n = sparse.shape[0]
    _log(progress, "inverted: building %d images", n)
    t0 = time.perf_counter()
    path = work / "inverted" / "postings.mmsi"
    write_postings(path, sparse)
    index = InvertedIndex(path, verify=True).prepare()  # dense columns of the longest lists
    build = time.perf_counter() - t0
    index.search_batch(q_sparse[:2], K)  # warm-up: numba load and thread pool start
    index.search_batch(q_sparse[:1], K, threads=1)
    _log(progress, "inverted: exact top-%d of %d queries", K, q_sparse.shape[0])
    t0 = time.perf_counter()
    hits = index.search_batch(q_sparse, K)
    batch_s = time.perf_counter() - t0
    truth = hits.rows
    # Check exactness against scipy brute force on a sample of queries.
    sample = np.arange(min(20, q_sparse.shape[0]))
    ref = (q_sparse[sample].astype(np.float64) @ sparse.T.astype(np.float64)).toarray()
    for i in sample:
        r = np.flatnonzero(ref[i] > 0)
        want = r[np.lexsort((r, -ref[i][r]))][:K]
        got, scores = hits.query(int(i))
        np.testing.assert_allclose(scores, ref[i][want], rtol=1e-4, atol=1e-5)
        if not np.array_equal(got, want) and not np.allclose(ref[i][got], ref[i][want], 1e-5):
            raise MMSparseError("inverted index disagrees with brute force (bug)")
    if measure:
        _log(progress, "inverted: single-thread queries")
        rows_q = [q_sparse[i] for i in range(budgets["n_lat"])]
        lat = _latency(
            lambda i: index.search_batch(rows_q[i], K, threads=1),
            budgets["n_lat"],
            budgets["lat_s"],
        )
        report["engines"]["inverted"] = {
            "kind": "sparse, exact (reads every posting of every query term)",
            "n_images": n,
            "build_seconds": _sig(build),
            "bytes_per_image": round(index.nbytes / n, 1),
            "dense_columns_bytes_per_image": round(index.dense_bytes / n, 1),
            **lat,
            "batch_qps": round(q_sparse.shape[0] / batch_s, 1),
            "batch_threads": os.cpu_count(),
            "recall@10_vs_exact_sparse": 1.0,
            "postings_per_query": round(float(postings_per_query(sparse, q_sparse).mean())),
            "checked_vs_bruteforce_queries": int(sample.size),
            "backend": index.backend,
        }
    return truth


def _bench_inverted_quantized(
    report: dict[str, Any],
    work: Path,
    sparse: sp.csr_matrix,
    q_sparse: sp.csr_matrix,
    truth: np.ndarray,
    budgets: dict[str, Any],
    mode: str,
    progress: bool,
) -> None:
    """``inverted`` on integer impacts (``uint8``/``uint16``): exact on the quantised vectors."""
    from mmsparse.index.inverted import InvertedIndex, write_postings

    name = f"inverted-{mode}"
    n = sparse.shape[0]
    _log(progress, "%s: building %d images", name, n)
    t0 = time.perf_counter()
    path = work / name / "postings.mmsi"
    write_postings(path, sparse, quantize_mode=mode)
    index = InvertedIndex(path, verify=True).prepare()
    build = time.perf_counter() - t0
    index.search_batch(q_sparse[:2], K)
    index.search_batch(q_sparse[:1], K, threads=1)
    t0 = time.perf_counter()
    hits = index.search_batch(q_sparse, K)
    batch_s = time.perf_counter() - t0
    rows_q = [q_sparse[i] for i in range(budgets["n_lat"])]
    lat = _latency(
        lambda i: index.search_batch(rows_q[i], K, threads=1), budgets["n_lat"], budgets["lat_s"]
    )
    report["engines"][name] = {
        "kind": f"sparse, exact at {mode} impacts (float queries)",
        "n_images": n,
        "build_seconds": _sig(build),
        "bytes_per_image": round(index.nbytes / n, 1),
        "dense_columns_bytes_per_image": round(index.dense_bytes / n, 1),
        **lat,
        "batch_qps": round(q_sparse.shape[0] / batch_s, 1),
        "batch_threads": os.cpu_count(),
        "recall@10_vs_exact_sparse": round(recall_at_k(hits.rows, truth), 4),
        "postings_per_query": round(float(postings_per_query(sparse, q_sparse).mean())),
        "backend": index.backend,
    }
    path.unlink()


def _bench_blockmax(
    report: dict[str, Any],
    sparse: sp.csr_matrix,
    q_sparse: sp.csr_matrix,
    truth: np.ndarray,
    budgets: dict[str, Any],
    bsize: int,
) -> None:
    from mmsparse.index.blockmax import BlockMaxIndex

    name = "inverted-blockmax"
    if not kernels.numba_available():
        report["engines"][name] = {"skipped": "needs numba: pip install 'mmsparse[index]'"}
        return
    n = sparse.shape[0]
    log.info("%s: building %d images (block size %d)", name, n, bsize)
    t0 = time.perf_counter()
    index = BlockMaxIndex(sparse, bsize=bsize)
    build = time.perf_counter() - t0
    index.search_batch(q_sparse[:1], K)  # numba compile / cache load
    reads: list[int] = []
    blocks: list[int] = []

    def one(i: int) -> np.ndarray:
        rows = index.search_batch(q_sparse[i], K).rows[0]
        reads.append(int(index.last_read[0]))
        blocks.append(int(index.last_blocks[0]))
        return rows

    rows, times = _serial(one, q_sparse.shape[0], budgets["serial_s"])
    m = rows.shape[0]
    report["engines"][name] = {
        "kind": f"sparse, exact (own block-max pruning, {bsize} images per block)",
        "n_images": n,
        "build_seconds": _sig(build),
        "bytes_per_image": round(index.nbytes / n, 1),
        "bytes_note": "in memory: forward index + block maxima (not written to disk)",
        **_times_summary(times),
        "batch_qps": round(m / times.sum(), 1),
        "batch_threads": 1,
        "recall@10_vs_exact_sparse": round(recall_at_k(rows, truth[:m]), 4),
        "identical_to_inverted": bool(np.array_equal(rows, truth[:m, : rows.shape[1]])),
        "postings_per_query": round(float(np.mean(reads))),
        "postings_note": "block maxima + forward-index entries of the scored blocks",
        "blocks_scored_fraction": round(float(np.mean(blocks)) / index.n_blocks, 4),
        "queries": int(m),
    }


def _bench_bmp(
    report: dict[str, Any],
    work: Path,
    sparse: sp.csr_matrix,
    q_sparse: sp.csr_matrix,
    truth: np.ndarray,
    budgets: dict[str, Any],
    bsize: int,
) -> None:
    n = sparse.shape[0]
    log.info("bmp: building %d images (block size %d)", n, bsize)
    d = work / "bmp"
    built = _build_engine(report["engines"], "bmp", d, sparse, {"bsize": bsize})
    if built is None:
        return
    engine, build = built
    rows, times = _serial(
        lambda i: engine.search_batch(q_sparse[i], K).rows[0],
        q_sparse.shape[0],
        budgets["serial_s"],
    )
    m = rows.shape[0]
    report["engines"]["bmp"] = {
        "kind": f"sparse, exact at 8-bit impacts / integer queries (bmp, {bsize} per block)",
        "n_images": n,
        "build_seconds": _sig(build),
        "bytes_per_image": round(engine.nbytes / n, 1),
        "bytes_note": "bmp index + the stored impacts (for explanations and the tie fallback)",
        **_times_summary(times),
        "batch_qps": round(m / times.sum(), 1),
        "batch_threads": 1,
        "recall@10_vs_exact_sparse": round(recall_at_k(rows, truth[:m]), 4),
        "postings_per_query": None,
        "postings_note": "bmp does not report it (inverted-blockmax runs the same algorithm)",
        "bruteforce_fallbacks": int(engine.fallbacks),
        "queries": int(m),
    }
    engine.close()
    engine.remove_files(d)


def _bench_faiss(
    report: dict[str, Any],
    work: Path,
    dense: np.ndarray,
    q_dense: np.ndarray,
    truth_sparse: np.ndarray,
    budgets: dict[str, Any],
    engines: Sequence[str],
    hnsw: dict[str, int],
    hnsw_ef: Sequence[int],
    progress: bool,
) -> None:
    from mmsparse.errors import require_extra

    try:
        faiss = require_extra("faiss", "index", "The faiss dense baselines (faiss-cpu)")
    except MissingExtraError as exc:
        for name in ("faiss-flat", "faiss-hnsw"):
            if name in engines:
                report["engines"][name] = {"skipped": str(exc)}
        return
    n, d = dense.shape
    n_lat, lat_s, n_sweep = budgets["n_lat"], budgets["lat_s"], budgets["n_sweep"]
    all_threads = faiss.omp_get_max_threads()
    xb = np.ascontiguousarray(dense, dtype=np.float32)
    xq = np.ascontiguousarray(q_dense, dtype=np.float32)
    _log(progress, "faiss-flat: %d images", n)
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(xb)
    build = time.perf_counter() - t0
    faiss.write_index(flat, str(work / "flat.faiss"))
    flat_bytes = (work / "flat.faiss").stat().st_size
    (work / "flat.faiss").unlink()
    t0 = time.perf_counter()
    _, truth_dense = flat.search(xq, K)
    batch_s = time.perf_counter() - t0
    if "faiss-flat" in engines:
        faiss.omp_set_num_threads(1)
        lat = _latency(lambda i: flat.search(xq[i : i + 1], K), n_lat, lat_s)
        faiss.omp_set_num_threads(all_threads)
        report["engines"]["faiss-flat"] = {
            "kind": "dense, exact (IndexFlatIP)",
            "n_images": n,
            "build_seconds": _sig(build),
            "bytes_per_image": round(flat_bytes / n, 1),
            **lat,
            "batch_qps": round(xq.shape[0] / batch_s, 1),
            "batch_threads": all_threads,
            "recall@10_vs_exact_sparse": round(recall_at_k(truth_dense, truth_sparse), 4),
            "recall@10_vs_exact_dense": 1.0,
        }
    flat.reset()
    if "faiss-hnsw" not in engines:
        return
    _log(progress, "faiss-hnsw: building M=%d efConstruction=%d", hnsw["M"], hnsw["efConstruction"])
    t0 = time.perf_counter()
    index = faiss.IndexHNSWFlat(d, int(hnsw["M"]), faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = int(hnsw["efConstruction"])
    index.add(xb)
    build = time.perf_counter() - t0
    faiss.write_index(index, str(work / "hnsw.faiss"))
    hnsw_bytes = (work / "hnsw.faiss").stat().st_size
    (work / "hnsw.faiss").unlink()
    points = []
    for ef in hnsw_ef:
        index.hnsw.efSearch = int(ef)
        t0 = time.perf_counter()
        _, found = index.search(xq[:n_sweep], K)
        batch_s = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)
        lat = _latency(lambda i: index.search(xq[i : i + 1], K), n_lat, lat_s)
        faiss.omp_set_num_threads(all_threads)
        points.append(
            {
                "setting": {"efSearch": int(ef)},
                **lat,
                "batch_qps": round(n_sweep / batch_s, 1),
                "recall@10_vs_exact_dense": round(recall_at_k(found, truth_dense[:n_sweep]), 4),
                "recall@10_vs_exact_sparse": round(recall_at_k(found, truth_sparse[:n_sweep]), 4),
            }
        )
        _log(progress, "faiss-hnsw: %s", points[-1])
    report["sweeps"]["faiss-hnsw"] = {
        "kind": "dense, approximate (IndexHNSWFlat)",
        "recall_against": "exact dense (IndexFlatIP)",
        "build": dict(hnsw),
        "n_images": n,
        "build_seconds": _sig(build),
        "bytes_per_image": round(hnsw_bytes / n, 1),
        "batch_threads": all_threads,
        "points": points,
        "at_recall": at_recall(points, "recall@10_vs_exact_dense"),
    }


def _sweep_sparse_engine(
    name: str,
    engine: Any,
    settings: Sequence[dict[str, Any]],
    q_sparse: sp.csr_matrix,
    truth: np.ndarray,
    budgets: dict[str, Any],
    progress: bool,
) -> list[dict[str, Any]]:
    """One point per search setting of an approximate sparse engine.

    Each point has the batch throughput over the first ``n_sweep`` queries (all threads),
    the single-query latency of the first ``n_lat`` (one thread) and recall@10 against the
    exact sparse ranking ``truth``. ``engine.search_batch(queries, k, threads=, **setting)``
    is the engine's search.
    """
    n_lat, lat_s, n_sweep = budgets["n_lat"], budgets["lat_s"], budgets["n_sweep"]
    rows_q = [q_sparse[i] for i in range(n_lat)]
    sweep_q = q_sparse[:n_sweep]
    points = []
    for setting in settings:
        t0 = time.perf_counter()
        hits = engine.search_batch(sweep_q, K, **setting)
        batch_s = time.perf_counter() - t0
        lat = _latency(
            lambda i, kw=setting: engine.search_batch(rows_q[i], K, threads=1, **kw), n_lat, lat_s
        )
        points.append(
            {
                "setting": dict(setting),
                **lat,
                "batch_qps": round(n_sweep / batch_s, 1),
                "recall@10_vs_exact_sparse": round(recall_at_k(hits.rows, truth[:n_sweep]), 4),
            }
        )
        _log(progress, "%s: %s", name, points[-1])
    return points


def _bench_seismic(
    report: dict[str, Any],
    work: Path,
    sparse: sp.csr_matrix,
    q_sparse: sp.csr_matrix,
    truth: np.ndarray,
    budgets: dict[str, Any],
    build_params: dict[str, Any],
    settings: Sequence[tuple[int, float]],
    progress: bool,
) -> None:
    n = sparse.shape[0]
    _log(progress, "seismic: building %d images %s", n, build_params)
    d = work / "seismic"
    built = _build_engine(report["engines"], "seismic", d, sparse, build_params)
    if built is None:
        return
    engine, build = built
    engine.search_batch(q_sparse[:2], K)  # warm-up
    points = _sweep_sparse_engine(
        "seismic",
        engine,
        [{"query_cut": qc, "heap_factor": hf} for qc, hf in settings],
        q_sparse,
        truth,
        budgets,
        progress,
    )
    report["sweeps"]["seismic"] = {
        "kind": "sparse, approximate (Seismic)",
        "recall_against": "exact sparse (inverted)",
        "build": dict(engine.params["build"]),
        "n_images": n,
        "build_seconds": _sig(build),
        "bytes_per_image": round(engine.nbytes / n, 1),
        "batch_threads": os.cpu_count(),
        "points": points,
        "at_recall": at_recall(points, "recall@10_vs_exact_sparse"),
    }
    engine.close()
    engine.remove_files(d)


def _bench_kannolo(
    report: dict[str, Any],
    work: Path,
    sparse: sp.csr_matrix,
    q_sparse: sp.csr_matrix,
    truth: np.ndarray | None,
    budgets: dict[str, Any],
    build_params: dict[str, int],
    efs: Sequence[int],
    progress: bool,
) -> None:
    n = sparse.shape[0]
    if truth is None:  # a subset of the corpus: its own exact ranking
        truth = exact_sparse_topk(sparse, q_sparse[: budgets["n_sweep"]])
    _log(progress, "kannolo: building %d images %s", n, build_params)
    d = work / "kannolo"
    built = _build_engine(report["engines"], "kannolo", d, sparse, build_params)
    if built is None:
        return
    engine, build = built
    settings = [{"ef_search": int(ef)} for ef in efs]
    points = _sweep_sparse_engine("kannolo", engine, settings, q_sparse, truth, budgets, progress)
    report["sweeps"]["kannolo"] = {
        "kind": "sparse, approximate (kannolo SparsePlainHNSW)",
        "recall_against": "exact sparse of the same images",
        "build": dict(build_params),
        "n_images": n,
        "build_seconds": _sig(build),
        "bytes_per_image": round(engine.nbytes / n, 1),
        "batch_threads": os.cpu_count(),
        "points": points,
        "at_recall": at_recall(points, "recall@10_vs_exact_sparse"),
    }
    engine.close()
    engine.remove_files(d)


def _bench_milvus(
    report: dict[str, Any],
    work: Path,
    sparse: sp.csr_matrix,
    dense: np.ndarray,
    q_sparse: sp.csr_matrix,
    m: int,
    n_lat: int,
    progress: bool,
) -> None:
    sub_sparse, sub_dense = sparse[:m], dense[:m]
    truth = exact_sparse_topk(sub_sparse, q_sparse)
    _log(progress, "milvus-lite: building %d images", m)
    mdir = work / "milvus"
    built = _build_engine(
        report["engines"], "milvus", mdir, sub_sparse, {}, dense=sub_dense, label="milvus-lite"
    )
    if built is None:
        return
    engine, build = built
    try:
        n_q = min(q_sparse.shape[0], MILVUS_MAX_QUERIES)
        n_lat = min(n_lat, MILVUS_MAX_LATENCY)
        engine.search_batch(q_sparse[:1], K)  # warm-up
        t0 = time.perf_counter()
        rows = np.full((n_q, K), -1, dtype=np.int64)
        for s in range(0, n_q, 100):
            rows[s : s + 100] = engine.search_batch(q_sparse[s : min(s + 100, n_q)], K).rows
        batch_s = time.perf_counter() - t0
        rows_q = [q_sparse[i] for i in range(n_lat)]
        lat = _latency(lambda i: engine.search_batch(rows_q[i], K), n_lat)
        report["engines"]["milvus-lite"] = {
            "kind": "sparse, exact (SPARSE_INVERTED_INDEX, milvus-lite)",
            "n_images": m,
            "build_seconds": _sig(build),
            "bytes_per_image": round(_dir_bytes(mdir / "milvus.db") / m, 1),
            "bytes_note": "dense and sparse vectors together",
            **lat,
            "batch_qps": round(n_q / batch_s, 1),
            "batch_threads": "milvus-lite server",
            "recall@10_vs_exact_sparse": round(recall_at_k(rows, truth[:n_q]), 4),
            "batch_queries": int(n_q),
        }
    finally:
        engine.close()


def _fmt_setting(setting: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items())


def _recall_key(sweep: dict[str, Any]) -> str:
    return (
        "recall@10_vs_exact_dense"
        if "dense" in sweep["recall_against"]
        else "recall@10_vs_exact_sparse"
    )


def format_bench_table(report: dict[str, Any]) -> str:
    """The benchmark as markdown: engines (approximate ones at equal recall), then sweeps."""
    head = (
        "| engine | images | build s | bytes/image | p50 ms (1 thread) | p99 ms | "
        "batch QPS | recall@10 vs exact sparse | recall@10 vs exact dense | postings/query |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]

    def row(name: str, r: dict[str, Any], base: dict[str, Any]) -> str:
        dense = r.get("recall@10_vs_exact_dense")
        sparse_r = r.get("recall@10_vs_exact_sparse")
        post = r.get("postings_per_query")
        return (
            f"| {name} | {base['n_images']:,} | {base['build_seconds']:.3g} | "
            f"{base['bytes_per_image']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
            f"{r['batch_qps']:.0f} | {'' if sparse_r is None else f'{sparse_r:.3f}'} | "
            f"{'' if dense is None else f'{dense:.3f}'} | "
            f"{'' if post is None else f'{post:,}'} |"
        )

    for name, r in report["engines"].items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | | | | | |")
            continue
        lines.append(row(name, r, r))
    for name, sw in report.get("sweeps", {}).items():
        key = _recall_key(sw)
        for target, point in sw["at_recall"].items():
            if point is None:
                best = max(sw["points"], key=lambda p, key=key: p[key])
                lines.append(
                    f"| {name} recall >= {target}: not reached (best {best[key]:.3f} at "
                    f"{_fmt_setting(best['setting'])}, p50 {best['p50_ms']:.3f} ms) "
                    "| | | | | | | | | |"
                )
            else:
                lines.append(row(f"{name} @{target} ({_fmt_setting(point['setting'])})", point, sw))
    c = report["corpus"]
    lines.append("")
    lines.append(
        f"{report['n_images']:,} images ({report['n_real_images']:,} real), "
        f"{report['n_queries']:,} real caption queries ({report.get('sweep_queries', '')} for "
        f"the sweeps); {c['mean_terms_per_image']} terms per image, "
        f"{c['mean_terms_per_query']} per query; machine: {describe_machine(report['machine'])}."
    )
    sweeps = report.get("sweeps", {})
    if sweeps:
        lines += [
            "",
            "| sweep | setting | recall@10 (own exact) | p50 ms | p99 ms | batch QPS |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for name, sw in sweeps.items():
            key = _recall_key(sw)
            for p in sw["points"]:
                lines.append(
                    f"| {name} ({sw['n_images']:,} images) | {_fmt_setting(p['setting'])} | "
                    f"{p[key]:.3f} | {p['p50_ms']:.3f} | {p['p99_ms']:.3f} | "
                    f"{p['batch_qps']:.0f} |"
                )
    return "\n".join(lines)


def plot_latency_recall(report: dict[str, Any], path: str | Path) -> None:
    """Single-thread p50 latency against recall@10 (each engine against its own exact ranking).

    Raises:
        MissingExtraError: If matplotlib is not installed.
    """
    from mmsparse.bench.common import pyplot, save_png

    fig, ax = pyplot("The latency/recall plot (matplotlib)").subplots(figsize=(7, 4.5))
    for name, sw in report.get("sweeps", {}).items():
        key = _recall_key(sw)
        xs = [p[key] for p in sw["points"]]
        ys = [p["p50_ms"] for p in sw["points"]]
        label = f"{name} ({sw['n_images']:,} images)"
        ax.plot(xs, ys, marker="o", label=label)
    markers = iter("s^vDP*X")
    for name, r in report["engines"].items():
        if "skipped" in r:
            continue
        x = r.get("recall@10_vs_exact_dense") if name.startswith("faiss") else None
        x = r.get("recall@10_vs_exact_sparse") if x is None else x
        how = "exact" if x == 1.0 else "exact at its quantisation"
        ax.scatter(
            [x],
            [r["p50_ms"]],
            marker=next(markers, "o"),
            s=60,
            zorder=3,
            label=f"{name} ({r['n_images']:,} images, {how})",
        )
    for target in RECALL_TARGETS:
        ax.axvline(target, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 against the engine's own exact ranking (sparse or dense)")
    ax.set_ylabel("p50 latency, one thread (ms)")
    m = report["machine"]
    load = m["load_average"]
    ax.set_title(
        f"{report['n_images']:,} images, load {(load['start'] or ['?'])[0]}-"
        f"{(load['end'] or ['?'])[0]} on {m['cpus']} CPUs",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    save_png(fig, path, dpi=120)
