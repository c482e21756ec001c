"""``mmsparse bench serve``: a load test of ``mmsparse serve`` on 127.0.0.1."""

from __future__ import annotations

import argparse

from mmsparse.cli.common import add_encoder_threads, encoder_threads, print_json


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add ``mmsparse bench serve``."""
    p = bench_sub.add_parser(
        "serve",
        help="load test of 'mmsparse serve': latency, requests/s, errors, memory",
        description="Start 'mmsparse serve' on 127.0.0.1, send real captions of the index's "
        "split from concurrent clients, and report p50/p99 latency, requests per second, "
        "errors and the server's memory before and after (see docs/benchmarks.md).",
    )
    p.add_argument("index", help="index directory")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--requests", type=int, default=2000, help="requests in all (default 2000)")
    p.add_argument("--k", type=int, default=10, help="k of every search")
    p.add_argument(
        "--encoders",
        default="batch,threads",
        help="encoder modes to measure, one server each (default batch,threads)",
    )
    add_encoder_threads(p)
    p.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="blocks of queries, each sent to every encoder mode in turn (default 4)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the caption sample")
    p.add_argument("--out", default="benchmarks/serve.json", help="results JSON")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_bench_serve)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    """Run ``mmsparse bench serve``."""
    from mmsparse.bench.serve import bench_serve

    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    report = bench_serve(
        args.index,
        clients=args.clients,
        requests=args.requests,
        k=args.k,
        encoders=encoders,
        encoder_threads=encoder_threads(args, uses_pool="threads" in encoders),
        rounds=args.rounds,
        seed=args.seed,
        out=args.out,
        progress=not args.json,
    )
    if args.json:
        print_json(report)
    else:
        for r in report["runs"]:
            print(
                f"encoder={r['encoder']}: {r['requests']} requests, {r['clients']} clients: "
                f"p50 {r['latency_ms']['p50']:.1f} ms, p99 {r['latency_ms']['p99']:.1f} ms, "
                f"{r['requests_per_s']:.1f} requests/s, {r['errors']} errors, server memory "
                f"{r['memory_mb']['before']:.0f} -> {r['memory_mb']['after']:.0f} MB"
            )
        print(f"results written to {args.out}")
    return 0
