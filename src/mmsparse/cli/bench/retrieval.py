"""``mmsparse bench retrieval``: the engines at scale (build, size, latency, QPS, recall).

The options come in the groups of :func:`mmsparse.bench.retrieval.bench_retrieval`'s
arguments: corpus, serving cap, engines and sweeps, timing, outputs.
"""

from __future__ import annotations

import argparse

from mmsparse.cli.common import parse_ints, parse_params, print_json
from mmsparse.errors import MMSparseError


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add ``mmsparse bench retrieval``."""
    p = bench_sub.add_parser(
        "retrieval",
        help="engines at scale: build time, size, latency, QPS, recall@10",
        description="Build a synthetic-but-realistic corpus from a run's real image "
        "vectors and compare exact sparse (inverted, inverted-blockmax, bmp), approximate "
        "sparse (seismic, kannolo, swept to equal recall), milvus-lite and faiss dense search "
        "(see docs/benchmarks.md).",
    )
    p.add_argument("--run", required=True, help="trained run directory")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    g = p.add_argument_group("corpus")
    g.add_argument("--data", help="feature directory (default: the run's)")
    g.add_argument(
        "--n-images",
        type=int,
        default=1_000_000,
        help="corpus size: the run's real images, then synthetic ones (default 1000000)",
    )
    g.add_argument(
        "--n-queries",
        type=int,
        default=10_000,
        help="real caption queries, for throughput and recall (default 10000)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of corpus and query sampling")

    g = p.add_argument_group("serving cap")
    g.add_argument("--image-topk", type=int, help="terms kept per image (default: the run's)")
    g.add_argument("--text-topk", type=int, help="terms kept per query (default: the run's)")

    g = p.add_argument_group("engines and sweeps")
    g.add_argument(
        "--engines",
        default="inverted,inverted-blockmax,bmp,seismic,kannolo,faiss-flat,faiss-hnsw",
        help="comma-separated subset to run (also: milvus, inverted-uint8, inverted-uint16, "
        "and any other engine of 'mmsparse index engines', by its defaults)",
    )
    for flag, what in (
        ("--seismic", "seismic build parameter, e.g. --seismic n_postings=6000"),
        ("--hnsw", "faiss HNSW build parameter: M, efConstruction"),
        ("--kannolo", "kannolo build parameter: m, ef_construction"),
    ):
        g.add_argument(
            flag, action="append", default=[], metavar="KEY=VALUE", help=f"{what} (repeatable)"
        )
    g.add_argument(
        "--seismic-search",
        default="3:0.7,5:0.8,10:0.9,20:0.9,30:1.0,50:1.0",
        help="seismic query_cut:heap_factor sweep, in increasing recall order",
    )
    g.add_argument(
        "--hnsw-ef", default="16,32,64,128,256,512,1024,2048", help="faiss efSearch sweep"
    )
    g.add_argument("--kannolo-ef", default="10,20,40,80,160,320,640", help="ef_search sweep")
    g.add_argument(
        "--kannolo-images", type=int, default=100_000, help="kannolo graph on at most this many"
    )
    g.add_argument(
        "--milvus-images",
        type=int,
        default=20_000,
        help="milvus-lite is measured on at most this many images",
    )
    g.add_argument("--bmp-bsize", type=int, default=32, help="bmp images per block")
    g.add_argument("--blockmax-bsize", type=int, default=64, help="own block-max block size")

    g = p.add_argument_group("timing")
    g.add_argument(
        "--latency-queries", type=int, default=1000, help="queries timed one by one on one thread"
    )
    g.add_argument(
        "--latency-budget", type=float, default=20.0, help="seconds of timing per engine/setting"
    )
    g.add_argument(
        "--serial-budget",
        type=float,
        default=60.0,
        help="seconds for the one-query-at-a-time exact engines (bmp, inverted-blockmax)",
    )
    g.add_argument(
        "--sweep-queries", type=int, default=2000, help="queries of every sweep point's recall"
    )

    g = p.add_argument_group("outputs")
    g.add_argument("--out", default="benchmarks/retrieval.json", help="results JSON")
    g.add_argument("--table", help="also write the markdown table to this file")
    g.add_argument("--plot", help="write the latency-against-recall PNG here")
    g.add_argument("--work", help="directory for the built indexes (default: temporary)")
    p.set_defaults(func=cmd_bench_retrieval)


def _settings(text: str) -> tuple[tuple[int, float], ...]:
    """``"10:0.9,20:0.8"`` to ``((10, 0.9), (20, 0.8))``."""
    out = []
    for item in text.split(","):
        try:
            cut, factor = item.split(":")
            out.append((int(cut), float(factor)))
        except ValueError as exc:
            raise MMSparseError(
                f"--seismic-search expects QUERY_CUT:HEAP_FACTOR[,...], got {item!r}"
            ) from exc
    return tuple(out)


def cmd_bench_retrieval(args: argparse.Namespace) -> int:
    """Run ``mmsparse bench retrieval``."""
    from mmsparse.bench.retrieval import (
        CorpusOptions,
        EngineSweep,
        Outputs,
        ServingCap,
        Timing,
        bench_retrieval,
        format_bench_table,
    )

    report = bench_retrieval(
        args.run,
        CorpusOptions(
            n_images=args.n_images, n_queries=args.n_queries, seed=args.seed, data=args.data
        ),
        cap=ServingCap(image_topk=args.image_topk, text_topk=args.text_topk),
        sweep=EngineSweep(
            engines=tuple(e.strip() for e in args.engines.split(",") if e.strip()),
            seismic_build=parse_params(args.seismic, "--seismic"),
            seismic_search=_settings(args.seismic_search),
            hnsw=parse_params(args.hnsw, "--hnsw"),
            hnsw_ef=tuple(parse_ints(args.hnsw_ef, "--hnsw-ef")),
            kannolo=parse_params(args.kannolo, "--kannolo"),
            kannolo_ef=tuple(parse_ints(args.kannolo_ef, "--kannolo-ef")),
            kannolo_images=args.kannolo_images,
            milvus_images=args.milvus_images,
            bmp_bsize=args.bmp_bsize,
            blockmax_bsize=args.blockmax_bsize,
        ),
        timing=Timing(
            latency_queries=args.latency_queries,
            latency_budget=args.latency_budget,
            serial_budget=args.serial_budget,
            sweep_queries=args.sweep_queries,
        ),
        outputs=Outputs(out=args.out, table=args.table, plot=args.plot, work=args.work),
        progress=not args.json,
    )
    if args.json:
        print_json(report)
    else:
        print(format_bench_table(report))
        print(f"results written to {args.out}")
    return 0
