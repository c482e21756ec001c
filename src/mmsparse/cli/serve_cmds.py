"""``mmsparse serve``: the HTTP API and web page over an index."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

from mmsparse.cli.common import add_encoder_threads, add_index_args, encoder_threads
from mmsparse.errors import MMSparseError, require_extra


def _limit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--encoder",
        choices=("batch", "threads"),
        default="batch",
        help="how queries are encoded: batched together (default) or a thread pool",
    )
    add_encoder_threads(p)
    p.add_argument(
        "--max-pending",
        type=int,
        default=64,
        help="searches in flight beyond which requests get 503 (default 64)",
    )
    p.add_argument("--max-k", type=int, default=100, help="largest k a search may ask for")
    p.add_argument(
        "--reload-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between two looks at the index for a new generation ('index add', "
        "'index remove', 'index optimize', a rebuild): the server switches to it without a "
        "restart (default 1; 0: never)",
    )


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
    p.add_argument(
        "--max-upload-mb",
        type=int,
        default=10,
        help="largest image a search by uploaded image accepts, in MB (default 10)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="let pages of ORIGIN call the API (repeatable; '*' for any); none by default",
    )
    p.add_argument(
        "--access-log", action="store_true", help="log every request on stderr (uvicorn's)"
    )
    p.add_argument(
        "--show-paths",
        action="store_true",
        help="/api/info gives the server's absolute paths (default: the run's name only)",
    )
    p.set_defaults(func=cmd_serve)


def _config(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    return {
        "index_dir": os.path.abspath(args.index),
        "run_dir": args.run,
        "data": args.data,
        "bundle": args.bundle,
        "images_dir": args.images,
        "encoder": args.encoder,
        "limits": {
            "threads": threads,
            "max_pending": args.max_pending,
            "max_k": args.max_k,
            "max_upload_mb": getattr(args, "max_upload_mb", 10),
        },
        "show_paths": bool(getattr(args, "show_paths", False)),
        "reload_interval": getattr(args, "reload_interval", 1.0),
    }


def cmd_serve(args: argparse.Namespace) -> int:
    """Run ``mmsparse serve``."""
    uvicorn = require_extra("uvicorn", "serve", "mmsparse serve")
    require_extra("fastapi", "serve", "mmsparse serve")
    from mmsparse.serve.app import ENV_CONFIG, check_port_free, create_app
    from mmsparse.serve.limits import ServeLimits
    from mmsparse.serve.service import SearchService

    threads = encoder_threads(args, uses_pool=args.encoder == "threads")
    # Every count is at least 1: with --max-k 0 or --max-pending 0 the server started and
    # then refused every request.
    for option in (
        "--workers",
        "--encoder-threads",
        "--max-pending",
        "--max-k",
        "--max-upload-mb",
    ):
        value = (
            threads
            if option == "--encoder-threads"
            else getattr(args, option[2:].replace("-", "_"))
        )
        if value < 1:
            raise MMSparseError(f"{option} must be at least 1, got {value}")
    if not 0 < args.port < 65536:
        raise MMSparseError(f"--port must be between 1 and 65535, got {args.port}")
    if not (args.reload_interval >= 0 and math.isfinite(args.reload_interval)):
        raise MMSparseError(f"--reload-interval must be >= 0 seconds, got {args.reload_interval}")

    # Before the index is opened and before 'serving at ...' is printed: a busy port was
    # uvicorn's error after that line, and exit status 3.
    check_port_free(args.host, args.port)
    cfg = _config(args, threads)
    limits = ServeLimits(**cfg.pop("limits"))
    # Open the index here, in the parent: a missing or corrupt index stops the command with
    # the one-line error 'mmsparse search' gives, before any port is bound.
    service = SearchService(limits=limits, **cfg)
    host = args.host
    where = f"http://{'[' + host + ']' if ':' in host else host}:{args.port}/"
    print(
        f"serving {service.manifest.engine} index {args.index} ({service.manifest.n_images} "
        f"images, generation {service.generation}) at {where} (API docs at {where}docs); "
        "Ctrl-C stops",
        file=sys.stderr,
    )
    if service.text_error:
        print(f"warning: text search unavailable: {service.text_error}", file=sys.stderr)
    from mmsparse.serve.app import enable_faulthandler

    enable_faulthandler()
    check = service.image_check
    if check and check["missing"]:
        print(
            f"warning: {check['missing']} of {check['checked']} indexed image files checked "
            f"are missing from {service.images_dir} (e.g. {', '.join(check['examples'])}); "
            "give the folder of the images with --images",
            file=sys.stderr,
        )
    access_log = bool(args.access_log)
    cors = args.cors_origin or None
    try:
        if args.workers == 1:
            app = create_app(service=service, cors_origins=cors)
            uvicorn.run(
                app,
                host=host,
                port=args.port,
                log_level="info" if access_log else "warning",
                access_log=access_log,
            )
            return 0
        service.close()
        from mmsparse.io_utils import json_text

        os.environ[ENV_CONFIG] = json_text(
            {**_config(args, threads), "cors_origins": cors}, indent=None, what="--config"
        )
        uvicorn.run(
            "mmsparse.serve.app:app_from_env",
            factory=True,
            host=host,
            port=args.port,
            workers=args.workers,
            log_level="info" if access_log else "warning",
            access_log=access_log,
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
