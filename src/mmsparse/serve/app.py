"""The FastAPI application of ``mmsparse serve``: JSON API, image files and the web page.

:func:`create_app` opens the index once (a :class:`~mmsparse.serve.service.SearchService`)
and returns an ASGI application; any ASGI server runs it (``mmsparse serve`` uses uvicorn).
Every error is a JSON object ``{"error": "one line", "status": N}``: 4xx for bad input
(400, 404 for an unknown image or route), 503 when too many searches are in flight, and a
one-line 500 for a bug (never a traceback).
"""

import contextlib
import faulthandler
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal

from mmsparse import __version__
from mmsparse.errors import MMSparseError, require_extra
from mmsparse.serve.limits import ServeLimits
from mmsparse.serve.params import BadRequest, check_utf8_query_string, http_error, one_line
from mmsparse.serve.service import SearchService

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
SearchMode = Literal["sparse", "dense", "hybrid"]
ENV_CONFIG = "MMSPARSE_SERVE_CONFIG"


def create_app(
    index_dir: str | Path | None = None,
    *,
    run_dir: str | Path | None = None,
    data: str | Path | None = None,
    bundle: str | Path | None = None,
    images_dir: str | Path | None = None,
    text_encoder: Any = None,
    image_encoder: Any = None,
    encoder: str = "batch",
    limits: ServeLimits | None = None,
    service: SearchService | None = None,
    cors_origins: list[str] | None = None,
    show_paths: bool = False,
    warm_up: bool = True,
    reload_interval: float = 1.0,
) -> Any:
    """The ASGI application serving one index.

    Args:
        index_dir: Directory written by ``mmsparse index build``.
        run_dir: Encode queries with this run (default: the index's).
        data: Feature directory of the index's data (default: the index's).
        bundle: Backbone bundle directory (default: the run's).
        images_dir: Folder of the image files (default: ``images/`` next to the data).
        text_encoder: Replaces the run's text encoder (an object with ``encode(texts)``).
        image_encoder: Replaces the run's backbone image encoder for uploaded images (an
            object with ``encode_images(list[PIL.Image]) -> (N, d_img)``).
        encoder: ``batch`` or ``threads`` (see :mod:`mmsparse.serve.workers`).
        limits: :class:`~mmsparse.serve.limits.ServeLimits` (caps and queue bound).
        service: An already opened service (then the index arguments are ignored).
        cors_origins: Origins other sites' pages may call the API from (``*``: any);
            none by default.
        show_paths: ``/api/info`` gives the server's absolute paths (default: names only,
            ``?paths=1`` asks for them).
        warm_up: Run the warm-up searches when the application starts (``/readyz`` is
            503 until they have run).
        reload_interval: Seconds between two looks for a new generation of the index
            (0: never; see :mod:`mmsparse.serve.generations`).

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
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.middleware.gzip import GZipMiddleware

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
            image_encoder=image_encoder,
            encoder=encoder,
            limits=limits,
            show_paths=show_paths,
            reload_interval=reload_interval,
        )
    svc = service
    lim = svc.limits

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        if warm_up:
            svc.start_warm_up()
        yield
        svc.close()

    app = fastapi.FastAPI(
        lifespan=lifespan,
        title="mmsparse search",
        version=__version__,
        description="Image search with a trained mmsparse run: by text, by an indexed image "
        "or by an uploaded one; ranked images, what each score is made of, and the sparse "
        "terms that explain every match; the query's terms can be edited (dropped, boosted, "
        "required). Errors are JSON objects {error, status}. See docs/serving.md.",
        docs_url=None,  # Swagger UI loads from a CDN: /docs is the page's own, offline
        redoc_url=None,
    )
    app.state.service = svc

    class ErrorBody(BaseModel):
        """Every error: one line, and the HTTP status."""

        error: str
        status: int

    def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
        what = {
            400: "a bad parameter (one line saying which and why)",
            404: "an unknown image id, upload id or file",
            409: "the run cannot encode uploaded images (features-only run)",
            413: "the upload is too large (bytes or pixels)",
            415: "the upload is not a JPEG, PNG, WebP, GIF or BMP image",
            503: "too many searches in flight (retry after Retry-After seconds)",
        }
        return {c: {"model": ErrorBody, "description": what[c]} for c in codes}

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
        parts = [validation_message(err) for err in exc.errors()]
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

    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["Content-Type"],
        )
    app.add_middleware(GZipMiddleware, minimum_size=1000)  # JSON, HTML, JS; not images
    app.add_middleware(_StrictUtf8)

    K = Query(None, ge=1, le=lim.max_k, description=f"results, 1 to {lim.max_k} (default 10)")
    OFFSET = Query(
        None,
        ge=0,
        le=lim.max_depth - 1,
        description=f"results to skip (paging; offset + k at most {lim.max_depth})",
    )
    MODE = Query(None, description="score: sparse (default), dense or hybrid")
    EXPLAIN = Query(None, description="per hit: the shared terms and the score's parts (true)")
    FORCE = Query(None, description="hits even when the verdict is no_match (false)")
    TERMS = Query(
        None,
        description="edits of the query's terms, comma-separated: TERM:FACTOR (0 drops, 2 "
        "doubles), +TERM (required: only images holding it), -TERM (excluded); e.g. "
        "dog:2,beach:0,+red",
        examples=["dog:2,beach:0,+red"],
    )
    W1 = Query(None, ge=0, allow_inf_nan=False, description="hybrid: dense weight (run's)")
    W2 = Query(None, ge=0, allow_inf_nan=False, description="hybrid: sparse weight (run's)")

    def get_and_head(path: str, **kw: Any) -> Any:
        """``@app.get`` that also answers ``HEAD`` (one operation in the schema)."""

        def register(fn: Any) -> Any:
            app.add_api_route(path, fn, methods=["HEAD"], include_in_schema=False)
            return app.get(path, **kw)(fn)

        return register

    @get_and_head("/healthz", tags=["service"], summary="Liveness and load")
    async def healthz() -> dict[str, Any]:
        """``{"status": "ok", "ready", "in_flight", "served", "refused", "uptime_s"}``.

        Ok as soon as the server answers (``/readyz`` says whether it is warmed up).
        """
        return svc.health()

    @get_and_head(
        "/readyz",
        tags=["service"],
        summary="Readiness: 200 once the warm-up searches have run, 503 before",
        responses={503: {"description": "still warming up (the body says so)"}},
    )
    async def readyz() -> Any:
        """``{"ready", "status", "warm_up_seconds", "warm_up_error"}``."""
        body = svc.readiness()
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @get_and_head(
        "/api/info",
        tags=["service"],
        summary="The run, engine, index options, limits and what can be searched",
    )
    async def info(
        paths: bool | None = Query(None, description="also the server's absolute paths"),
    ) -> dict[str, Any]:
        """Run name, engine, vocabulary size, images, options, modes, limits, readiness."""
        return svc.info(paths=paths or None)

    @app.get(
        "/api/search",
        tags=["search"],
        summary="Ranked images for a text query, an indexed image or an uploaded one",
        responses=errors(400, 404, 503),
    )
    async def search(
        q: str | None = Query(None, description="query text (or like, or image)"),
        like: str | None = Query(None, description="image id: search by its stored vectors"),
        image: str | None = Query(
            None, description="upload id (from POST /api/search/image): that image again"
        ),
        k: int | None = K,
        offset: int | None = OFFSET,
        mode: SearchMode | None = MODE,
        explain: bool | None = EXPLAIN,
        force: bool | None = FORCE,
        terms: str | None = TERMS,
        w1: float | None = W1,
        w2: float | None = W2,
        include_self: bool | None = Query(
            None, description="like: keep the source image among the hits (false)"
        ),
    ) -> dict[str, Any]:
        """Ranked hits (image id, file name, URL, score) and every term of the query.

        With ``explain`` every hit lists the terms it shares with the query, each with query
        weight x image weight = contribution (they sum to ``sparse_score``), the query
        terms it lacks (``missing_terms``, ``n_missing``), and what its score is made of:
        ``parts`` (``sparse``: S_s; ``dense``: S_d; ``hybrid``: w1·S_d and w2·S_s) and
        ``explained``, the share of the score the listed terms carry.

        ``total`` counts the images the query ranks (sharing a term in sparse mode, every
        admitted image in dense and hybrid); ``offset`` pages through them.
        ``confidence`` (text queries) is the verdict: ``confident``, ``low_confidence`` or
        ``no_match``; a ``no_match`` query answers no hits unless ``force=true``.
        """
        return await svc.search(
            q,
            like=like,
            image=image,
            k=k,
            offset=offset,
            mode=mode,
            explain=explain,
            force=force,
            terms=terms,
            w1=w1,
            w2=w2,
            include_self=include_self,
        )

    @app.post(
        "/api/search/image",
        tags=["search"],
        summary="Ranked images for an uploaded image (the file is the request body)",
        responses=errors(400, 409, 413, 415, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": f"the image file itself (JPEG, PNG, WebP, GIF or BMP, at most "
                f"{lim.max_upload_mb} MB and {lim.max_upload_pixels // 1_000_000} megapixels)",
                "content": {
                    t: {"schema": {"type": "string", "format": "binary"}}
                    for t in ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp")
                },
            }
        },
    )
    async def search_image(
        request: Request,
        k: int | None = K,
        offset: int | None = OFFSET,
        mode: SearchMode | None = MODE,
        explain: bool | None = EXPLAIN,
        terms: str | None = TERMS,
        w1: float | None = W1,
        w2: float | None = W2,
    ) -> dict[str, Any]:
        """The uploaded image, encoded by the run's image encoder and heads, is the query.

        It is searched like an indexed image (sparse · sparse over shared terms, dense, or
        hybrid).

        The answer is that of ``/api/search`` plus ``upload`` (``id``, ``kind``, ``width``,
        ``height``, ``bytes``, ``thumbnail_url``); ``GET /api/search?image=ID`` searches the
        same image again (other modes, pages, edits) while the server keeps it.
        """
        limit = lim.max_upload_mb * 1_000_000
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/"):
            raise BadRequest(
                "send the image file itself as the request body (e.g. curl --data-binary "
                "@photo.jpg -H 'Content-Type: image/jpeg'), not a form",
                415,
            )
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise BadRequest(
                f"the image is {int(length) / 1e6:.1f} MB; the limit is {lim.max_upload_mb} "
                "MB (serve --max-upload-mb)",
                413,
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BadRequest(
                    f"the image is over the limit of {lim.max_upload_mb} MB (serve "
                    "--max-upload-mb)",
                    413,
                )
        return await svc.search_upload(
            bytes(body),
            k=k,
            offset=offset,
            mode=mode,
            explain=explain,
            terms=terms,
            w1=w1,
            w2=w2,
        )

    @app.get(
        "/api/uploads/{upload_id}/thumbnail",
        tags=["search"],
        summary="A small JPEG of an uploaded query image",
        response_class=Response,
        responses={
            200: {"content": {"image/jpeg": {}}, "description": "the JPEG"},
            **errors(404),
        },
    )
    async def upload_thumbnail(upload_id: str) -> Any:
        """The thumbnail the page shows as the query image."""
        return Response(
            svc.upload_thumbnail(upload_id),
            media_type="image/jpeg",
            headers={"Cache-Control": "private, max-age=3600"},
        )

    @app.get(
        "/api/images",
        tags=["search"],
        summary="Indexed images in index order (to browse without a query)",
        responses=errors(400),
    )
    async def images(
        offset: int | None = Query(None, ge=0, description="images to skip"),
        k: int | None = K,
    ) -> dict[str, Any]:
        """``total``, ``offset`` and ``images`` (``image_id``, ``filename``, ``url``)."""
        return svc.browse(offset, k)

    @app.get(
        "/api/images/{image_id}/terms",
        tags=["search"],
        summary="An image's heaviest terms",
        responses=errors(400, 404),
    )
    async def image_terms(
        image_id: str = PathParam(..., description="image id of the index"),
        k: int | None = Query(
            None, ge=1, le=lim.max_terms_k, description=f"terms, 1 to {lim.max_terms_k} (20)"
        ),
    ) -> dict[str, Any]:
        """The image's indexed sparse terms with their weights, heaviest first."""
        return await svc.image_terms(image_id, k)

    @get_and_head(
        "/images/{name:path}",
        tags=["files"],
        summary="An indexed image file",
        response_class=FileResponse,
        responses={200: {"content": {"image/*": {}}, "description": "the file"}, **errors(404)},
    )
    async def image_file(name: str, request: Request) -> Any:
        """The image file of an indexed file name (never a path outside the images folder).

        Answers 304 to ``If-None-Match`` with the file's ``ETag``.
        """
        path = svc.image_path(name)
        st = path.stat()
        etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
        headers = {"Cache-Control": "public, max-age=3600", "ETag": etag}
        match = request.headers.get("if-none-match", "")
        if etag in [m.strip() for m in match.split(",")] or match.strip() == "*":
            return Response(status_code=304, headers=headers)
        return FileResponse(path, headers=headers)

    index_html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    api_html = (STATIC_DIR / "api.html").read_text(encoding="utf-8")

    @get_and_head("/", include_in_schema=False)
    async def page() -> Any:
        return HTMLResponse(index_html)

    @get_and_head("/docs", include_in_schema=False)
    async def api_docs() -> Any:
        return HTMLResponse(api_html)

    @get_and_head("/favicon.ico", include_in_schema=False)
    async def favicon() -> Any:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def openapi() -> dict[str, Any]:
        # FastAPI lists a 422 validation error on every operation; this API answers 400.
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for ops in schema.get("paths", {}).values():
                for op in ops.values():
                    op.get("responses", {}).pop("422", None)
            comps = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                comps.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def validation_message(err: dict[str, Any]) -> str:
    """One line for one of FastAPI's validation errors, in the API's own words."""
    loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body")]
    name = ".".join(loc) or "request"
    kind = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    given = err.get("input")
    shown = repr(str(given)[:40]) if given is not None else "nothing"
    if kind.startswith("int") or (kind == "greater_than_equal" and ctx.get("ge") == 1):
        if ctx.get("ge", 1) == 0 or name == "offset":
            return f"{name} must be an integer of at least 0, got {shown}"
        return f"{name} must be a positive integer, got {shown}"
    if kind == "greater_than_equal":
        return f"{name} must be at least {ctx.get('ge')}, got {shown}"
    if kind == "less_than_equal":
        return f"{name} must be at most {ctx.get('le')}, got {shown}"
    if kind.startswith("bool"):
        return f"{name} must be true or false, got {shown}"
    if kind == "literal_error" and name == "mode":
        return f"unknown mode {shown} (sparse, dense or hybrid)"
    if kind.startswith("float") or kind == "finite_number":
        return f"{name} must be a finite number, got {shown}"
    return f"{name}: {err.get('msg', 'invalid')}"


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
                body = json.dumps(payload, allow_nan=False).encode()
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


def check_port_free(host: str, port: int) -> None:
    """Check that a server can listen on ``host:port`` now (bind a socket and close it).

    Every address ``host`` resolves to is tried as the server will bind it (with
    ``SO_REUSEADDR``, so a port left in ``TIME_WAIT`` by a stopped server is free).

    Raises:
        MMSparseError: One line naming the address and the option that fixes it: the port
            is in use, needs privileges, or the host is unknown or not of this machine.
    """
    import errno
    import socket

    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise MMSparseError(f"--host {host}: unknown host ({exc}); give another --host") from None
    bound = 0
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                bound += 1
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                continue  # as asyncio does: an address family this machine lacks (::1)
            if exc.errno == errno.EADDRINUSE:
                raise MMSparseError(
                    f"port {port} on {host} is already in use (another server?); choose "
                    "another --port"
                ) from None
            if exc.errno == errno.EACCES:
                raise MMSparseError(
                    f"no permission to listen on {where} (ports below 1024 need root); "
                    "choose another --port"
                ) from None
            raise MMSparseError(f"cannot listen on {where}: {exc.strerror}") from None
    if not bound:
        raise MMSparseError(f"--host {host} is not an address of this machine; give another --host")


def enable_faulthandler() -> None:
    """Make a crash in native code (an engine's library) leave its traceback in the log.

    The server's log is its stderr; without this such a crash is a silent exit.
    """
    for stream in (sys.stderr, sys.__stderr__):
        try:
            faulthandler.enable(file=stream, all_threads=True)
            return
        except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation: no fileno
            continue


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
    enable_faulthandler()  # a crash in native code leaves its traceback in the log
    return create_app(limits=limits, **cfg)
