"""``mmsparse bench latency``: a warm text query's time on the server, one thread, per size.

What a user of ``mmsparse serve`` waits for once the server is warm, measured where the
server measures it: every answer of ``/api/search`` carries its own ``seconds`` (``encode``,
``search``, ``total``: the query's whole handling, explanations included). For each corpus
size the benchmark

1. indexes the run's images of a split (the real ones first, then, past their number, the
   perturbed mixtures of :func:`mmsparse.bench.retrieval.synthesize_corpus`, so the posting
   lists keep the real term distribution) with :func:`mmsparse.index.build.index_vectors`,
   and calibrates it as ``mmsparse index build`` does;
2. starts ``mmsparse serve INDEX --threads 1`` as a child process and waits for ``/readyz``
   (the search path warm);
3. sends the split's real captions one at a time (after ``warmup`` untimed ones) and keeps
   the server's ``seconds`` of each answer and the client's wall time.

The report gives p50 and p99 of each. Timings depend on the machine and on everything else
it runs: take them on a quiet machine (the report records the load).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.bench.local_server import free_port, p50_p99_ms, start_server, wait_healthy
from mmsparse.bench.machine import load_average, machine_record
from mmsparse.errors import MMSparseError
from mmsparse.io_utils import atomic_write_json

DEFAULT_SIZES = (1_000, 100_000)
STAGES = ("encode", "search", "total", "client")


def build_sized_index(
    run_dir: str | Path,
    out: str | Path,
    n_images: int,
    *,
    split: str = "val",
    engine: str = "inverted",
    data: str | Path | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Index ``n_images`` images for a run: its split's real images, then synthetic ones.

    Args:
        run_dir: A trained run directory.
        out: Index directory to write.
        n_images: Corpus size (the first real images when smaller than the split).
        split: The split whose images (and, in the benchmark, captions) are used.
        engine: A registered engine.
        data: Another feature directory (default: the run's).
        seed: Seed of the synthetic mixtures.
        progress: Show progress bars.

    Returns:
        The index's ``stats`` and the number of real images in it.
    """
    from mmsparse.bench.retrieval import synthesize_corpus
    from mmsparse.index.build import index_vectors
    from mmsparse.index.confidence import calibrate_index
    from mmsparse.index.encode import encode_vectors
    from mmsparse.index.manifest import IndexOptions, run_fingerprint, vocab_sha256
    from mmsparse.runs import hybrid_weights, load_run, load_run_data

    run = load_run(run_dir)
    store = load_run_data(run, data)
    rows = store.split(split).image_rows
    cfg = run.config
    dense, sparse = encode_vectors(
        run.model,
        store.image_feats[rows],
        "image",
        topk=cfg.serving.image_topk,
        threshold=cfg.eval.threshold,
        batch_size=cfg.eval.batch_size,
        progress=progress,
    )
    sparse_n, dense_n = synthesize_corpus(
        sparse, np.asarray(dense, dtype=np.float32), n_images, seed=seed, progress=progress
    )
    n_real = min(len(rows), n_images)
    ids = [store.image_ids[i] for i in rows[:n_real]]
    names = [store.image_filenames[i] for i in rows[:n_real]]
    ids += [f"synthetic-{i:07d}" for i in range(n_real, n_images)]
    names += [""] * (n_images - n_real)
    w1, w2 = hybrid_weights(cfg, run.model)
    manifest = index_vectors(
        out,
        engine,
        sparse_n,
        dense_n,
        ids,
        names,
        manifest_fields={
            "run_dir": str(Path(run_dir).resolve()),
            "checkpoint_sha256": run_fingerprint(run_dir),
            "vocab_sha256": vocab_sha256(run.vocab.tokens),
            "split": split,
            "data_dir": str(store.root) if store.root else "",
            "w1": w1,
            "w2": w2,
        },
        options=IndexOptions(image_topk=cfg.serving.image_topk, threshold=cfg.eval.threshold),
        progress=progress,
    )
    calibrate_index(out, data=data, progress=progress)
    return {"real_images": n_real, **manifest.stats}


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def time_served_queries(
    index_dir: str | Path,
    texts: Sequence[str],
    *,
    warmup: int = 20,
    k: int = 10,
    threads: int = 1,
    startup_timeout: float = 300.0,
) -> dict[str, dict[str, float]]:
    """Serve an index and time ``texts`` one at a time (the first ``warmup`` untimed).

    Args:
        index_dir: The index to serve.
        texts: Query texts, sent in order.
        warmup: Leading queries not timed.
        k: Results per query.
        threads: The server's ``--threads``.
        startup_timeout: Seconds to wait for the server to be ready.

    Returns:
        ``{stage: {"p50_ms", "p99_ms"}}`` for the server's ``encode``, ``search`` and
        ``total`` seconds and the client's wall time (``client``).

    Raises:
        MMSparseError: If the server does not start or a query is not answered with 200.
    """
    import sys

    if len(texts) <= warmup:
        raise MMSparseError(f"{len(texts)} queries leave none to time after {warmup} warm-up")
    secs: dict[str, list[float]] = {s: [] for s in STAGES}
    with contextlib.ExitStack() as stack:
        port = free_port()
        log_path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "server.log"
        cmd = [
            sys.executable, "-m", "mmsparse", "serve", str(index_dir),
            "--port", str(port), "--threads", str(threads), "--max-k", str(max(100, k)),
        ]  # fmt: skip
        proc = start_server(stack, cmd, log_path, stop_timeout=20)
        wait_healthy(proc, port, log_path, startup_timeout, path="/readyz")  # warm
        for i, text in enumerate(texts):
            url = f"http://127.0.0.1:{port}/api/search?" + urllib.parse.urlencode(
                {"q": text, "k": k}
            )
            t0 = time.perf_counter()
            try:
                body = _get_json(url, timeout=60)
            except urllib.error.HTTPError as exc:
                raise MMSparseError(
                    f"query {i} ({text[:60]!r}) was answered {exc.code}: {exc.read()[:200]!r}"
                ) from None
            wall = time.perf_counter() - t0
            if i < warmup:
                continue
            for stage in ("encode", "search", "total"):
                secs[stage].append(float(body["seconds"][stage]))
            secs["client"].append(wall)
    return {s: p50_p99_ms(v, digits=3) for s, v in secs.items()}


def bench_latency(
    run_dir: str | Path,
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    n_queries: int = 300,
    warmup: int = 20,
    split: str = "val",
    engine: str = "inverted",
    data: str | Path | None = None,
    seed: int = 0,
    work: str | Path | None = None,
    out: str | Path | None = "benchmarks/serve_latency.json",
    progress: bool = True,
) -> dict[str, Any]:
    """Warm text-query time on the server, one thread, at each corpus size (module doc).

    Args:
        run_dir: A trained run directory (its text encoder must load, or its queries be
            inference-free).
        sizes: Corpus sizes (images).
        n_queries: Queries timed per size.
        warmup: Untimed queries sent first at each size.
        split: The split whose images start the corpus and whose captions are the queries.
        engine: The index engine.
        data: Another feature directory (default: the run's).
        seed: Seed of the caption draw and of the synthetic images.
        work: Keep the indexes here (reused when present); default a temporary folder.
        out: Results JSON (``None``: not written).
        progress: Show progress.

    Returns:
        The report: ``sizes`` maps each size to its index stats and stage percentiles.

    Raises:
        MMSparseError: On bad arguments, or a server that does not start or answer.
    """
    from mmsparse.runs import load_run, load_run_data

    if not sizes or min(sizes) < 1:
        raise MMSparseError(f"--sizes must be positive integers, got {list(sizes)}")
    if n_queries < 1 or warmup < 0:
        raise MMSparseError("--n-queries must be at least 1 and --warmup at least 0")
    load_start = load_average()
    run = load_run(run_dir)
    store = load_run_data(run, data)
    caption_rows = np.flatnonzero(store.image_split[store.caption_image] == split)
    if caption_rows.size == 0:
        raise MMSparseError(f"split {split!r} has no captions to query with")
    rng = np.random.default_rng(seed)
    total = n_queries + warmup
    rows = rng.choice(caption_rows, size=total, replace=total > caption_rows.size)
    texts = [store.caption_texts[r] for r in rows]
    report: dict[str, Any] = {
        "benchmark": "serve_latency",
        "run": str(Path(run_dir).resolve()),
        "design": f"mmsparse serve --threads 1 ({engine} engine), {split} captions one at a "
        "time, k=10, explanations on; the server's own seconds of each answer, after "
        f"{warmup} warm-up queries",
        "query_encoder": "lookup" if run.model.inference_free else "head",
        "engine": engine,
        "split": split,
        "n_queries": n_queries,
        "warmup": warmup,
        "seed": seed,
        "machine": machine_record(load_start),
        "sizes": {},
    }
    with contextlib.ExitStack() as stack:
        root = (
            Path(work)
            if work is not None
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mmsparse-lat-")))
        )
        for n in sizes:
            index_dir = root / f"index-{engine}-{n}"
            if progress:
                print(f"indexing {n:,} images", flush=True)
            if (index_dir / "index.json").is_file():
                stats = json.loads((index_dir / "index.json").read_text())["stats"]
            else:
                stats = build_sized_index(
                    run_dir, index_dir, n, split=split, engine=engine, data=data, seed=seed
                )
            if progress:
                print(f"timing {n_queries} queries at {n:,} images", flush=True)
            report["sizes"][str(int(n))] = {
                "index": stats,
                **time_served_queries(index_dir, texts, warmup=warmup),
            }
            if out:
                atomic_write_json(out, report)
    report["machine"] = machine_record(load_start)
    if out:
        atomic_write_json(out, report)
    return report


def format_latency_table(report: dict[str, Any]) -> str:
    """A markdown table: per size, p50 (p99) ms of the server's stages and the client."""
    lines = [
        f"{report['design']}; query encoder: {report['query_encoder']}; "
        f"{report['n_queries']} queries, p50 (p99) ms",
        "",
        "| images | encode | search | server total | client |",
        "|---|---|---|---|---|",
    ]
    for n, e in report["sizes"].items():
        cells = " | ".join(f"{e[s]['p50_ms']:.2f} ({e[s]['p99_ms']:.2f})" for s in STAGES)
        lines.append(f"| {int(n):,} | {cells} |")
    return "\n".join(lines)
