"""``mmsparse serve`` and ``mmsparse bench serve``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from mmsparse.cli.index_cmds import add_index_args
from mmsparse.errors import MMSparseError, require_extra


def _limit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--encoder",
        choices=("batch", "threads"),
        default="batch",
        help="how queries are encoded: batched together (default) or a thread pool",
    )
    p.add_argument("--threads", type=int, default=2, help="threads of --encoder threads")
    p.add_argument(
        "--max-pending",
        type=int,
        default=64,
        help="searches in flight beyond which requests get 503 (default 64)",
    )
    p.add_argument("--max-k", type=int, default=100, help="largest k a search may ask for")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` to ``sub``."""
    p = sub.add_parser(
        "serve",
        help="HTTP search service and web page over an index",
        description="Serve an index over HTTP: a JSON API (/api/search, /api/images/ID/terms, "
        "/images/FILE, /api/info, /healthz; OpenAPI at /docs) and a web page at / that shows "
        "why each image matched. Needs the serve extra: pip install 'mmsparse[serve]'.",
    )
    add_index_args(p, "feature directory of the index's data")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes, each with the index opened once (default 1)",
    )
    p.add_argument("--images", help="folder of the image files (default: DATA/images)")
    _limit_args(p)
    p.set_defaults(func=cmd_serve)


def register_bench(bench_sub: argparse._SubParsersAction) -> None:
    """Add ``mmsparse bench serve``."""
    p = bench_sub.add_parser(
        "serve",
        help="load test of 'mmsparse serve': latency, requests/s, errors, memory",
        description="Start 'mmsparse serve' on 127.0.0.1, send real captions of the index's "
        "split from concurrent clients, and report p50/p99 latency, requests per second, "
        "errors and the server's memory before and after (see docs/serving.md).",
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
    p.add_argument("--threads", type=int, default=2, help="threads of --encoder threads")
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


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "index_dir": os.path.abspath(args.index),
        "run_dir": args.run,
        "data": args.data,
        "bundle": args.bundle,
        "images_dir": args.images,
        "encoder": args.encoder,
        "limits": {"threads": args.threads, "max_pending": args.max_pending, "max_k": args.max_k},
    }


def cmd_serve(args: argparse.Namespace) -> int:
    """Run ``mmsparse serve``."""
    uvicorn = require_extra("uvicorn", "serve", "mmsparse serve")
    require_extra("fastapi", "serve", "mmsparse serve")
    from mmsparse.serve.app import ENV_CONFIG, create_app
    from mmsparse.serve.service import SearchService, ServeLimits, check_port_free

    # Every count is at least 1: with --max-k 0 or --max-pending 0 the server started and
    # then refused every request.
    for option in ("--workers", "--threads", "--max-pending", "--max-k"):
        value = getattr(args, option[2:].replace("-", "_"))
        if value < 1:
            raise MMSparseError(f"{option} must be at least 1, got {value}")
    if not 0 < args.port < 65536:
        raise MMSparseError(f"--port must be between 1 and 65535, got {args.port}")
    # Before the index is opened and before 'serving at ...' is printed: a busy port was
    # uvicorn's error after that line, and exit status 3.
    check_port_free(args.host, args.port)
    cfg = _config(args)
    limits = ServeLimits(**cfg.pop("limits"))
    # Open the index here, in the parent: a missing or corrupt index stops the command with
    # the one-line error 'mmsparse search' gives, before any port is bound.
    service = SearchService(limits=limits, **cfg)
    host = args.host
    where = f"http://{'[' + host + ']' if ':' in host else host}:{args.port}/"
    print(
        f"serving {service.manifest.engine} index {args.index} ({service.manifest.n_images} "
        f"images) at {where} (API docs at {where}docs); Ctrl-C stops",
        file=sys.stderr,
    )
    if service.text_error:
        print(f"warning: text search unavailable: {service.text_error}", file=sys.stderr)
    try:
        if args.workers == 1:
            app = create_app(service=service)
            uvicorn.run(app, host=host, port=args.port, log_level="warning", access_log=False)
            return 0
        service.close()
        from mmsparse.io_utils import json_text

        os.environ[ENV_CONFIG] = json_text({**_config(args)}, indent=None, what="--config")
        uvicorn.run(
            "mmsparse.serve.app:app_from_env",
            factory=True,
            host=host,
            port=args.port,
            workers=args.workers,
            log_level="warning",
            access_log=False,
        )
    except SystemExit as exc:
        # uvicorn exits (status 1 or 3) when it cannot start, e.g. when another process
        # took the port after the check above; its own message is printed already.
        if exc.code not in (0, None):
            raise MMSparseError(
                f"the server could not start at {where} (uvicorn's message above)"
            ) from None
        raise
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    """Run ``mmsparse bench serve``."""
    from mmsparse.serve.bench import bench_serve

    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    report = bench_serve(
        args.index,
        clients=args.clients,
        requests=args.requests,
        k=args.k,
        encoders=encoders,
        threads=args.threads,
        rounds=args.rounds,
        seed=args.seed,
        out=args.out,
        progress=not args.json,
    )
    if args.json:
        from mmsparse.io_utils import json_text

        sys.stdout.write(json_text(report, what="stdout") + "\n")
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
