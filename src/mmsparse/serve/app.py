"""The FastAPI application of ``mmsparse serve``: JSON API, image files and the web page.

:func:`create_app` opens the index once (a :class:`~mmsparse.serve.service.SearchService`)
and returns an ASGI application; any ASGI server runs it (``mmsparse serve`` uses uvicorn).
Every error is a JSON object ``{"error": "one line", "status": N}``: 4xx for bad input
(400, 404 for an unknown image or route), 503 when too many searches are in flight, and a
one-line 500 for a bug (never a traceback).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from mmsparse import __version__
from mmsparse.errors import MMSparseError, require_extra
from mmsparse.serve.service import (
    BadRequest,
    SearchService,
    ServeLimits,
    check_utf8_query_string,
    http_error,
    one_line,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
ENV_CONFIG = "MMSPARSE_SERVE_CONFIG"


def create_app(
    index_dir: str | Path | None = None,
    *,
    run_dir: str | Path | None = None,
    data: str | Path | None = None,
    bundle: str | Path | None = None,
    images_dir: str | Path | None = None,
    text_encoder: Any = None,
    encoder: str = "batch",
    limits: ServeLimits | None = None,
    service: SearchService | None = None,
) -> Any:
    """The ASGI application serving one index.

    Args:
        index_dir: Directory written by ``mmsparse index build``.
        run_dir: Encode queries with this run (default: the index's).
        data: Feature directory of the index's data (default: the index's).
        bundle: Backbone bundle directory (default: the run's).
        images_dir: Folder of the image files (default: ``images/`` next to the data).
        text_encoder: Replaces the run's text encoder (an object with ``encode(texts)``).
        encoder: ``batch`` or ``threads`` (see :mod:`mmsparse.serve.service`).
        limits: :class:`~mmsparse.serve.service.ServeLimits` (caps and queue bound).
        service: An already opened service (then the other arguments are ignored).

    Returns:
        A FastAPI application; ``app.state.service`` is its
        :class:`~mmsparse.serve.service.SearchService`.

    Raises:
        MissingExtraError: If FastAPI is not installed (``pip install 'mmsparse[serve]'``).
        IndexFormatError: If the index is missing, corrupt or stale (as ``mmsparse search``).

    Example:
        >>> app = create_app("indexes/f8k-val")                 # doctest: +SKIP
        >>> import uvicorn; uvicorn.run(app, port=8000)         # doctest: +SKIP
    """
    fastapi = require_extra("fastapi", "serve", "mmsparse serve")
    from fastapi import Path as PathParam
    from fastapi import Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if service is None:
        if index_dir is None:
            raise MMSparseError("create_app needs an index directory")
        service = SearchService(
            index_dir,
            run_dir=run_dir,
            data=data,
            bundle=bundle,
            images_dir=images_dir,
            text_encoder=text_encoder,
            encoder=encoder,
            limits=limits,
        )
    svc = service

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        svc.close()

    app = fastapi.FastAPI(
        lifespan=lifespan,
        title="mmsparse search",
        version=__version__,
        description="Text-to-image search with a trained mmsparse run: ranked images, "
        "and the sparse terms that explain every match. See docs/serving.md.",
    )
    app.state.service = svc

    def error(status: int, message: str) -> Any:
        return JSONResponse({"error": one_line(message), "status": status}, status_code=status)

    def from_exception(exc: BaseException) -> Any:
        status, body, headers = http_error(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(MMSparseError)  # BadRequest, Overloaded and the library's errors
    async def _mmsparse_error(request: Request, exc: MMSparseError) -> Any:
        return from_exception(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Any:
        parts = []
        for err in exc.errors():
            loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body")]
            parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
        return error(400, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Any:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            message = f"not found: {request.url.path[:80]}"
        return error(exc.status_code, message)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Any:
        log.exception("internal error on %s", request.url.path)
        return from_exception(exc)

    app.add_middleware(_StrictUtf8)

    @app.get("/healthz", tags=["service"], summary="Liveness and load")
    async def healthz() -> dict[str, Any]:
        """``{"status": "ok", "in_flight", "served", "refused", "uptime_s"}``."""
        return svc.health()

    @app.get("/api/info", tags=["service"], summary="The run, engine and index options")
    async def info() -> dict[str, Any]:
        """Run, engine, vocabulary size, number of images, options, modes and limits."""
        return svc.info()

    @app.get("/api/search", tags=["search"], summary="Ranked images for a text query")
    async def search(
        q: str | None = Query(None, description="query text (or use `like`)"),
        like: str | None = Query(None, description="image id: search by its sparse vector"),
        k: str | None = Query(None, description=f"results, 1 to {svc.limits.max_k} (10)"),
        mode: str | None = Query(None, description="sparse (default), dense or hybrid"),
        explain: str | None = Query(
            None, description="true (default): per hit the shared terms and contributions"
        ),
        force: str | None = Query(
            None, description="true: hits even when the verdict is no_match (false)"
        ),
    ) -> dict[str, Any]:
        """Ranked hits (image id, file name, URL, score) and the query's terms.

        With ``explain`` every hit lists the terms it shares with the query, each with query
        weight x image weight = contribution; the contributions sum to ``sparse_score``,
        which is the hit's ``score`` in sparse mode.

        ``confidence`` (text queries) is the verdict: ``confident``, ``low_confidence`` or
        ``no_match`` with its reasons, the known and unknown words and the top score's
        percentile among real queries; a ``no_match`` query answers no hits unless
        ``force=true``.
        """
        return await svc.search(q, like=like, k=k, mode=mode, explain=explain, force=force)

    @app.get("/api/images/{image_id}/terms", tags=["search"], summary="An image's heaviest terms")
    async def image_terms(
        image_id: str = PathParam(..., description="image id of the index"),
        k: str | None = Query(None, description=f"terms, 1 to {svc.limits.max_terms_k} (20)"),
    ) -> dict[str, Any]:
        """The image's indexed sparse terms with their weights, heaviest first."""
        return await svc.image_terms(image_id, k)

    @app.get("/images/{name:path}", tags=["files"], summary="An indexed image file")
    async def image_file(name: str) -> Any:
        """The image file of an indexed file name (never a path outside the images folder)."""
        path = svc.image_path(name)
        return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})

    index_html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def page() -> Any:
        return HTMLResponse(index_html)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    return app


class _StrictUtf8:
    """ASGI middleware: a query string or path that is not UTF-8 gets a 400 JSON error."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            try:
                check_utf8_query_string(scope.get("query_string", b""))
                raw_path = scope.get("raw_path")
                if raw_path:
                    check_utf8_query_string(b"path=" + raw_path.replace(b"&", b"%26"))
            except BadRequest as exc:
                exc = BadRequest(str(exc).replace("path is not", "the path is not"), exc.status)
                status, payload, _ = http_error(exc)
                body = json.dumps(payload).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def app_from_env() -> Any:
    """Application factory of uvicorn's worker processes (``mmsparse serve --workers N``).

    Returns:
        :func:`create_app` of the JSON arguments in ``MMSPARSE_SERVE_CONFIG``.
    """
    raw = os.environ.get(ENV_CONFIG)
    if not raw:
        raise MMSparseError(f"{ENV_CONFIG} is not set (start the server with 'mmsparse serve')")
    cfg = json.loads(raw)
    limits = ServeLimits(**cfg.pop("limits", {}))
    return create_app(limits=limits, **cfg)
