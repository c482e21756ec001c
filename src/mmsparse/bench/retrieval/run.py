"""``mmsparse bench retrieval`` itself: corpus, every engine asked for, the JSON report."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from mmsparse.bench.machine import load_average, machine_record
from mmsparse.bench.retrieval.approximate import bench_kannolo, bench_seismic
from mmsparse.bench.retrieval.corpus import encode_images_and_queries, synthesize_corpus
from mmsparse.bench.retrieval.dense import bench_faiss
from mmsparse.bench.retrieval.exact import (
    bench_blockmax,
    bench_bmp,
    bench_inverted,
    bench_inverted_quantized,
    bench_milvus,
)
from mmsparse.bench.retrieval.generic import bench_registered_engine, registered_engines
from mmsparse.bench.retrieval.options import (
    BENCH_ENGINES,
    DEFAULT_HNSW,
    DEFAULT_KANNOLO,
    DEFAULT_SEISMIC_BUILD,
    CorpusOptions,
    EngineSweep,
    K,
    Outputs,
    ServingCap,
    Timing,
)
from mmsparse.bench.retrieval.report import format_bench_table, plot_latency_recall
from mmsparse.errors import MMSparseError
from mmsparse.io_utils import atomic_write_json, atomic_write_text


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
    from mmsparse.runs import load_run, load_run_data

    engines, seed = sweep.engines, corpus.seed
    n_images, n_queries = corpus.n_images, corpus.n_queries
    # every registered engine can be measured: those without a harness of their own by the
    # registry's defaults (mmsparse.bench.retrieval.generic)
    others = registered_engines(BENCH_ENGINES)
    unknown = set(engines) - set(BENCH_ENGINES) - set(others)
    if unknown:
        raise MMSparseError(f"unknown engine(s) {sorted(unknown)}; known: {BENCH_ENGINES + others}")
    if min(n_images, n_queries, timing.latency_queries, timing.sweep_queries) < 1:
        raise MMSparseError(
            "--n-images, --n-queries, --latency-queries and --sweep-queries must be >= 1"
        )
    latency_queries = min(timing.latency_queries, n_queries)
    sweep_queries = min(timing.sweep_queries, n_queries)
    out, work = outputs.out, outputs.work
    load_start = load_average()
    t_start = time.perf_counter()
    run = load_run(run_dir)
    store = load_run_data(run, corpus.data)
    ev = run.config.serving
    image_topk = ev.image_topk if cap.image_topk is None else cap.image_topk
    text_topk = ev.text_topk if cap.text_topk is None else cap.text_topk
    img_sparse, img_dense, q_sparse, q_dense = encode_images_and_queries(
        run,
        store,
        n_queries,
        seed,
        image_topk=image_topk,
        text_topk=text_topk,
        progress=progress,
    )
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
        truth_sparse = bench_inverted(
            report, work_dir, sparse, q_sparse, budgets, "inverted" in engines, progress
        )
        save()
        for mode in ("uint8", "uint16"):
            if f"inverted-{mode}" in engines:
                bench_inverted_quantized(
                    report, work_dir, sparse, q_sparse, truth_sparse, budgets, mode, progress
                )
                save()
        if "faiss-flat" in engines or "faiss-hnsw" in engines:
            bench_faiss(
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
            bench_seismic(
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
            bench_blockmax(report, sparse, q_sparse, truth_sparse, budgets, sweep.blockmax_bsize)
            save()
        if "bmp" in engines:
            bench_bmp(report, work_dir, sparse, q_sparse, truth_sparse, budgets, sweep.bmp_bsize)
            save()
        if "kannolo" in engines:
            m = min(sweep.kannolo_images, n_images)
            sub_truth = truth_sparse if m == n_images else None
            bench_kannolo(
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
        for name in others:
            if name in engines:
                bench_registered_engine(
                    report, work_dir, name, sparse, q_sparse, truth_sparse, budgets, progress
                )
                save()
        if "milvus" in engines:
            bench_milvus(
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
