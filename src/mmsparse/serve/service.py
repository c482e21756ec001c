"""The search service behind ``mmsparse serve``: one opened index, shared by every request.

:class:`SearchService` holds what a web server needs and nothing web-specific: the opened
:class:`~mmsparse.index.Searcher` (index, run and text encoder loaded once), the checks of
every request parameter (one-line :class:`BadRequest` errors), the query encoder off the
event loop, a bounded number of requests in flight (:class:`Overloaded` beyond it), the
images folder with its path checks, and the JSON shapes of the API. The FastAPI application
(:mod:`mmsparse.serve.app`) is a thin layer over it.

Concurrency: the engine is searched from one thread at a time (the inverted index keeps
work arrays; Milvus clients are not shared across threads), and the text encoder runs in
worker threads, either

- ``batch`` (default): one encoder thread takes every query waiting at that moment (up to
  ``max_batch``) and encodes them in one forward pass, so concurrent queries share the
  cost; an idle server encodes a lone query at once, without a batching window; or
- ``threads``: a pool of ``threads`` workers, each encoding one query.

``mmsparse bench serve`` measures both (docs/serving.md).

Generations: the service serves one generation of the index at a time
(:mod:`mmsparse.index.generations`). A watcher thread looks at the index every
``reload_interval`` seconds (its ``CURRENT`` pointer, and the identity of every file the
served generation was read from); when they change it opens the new generation in the
background (segments it already holds are shared, not read again) and then swaps one
reference. A request takes the generation that is current when it starts and keeps it to
its end (its search, explanations, image ids and files: a context variable that the engine
thread inherits), so no request sees a mix and none fails because of a switch; the old
generation is released when its last request ends. A generation that fails to open (a file
missing, corrupt, or being rewritten in place) is logged in one line and the old one is
kept; it is tried again when the files change again. The index files are read into memory,
not memory-mapped, so nothing done to them on disk can crash the server (a memory-mapped
file truncated in place raised SIGBUS at the next search, with no log line).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import contextvars
import functools
import logging
import math
import queue
import threading
import time
import urllib.parse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import MMSparseError
from mmsparse.index.engines import SEARCH_MODES
from mmsparse.index.generations import CURRENT_NAME
from mmsparse.index.manifest import MANIFEST_NAME
from mmsparse.index.search import MAX_QUERY_PIECES, Searcher, SearchResult, cap_query
from mmsparse.index.segments import file_stamp, open_view
from mmsparse.serve import queries, results

log = logging.getLogger(__name__)

ENCODER_MODES = ("batch", "threads")


class BadRequest(MMSparseError):
    """A request parameter is invalid; answered with a 4xx status and a one-line message.

    Attributes:
        status: The HTTP status (400 by default, 404 for an unknown image).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Overloaded(MMSparseError):
    """More requests are in flight than the service admits (answered with 503)."""


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line (whitespace collapsed), at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def http_error(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The HTTP answer to an error raised while serving a request (the one mapping).

    :class:`BadRequest` keeps its status (400, 404), :class:`Overloaded` is 503 with
    ``Retry-After: 1``, any other :class:`~mmsparse.errors.MMSparseError` is 400, anything
    else a one-line 500 (a bug; never a traceback).

    Returns:
        ``(status, {"error": one line, "status": status}, headers)``.
    """
    headers: dict[str, str] = {}
    if isinstance(exc, BadRequest | queries.QueryInputError):
        status, message = exc.status, str(exc)
    elif isinstance(exc, Overloaded):
        status, message, headers = 503, str(exc), {"Retry-After": "1"}
    elif isinstance(exc, MMSparseError):
        status, message = 400, str(exc)
    else:
        status, message = 500, f"internal error ({type(exc).__name__}: {exc})"
    return status, {"error": one_line(message), "status": status}, headers


@dataclass(frozen=True)
class ServeLimits:
    """Caps on what one request may ask for and on the requests in flight.

    Attributes:
        max_k: Largest ``k`` a search may ask for.
        max_terms_k: Largest ``k`` of ``/api/images/{id}/terms``.
        max_query_chars: Longer queries are cut at a word boundary (with a note) before
            encoding; the encoder's own limit of word pieces applies after that.
        max_pending: Searches in flight (encoding, queued or searching) beyond which a
            request is answered 503 at once.
        max_batch: Largest batch of the ``batch`` encoder.
        threads: Workers of the ``threads`` encoder.
        max_depth: Deepest result a search may page to (``offset + k``).
        max_upload_mb: Largest uploaded query image, in MB (10**6 bytes).
        max_upload_pixels: Most pixels of an uploaded image (decompression bombs).
        uploads_kept: Uploaded queries kept for later pages, modes and edits.
    """

    max_k: int = 100
    max_terms_k: int = 200
    max_query_chars: int = 1000
    max_pending: int = 64
    max_batch: int = 32
    threads: int = 2
    max_depth: int = 1000
    max_upload_mb: int = 10
    max_upload_pixels: int = 50_000_000
    uploads_kept: int = 256

    def __post_init__(self) -> None:
        # Each at least 1: a 0 (or negative) limit makes the server refuse every request.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MMSparseError(
                    f"serve limit {f.name} must be an integer of at least 1, got {value!r}"
                )


class _BatchEncoder:
    """One thread that encodes every query waiting at the moment in one batch."""

    def __init__(self, encode: Any, max_batch: int) -> None:
        self._encode = encode
        self._max_batch = max_batch
        self._queue: queue.Queue[tuple[str, cf.Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="mmsparse-encoder", daemon=True)
        self._thread.start()
        self.batches = 0
        self.encoded = 0

    def submit(self, text: str) -> cf.Future:
        fut: cf.Future = cf.Future()
        self._queue.put((text, fut))
        return fut

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            items = [item]
            while len(items) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                items.append(nxt)
            live = [(t, f) for t, f in items if f.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                dense, sparse = self._encode([t for t, _ in live])
            except BaseException as exc:  # handed to every waiting request
                for _, fut in live:
                    fut.set_exception(exc)
                continue
            self.batches += 1
            self.encoded += len(live)
            for i, (_, fut) in enumerate(live):
                fut.set_result((dense[i : i + 1], sparse[i]))

    def stats(self) -> dict[str, Any]:
        return {"mode": "batch", "batches": self.batches, "queries": self.encoded}

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


class _ThreadEncoder:
    """A pool of threads, each encoding one query."""

    def __init__(self, encode: Any, threads: int) -> None:
        self._encode = encode
        self._pool = cf.ThreadPoolExecutor(threads, thread_name_prefix="mmsparse-encoder")

    def submit(self, text: str) -> cf.Future:
        return self._pool.submit(self._encode_one, text)

    def _encode_one(self, text: str) -> tuple[np.ndarray, sp.csr_matrix]:
        dense, sparse = self._encode([text])
        return dense, sparse[0]

    def stats(self) -> dict[str, Any]:
        return {"mode": "threads", "threads": self._pool._max_workers}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _positive_int(
    name: str, value: str | int | None, default: int, cap: int, minimum: int = 1
) -> int:
    what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
    if value is None or value == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise BadRequest(f"{name} must be {what}, got {str(value)[:40]!r}") from None
    if number < minimum:
        raise BadRequest(f"{name} must be {what}, got {number}")
    if number > cap:
        raise BadRequest(f"{name} must be at most {cap}, got {number}")
    return number


def _weight(name: str, value: str | float | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        raise BadRequest(f"{name} must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number) or number < 0:
        raise BadRequest(f"{name} must be a finite number >= 0, got {str(value)[:40]!r}")
    return number


def parse_bool(name: str, value: str | bool | None, default: bool = False) -> bool:
    """A query-string flag: ``true``/``false``/``1``/``0``/``yes``/``no`` (or absent).

    Raises:
        BadRequest: On any other value.
    """
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise BadRequest(f"{name} must be true or false, got {value[:40]!r}")


def check_utf8_query_string(raw: bytes) -> None:
    """Refuse a query string that is not UTF-8 (raw or percent-encoded bytes).

    Raises:
        BadRequest: Naming the parameter whose value is not valid UTF-8.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the query string is not valid UTF-8") from None
    for part in text.split("&"):
        name, _, value = part.partition("=")
        try:
            urllib.parse.unquote_to_bytes(value.replace("+", " ")).decode("utf-8")
        except UnicodeDecodeError:
            label = urllib.parse.unquote(name, errors="replace")[:40] or "a parameter"
            raise BadRequest(
                f"{label} is not valid UTF-8 text (percent-encoded bytes that are not UTF-8)"
            ) from None


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


def cut_chars(text: str, max_chars: int) -> tuple[str, bool]:
    """Cut ``text`` to at most ``max_chars`` characters at a word boundary."""
    if len(text) <= max_chars:
        return text, False
    head = text[: max_chars + 1]
    cut = head.rsplit(None, 1)[0] if " " in head.strip() else text[:max_chars]
    return cut[:max_chars].rstrip(), True


class Served:
    """One generation of the index as the service serves it.

    Attributes:
        searcher: A :class:`~mmsparse.index.Searcher` of the generation (sharing the run
            and text encoder of the service's first one).
        number: The generation number.
        row_of: Global row of every live image id.
        live_rows: The live rows, in index order.
        image_files: File names of the live images (the only ones ``/images/`` serves).
        image_roots: ``{id prefix: folder}`` of images added from other folders.
        doc_vectors: Cache of stored sparse vectors by row.
        term_rows: Cache of the rows holding a term.
    """

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher
        view = searcher.view
        self.number = view.number
        self.row_of = view.row_of
        self.live_rows = np.array(sorted(view.row_of.values()), dtype=np.int64)
        self.image_files = {view.filenames[r] for r in view.row_of.values()}
        self.image_roots = {
            prefix: Path(root) for prefix, root in view.generation.image_roots.items()
        }
        self.doc_vectors: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.term_rows: dict[int, np.ndarray] = {}
        self._users = 0
        self._retired = False
        self._lock = threading.Lock()

    @property
    def manifest(self) -> Any:
        """The index manifest (``n_images``: the live images of this generation)."""
        return self.searcher.manifest

    def acquire(self) -> None:
        """A request starts using this generation."""
        with self._lock:
            self._users += 1

    def release(self) -> None:
        """A request is done with it; a retired generation is closed with the last one."""
        with self._lock:
            self._users -= 1
            close = self._retired and self._users <= 0
        if close:
            self.searcher.close()

    def retire(self) -> None:
        """No new request gets it; it is closed when the last one in flight ends."""
        with self._lock:
            self._retired = True
            close = self._users <= 0
        if close:
            self.searcher.close()


#: The generation a request holds (set by :meth:`SearchService._use`; inherited by the
#: engine thread's calls, which run in a copy of the request's context).
_REQUEST: contextvars.ContextVar[Served | None] = contextvars.ContextVar(
    "mmsparse_served", default=None
)


class SearchService:
    """An index opened once, with its run and text encoder, serving API requests.

    Args:
        index_dir: Directory written by ``mmsparse index build``.
        run_dir: Encode queries with this run (default: the index's).
        bundle: Backbone bundle directory (default: the run's).
        data: Feature directory of the index's data (default: the index's).
        images_dir: Folder of the image files (default: the folder of an index of photos,
            else ``images/`` in the index's data directory, when present); only the file
            names the index lists are served.
        text_encoder: An object with ``encode(list[str]) -> (N, d_txt)`` features to use
            instead of the run's extraction backend (tests, custom encoders).
        encoder: ``batch`` (concurrent queries encoded together) or ``threads``.
        limits: :class:`ServeLimits`.
        warm_up: Load the text encoder and encode one query at start, so the first request
            is not slow (the searches of :meth:`start_warm_up` come later, in a thread).
        image_encoder: An object with ``encode_images(list[PIL.Image]) -> (N, d_img)``
            used for uploaded query images instead of the run's backbone (tests).
        warm_up_hook: Called at the end of the warm-up searches (tests: a slow warm-up).
        show_paths: ``/api/info`` shows the server's absolute paths (run, index, images);
            by default only the run's name.
        reload_interval: Seconds between two looks at the index for a new generation (see
            the module docstring); 0 never looks (the generation opened at start is
            served until the end).

    Raises:
        IndexFormatError: If the index is missing, corrupt or no longer matches its run
            (the error ``mmsparse search`` gives).
        MMSparseError: On an unknown encoder mode or a run that cannot be loaded.
    """

    def __init__(
        self,
        index_dir: str | Path,
        *,
        run_dir: str | Path | None = None,
        data: str | Path | None = None,
        bundle: str | Path | None = None,
        images_dir: str | Path | None = None,
        text_encoder: Any = None,
        encoder: str = "batch",
        limits: ServeLimits | None = None,
        warm_up: bool = True,
        image_encoder: Any = None,
        warm_up_hook: Any = None,
        show_paths: bool = False,
        reload_interval: float = 1.0,
    ) -> None:
        if encoder not in ENCODER_MODES:
            raise MMSparseError(f"unknown encoder mode {encoder!r} (batch or threads)")
        if not (isinstance(reload_interval, int | float) and reload_interval >= 0):
            raise MMSparseError(f"reload_interval must be >= 0 seconds, got {reload_interval!r}")
        self.limits = limits or ServeLimits()
        self.encoder_mode = encoder
        self.index_dir = Path(index_dir)
        # An injected text encoder replaces the run's (which the Searcher loads on first use).
        # The first searcher encodes every query; later generations share its run.
        pointer = self._pointer()  # before opening: a switch meanwhile is seen next time
        self._base = Searcher(
            index_dir,
            run_dir=run_dir,
            data=data,
            bundle=bundle,
            text_encoder=text_encoder,
            in_memory=True,
        )
        self._served = Served(self._base)
        self._served_lock = threading.Lock()
        self._token = (pointer, *self._look(recorded=True)[1:])
        self._failed_token: Any = None
        self._changed_token: Any = None
        self.reloads = 0
        self.reload_errors = 0
        self.last_reload_error: str | None = None
        self.images_dir = self._images_dir(images_dir)
        self.image_check = self._check_image_files()
        self.show_paths = bool(show_paths)
        self.text_error: str | None = None
        opts = self.manifest.options
        self.images = queries.ImageQueryEncoder(
            self.searcher.run,
            topk=opts.image_topk,
            threshold=opts.threshold,
            image_encoder=image_encoder,
        )
        self.uploads = queries.UploadCache(self.limits.uploads_kept)
        self._image_pool = cf.ThreadPoolExecutor(1, thread_name_prefix="mmsparse-images")
        self._warm_up_hook = warm_up_hook
        self._warm_thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.warm_up_error: str | None = None
        self.warm_up_seconds: float | None = None
        self._engine_pool = cf.ThreadPoolExecutor(1, thread_name_prefix="mmsparse-engine")
        self._engine_lock = threading.Lock()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self.served = 0
        self.refused = 0
        self.started = time.time()
        if encoder == "batch":
            self._encoder: Any = _BatchEncoder(self._encode_texts, self.limits.max_batch)
        else:
            self._encoder = _ThreadEncoder(self._encode_texts, self.limits.threads)
        if warm_up:
            try:
                self._encode_texts(["a photo"])
            except MMSparseError as exc:
                self.text_error = str(exc)
                log.warning("text search unavailable: %s", exc)
        self.reload_interval = float(reload_interval)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if self.reload_interval > 0:
            self._watcher = threading.Thread(
                target=self._watch, name="mmsparse-generations", daemon=True
            )
            self._watcher.start()

    # -- the generation a request holds ----------------------------------------------------

    def _current(self) -> Served:
        """The request's generation, or the one served now outside a request."""
        return _REQUEST.get() or self._served

    @property
    def searcher(self) -> Searcher:
        """The searcher of the request's generation (outside a request: the current one)."""
        return self._current().searcher

    @property
    def manifest(self) -> Any:
        """The manifest of the request's generation (``n_images``: its live images)."""
        return self._current().manifest

    @property
    def generation(self) -> int:
        """The generation served now."""
        return self._served.number

    @property
    def row_of(self) -> dict[str, int]:
        """Global row of every live image id of the request's generation."""
        return self._current().row_of

    @property
    def image_files(self) -> set[str]:
        """File names of the live images of the request's generation."""
        return self._current().image_files

    @property
    def _doc_vectors(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        return self._current().doc_vectors

    @property
    def _term_rows(self) -> dict[int, np.ndarray]:
        return self._current().term_rows

    @contextlib.contextmanager
    def _use(self) -> Any:
        """Hold the generation served now for the block (a request; see the module doc)."""
        held = _REQUEST.get()
        if held is not None:  # nested (search_upload calls search): the same generation
            yield held
            return
        with self._served_lock:
            served = self._served
            served.acquire()
        token = _REQUEST.set(served)
        try:
            yield served
        finally:
            _REQUEST.reset(token)
            served.release()

    # -- generations ----------------------------------------------------------------------

    def _pointer(self) -> bytes | None:
        try:
            return (self.index_dir / CURRENT_NAME).read_bytes()
        except OSError:
            return None

    def _look(self, recorded: bool = False) -> tuple[Any, ...]:
        """What identifies the index on disk: the pointer and the served generation's files.

        The files as they are now, or as they were when opened (``recorded``).
        """
        pointer = self._pointer()
        stamps = self._served.searcher.view.stamps()
        if not recorded:
            stamps = {path: file_stamp(path) for path in stamps}
        manifest = file_stamp(self.index_dir / MANIFEST_NAME)
        return (pointer, manifest, tuple(sorted((str(p), s) for p, s in stamps.items())))

    def _watch(self) -> None:
        while not self._stop.wait(self.reload_interval):
            try:
                self.check_generation()
            except Exception as exc:  # the watcher must outlive anything
                log.error("%s: generation watcher: %s", self.index_dir, one_line(str(exc)))

    def check_generation(self) -> bool:
        """Open and serve the index's new generation if the files changed.

        The watcher's step (callable directly).

        A change of ``CURRENT`` is opened at once; any other change of the files (a
        rebuild, a file written over in place) is opened once it has held still for one
        look, so that a copy in progress is not read. Each outcome is one line in the log:
        the generation now served, or why the files could not be opened and that the old
        generation (its copy in memory) is still served; the same files are not tried
        again.

        Returns:
            Whether a new generation is now served.
        """
        token = self._look()
        if token == self._token or token == self._failed_token:
            return False
        in_place = token[0] == self._token[0]  # the files changed, not the pointer
        if in_place and token != self._changed_token:
            log.debug(
                "%s: index files changing on disk; waiting for them to hold still", self.index_dir
            )
            self._changed_token = token
            return False
        how = "files changed on disk without a new generation" if in_place else "new generation"
        old = self._served
        try:
            view = open_view(self.index_dir, in_memory=True, reuse=old.searcher.view)
            try:
                searcher = self._base.with_view(view)
            except BaseException:
                view.close()
                raise
        except Exception as exc:
            self._failed_token = token
            self.reload_errors += 1
            self.last_reload_error = one_line(str(exc))
            log.error(
                "%s: could not open the index (%s: %s); still serving generation %d from memory",
                self.index_dir,
                how,
                self.last_reload_error,
                old.number,
            )
            return False
        new = Served(searcher)
        with self._served_lock:
            self._served = new
        self._token = (token[0], *self._look(recorded=True)[1:])
        self._changed_token = None
        self.reloads += 1
        old.retire()
        log.info(
            "%s: serving generation %d (%d images in %d segment(s); %s), was %d",
            self.index_dir,
            new.number,
            new.manifest.n_images,
            len(view.segments),
            how,
            old.number,
        )
        return True

    # -- set-up ---------------------------------------------------------------------------

    def _images_dir(self, images_dir: str | Path | None) -> Path | None:
        if images_dir is not None:
            path = Path(images_dir)
            if not path.is_dir():
                raise MMSparseError(f"{path}: images folder not found")
            return path.resolve()
        if self.manifest.images_dir:  # an index of a folder of photos
            folder = Path(self.manifest.images_dir)
            if folder.is_dir():
                return folder.resolve()
            log.warning("%s: the index's image folder is not there (start with --images)", folder)
            return None
        data = self.searcher.data_dir
        if data and (Path(data) / "images").is_dir():
            return (Path(data) / "images").resolve()
        return None

    def _check_image_files(self, sample: int = 2000) -> dict[str, Any] | None:
        """How many indexed image files are missing from the images folder.

        Checks every file of an index up to ``sample`` images, else a seeded sample of
        ``sample``; a warning is logged when any is missing.
        """
        if self.images_dir is None:
            return None
        names = self.searcher.filenames
        rows = np.arange(len(names))
        if rows.size > sample:
            rows = np.sort(np.random.default_rng(0).choice(rows, sample, replace=False))
        missing = [names[r] for r in rows.tolist() if not (self.images_dir / names[r]).is_file()]
        check = {
            "checked": int(rows.size),
            "missing": len(missing),
            "examples": missing[:3],
            "all_missing": bool(rows.size) and len(missing) == rows.size,
        }
        if missing:
            log.warning(
                "%d of %d indexed image files checked are missing from %s (e.g. %s); the "
                "page shows their names instead (give the right folder with --images)",
                len(missing),
                rows.size,
                self.images_dir,
                ", ".join(missing[:3]),
            )
        return check

    def _encode_texts(self, texts: list[str]) -> tuple[np.ndarray, sp.csr_matrix]:
        return self._base.encode_text(texts)

    def close(self) -> None:
        """Stop the worker threads and release the index."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self._encoder.close()
        self._engine_pool.shutdown(wait=False, cancel_futures=True)
        self._image_pool.shutdown(wait=False, cancel_futures=True)
        with self._served_lock:
            served = self._served
        served.retire()

    # -- readiness ------------------------------------------------------------------------

    def start_warm_up(self) -> None:
        """Run one search per mode (and load the image encoder) in a thread, then be ready.

        The first search of a process compiles the engine's kernels (numba: 2-3 s); until
        the warm-up has run, ``/readyz`` answers 503 and the page says "warming up".
        Calling it again does nothing.
        """
        if self._warm_thread is not None:
            return
        self._warm_thread = threading.Thread(
            target=self._warm_up, name="mmsparse-warm-up", daemon=True
        )
        self._warm_thread.start()

    def _warm_up(self) -> None:
        t0 = time.perf_counter()
        try:
            if self.text_error is None:
                dense, sparse = self._encode_texts(["a photo of a dog"])
            else:
                sparse, dense = self._like_vectors(
                    int(self._served.live_rows[0]), "hybrid" if "hybrid" in self.modes else "sparse"
                )
            for mode in self.modes:
                self._locked(self._search_vectors, sparse, dense, 10, mode, True)
                self._locked(self._total, sparse, mode, None)
            if self.images.available:
                from PIL import Image

                self.images.load()
                self.images.encode([Image.new("RGB", (64, 64), (128, 128, 128))])
            if self._warm_up_hook is not None:
                self._warm_up_hook()
        except Exception as exc:  # the server still serves; readiness says what failed
            self.warm_up_error = f"{type(exc).__name__}: {exc}"
            log.warning("warm-up failed: %s", self.warm_up_error)
        finally:
            self.warm_up_seconds = round(time.perf_counter() - t0, 3)
            self.ready.set()

    def readiness(self) -> dict[str, Any]:
        """Answer ``/readyz``: ``ready`` once the warm-up searches have run."""
        ready = self.ready.is_set()
        return {
            "ready": ready,
            "status": "ready" if ready else "warming up",
            "warm_up_seconds": self.warm_up_seconds,
            "warm_up_error": self.warm_up_error,
        }

    # -- admission ------------------------------------------------------------------------

    def _admit(self) -> None:
        with self._pending_lock:
            if self._pending >= self.limits.max_pending:
                self.refused += 1
                raise Overloaded(
                    f"the server is busy ({self._pending} searches in flight, limit "
                    f"{self.limits.max_pending}); retry shortly"
                )
            self._pending += 1

    def _release(self) -> None:
        with self._pending_lock:
            self._pending -= 1
            self.served += 1

    @property
    def pending(self) -> int:
        """Searches in flight now."""
        return self._pending

    # -- engine access (one thread at a time) ---------------------------------------------

    async def _on_engine(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        call = functools.partial(self._locked, fn, *args, **kwargs)
        # In a copy of the request's context: the engine thread uses its generation.
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._engine_pool, context.run, call)

    def _locked(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with self._engine_lock:
            return fn(*args, **kwargs)

    def image_row(self, image_id: str) -> int:
        """Global row of a live image id (of the request's generation).

        Raises:
            BadRequest: 404 on an unknown (or removed) image id.
        """
        row = self.row_of.get(str(image_id))
        if row is None:
            raise BadRequest(f"unknown image id {str(image_id)[:80]!r} (not in this index)", 404)
        return row

    def doc_vector(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The indexed sparse vector of an image row: ``(term ids, weights)``, as searched.

        Call from the engine thread (or with no search running).
        """
        cached = self._doc_vectors.get(row)
        if cached is not None:
            return cached
        terms, weights = self.searcher.doc_vector(row)
        order = np.argsort(terms, kind="stable")
        out = (terms[order].astype(np.int64), weights[order].astype(np.float32))
        if len(self._doc_vectors) < 4096:
            self._doc_vectors[row] = out
        return out

    # -- requests -------------------------------------------------------------------------

    def check_mode(self, mode: str | None) -> str:
        """A valid search mode for this index.

        Raises:
            BadRequest: On an unknown mode, or dense/hybrid on a sparse-only engine.
        """
        mode = "sparse" if mode in (None, "") else str(mode)
        if mode not in SEARCH_MODES:
            raise BadRequest(f"unknown mode {mode[:40]!r} (sparse, dense or hybrid)")
        try:
            return self.searcher.engine.check_mode(mode)
        except MMSparseError as exc:
            raise BadRequest(str(exc).replace(f"--mode {mode}", f"mode={mode}")) from None

    @property
    def modes(self) -> list[str]:
        """Search modes this index supports (dense and hybrid where it holds dense vectors)."""
        return list(self.searcher.modes)

    async def search(
        self,
        q: str | None = None,
        *,
        like: str | None = None,
        image: str | None = None,
        k: str | int | None = None,
        offset: str | int | None = None,
        mode: str | None = None,
        explain: str | bool | None = True,
        force: str | bool | None = False,
        terms: str | None = None,
        w1: str | float | None = None,
        w2: str | float | None = None,
        include_self: str | bool | None = False,
        upload: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Answer ``/api/search``: a text, an indexed image or an uploaded image as query.

        ``q`` is text, ``like`` an indexed image's id (its stored vectors), ``image`` an
        uploaded image's id (:meth:`search_upload`).

        A text query gets a ``confidence`` verdict (:mod:`mmsparse.index.confidence`); a
        ``no_match`` one answers no hits unless ``force`` is true. ``terms`` edits the
        query (:mod:`mmsparse.serve.queries`), ``w1``/``w2`` replace the hybrid weights,
        ``offset`` pages (hits ``offset+1`` to ``offset+k`` of ``total``).

        Returns:
            The JSON-ready result (see docs/serving.md).

        Raises:
            BadRequest: On any invalid parameter (one-line message).
            Overloaded: If too many searches are in flight.
            MMSparseError: If text search is not possible for this run.
        """
        with self._use() as served:
            out = await self._search(
                q, like, image, k, offset, mode, explain, force, terms, w1, w2, include_self, upload
            )
            out["generation"] = served.number
            return out

    async def _search(
        self,
        q: str | None,
        like: str | None,
        image: str | None,
        k: str | int | None,
        offset: str | int | None,
        mode: str | None,
        explain: str | bool | None,
        force: str | bool | None,
        terms: str | None,
        w1: str | float | None,
        w2: str | float | None,
        include_self: str | bool | None,
        upload: dict[str, Any] | None,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        k_ = _positive_int("k", k, 10, self.limits.max_k)
        offset_ = _positive_int("offset", offset, 0, self.limits.max_depth - 1, minimum=0)
        if offset_ + k_ > self.limits.max_depth:
            raise BadRequest(
                f"offset + k must be at most {self.limits.max_depth} (results are ranked "
                f"{self.limits.max_depth} deep), got {offset_ + k_}"
            )
        mode_ = self.check_mode(mode)
        explain_ = parse_bool("explain", explain, True)
        force_ = parse_bool("force", force, False)
        self_ = parse_bool("include_self", include_self, False)
        try:
            edits = queries.parse_terms(terms, self.searcher.vocab)
        except queries.QueryInputError as exc:
            raise BadRequest(str(exc), exc.status) from None
        weights = self._weights(w1, w2)
        notes: list[str] = []
        given = [name for name, v in (("q", q), ("like", like), ("image", image)) if v]
        if not given:
            raise BadRequest("missing query: give q=some words (or like=IMAGE_ID, image=UPLOAD_ID)")
        if len(given) > 1:
            raise BadRequest(f"give either q or like or image, not {' and '.join(given)}")
        row = None
        uploaded = None
        if like:
            row = self.image_row(like)
        elif image:
            uploaded = self.uploads.get(str(image))
            if uploaded is None:
                raise BadRequest(
                    f"no uploaded image {str(image)[:40]!r} (the server keeps the last "
                    f"{self.limits.uploads_kept} uploads); upload it again",
                    404,
                )
        else:
            assert q is not None
            if "\x00" in q:
                raise BadRequest("the query contains a NUL character")
            if not q.isascii():
                try:
                    q.encode("utf-8")  # HTTP gives UTF-8; a library caller may not
                except UnicodeEncodeError:
                    raise BadRequest(
                        "the query is not valid UTF-8 text (lone surrogates)"
                    ) from None
            text = " ".join(q.split())
            if not text:
                raise BadRequest("empty query: give some words to search for")
            text, was_cut = cut_chars(text, self.limits.max_query_chars)
            if was_cut:
                notes.append(
                    f"query cut to its first {len(text)} characters (the server's limit is "
                    f"{self.limits.max_query_chars})"
                )
            if self.text_error:
                raise BadRequest(f"text search is not available: {self.text_error}", 400)
        self._admit()
        try:
            t_enc = time.perf_counter()
            query_text = None
            if row is not None:
                sparse, dense = await self._on_engine(self._like_vectors, row, mode_)
            elif uploaded is not None:
                sparse, dense = uploaded.sparse, uploaded.dense
            else:
                text, piece_cut = cap_query(text, self.searcher.vocab)
                if piece_cut:
                    notes.append(
                        f"query cut to its first {len(text.split())} words ({MAX_QUERY_PIECES} "
                        "word pieces, the text encoder's limit)"
                    )
                dense, sparse = await asyncio.wrap_future(self._encoder.submit(text))
                query_text = text
            t_enc = time.perf_counter() - t_enc
            original = sparse
            if edits:
                sparse, edit_notes = queries.apply_edits(sparse, edits, self.searcher.vocab)
                notes.extend(edit_notes)
            result, total, live = await self._on_engine(
                self._ranked,
                sparse,
                dense,
                offset_ + k_,
                mode_,
                explain_,
                edits,
                row,
                self_,
                weights,
            )
        finally:
            self._release()
        verdict = None
        edited = bool(edits) or (weights is not None and mode_ == "hybrid")
        if query_text is not None:
            verdict = results.assess(self.searcher, query_text, result, words_only=edited)
        result.hits = result.hits[offset_:]
        out = results.result_json(
            self, result, explain_, searched=sparse, original=original, text=query_text
        )
        out["total"] = total
        out["offset"] = offset_
        out["more"] = offset_ + len(out["hits"]) < min(total, self.limits.max_depth)
        out["edits"] = [e.to_dict() for e in edits]
        out["terms"] = queries.terms_spec(edits)
        if any(e.require or e.exclude for e in edits):
            out["notes"].append(
                f"filtered: {self._count_live(live)} of "
                f"{self.manifest.n_images} images hold every required term and no excluded one"
            )
        if mode_ == "dense" and any(e.factor is not None for e in edits):
            out["notes"].append(
                "the dense score is not made of words: term weights do not change it (the "
                "required and excluded terms still filter)"
            )
        if verdict is not None and edited and verdict.verdict != "no_match":
            out["notes"].append(
                "edited query: the confidence verdict judges its words only (its scores "
                "are not comparable with the calibration's real queries)"
            )
        out["confidence"] = None if verdict is None else verdict.to_dict()
        if verdict is not None and verdict.flagged:
            hide = verdict.verdict == "no_match" and not force_ and out["hits"]
            out["notes"].append(
                verdict.note() + ("; no image shown (force=1 shows the closest)" if hide else "")
            )
            if hide:
                out["hits"] = []
                out["more"] = False
        out["query"] = query_text
        out["like"] = None if row is None else self.searcher.image_ids[row]
        out["image"] = None if uploaded is None else uploaded.upload_id
        out["upload"] = upload
        out["notes"] = notes + out["notes"]
        if row is not None:
            what = {
                "sparse": "its indexed sparse vector",
                "dense": "its indexed dense vector",
                "hybrid": "its indexed dense and sparse vectors",
            }[mode_]
            out["notes"].append(
                f"more like image {self.searcher.image_ids[row]}: {what} is the query"
                + ("" if self_ else " (the image itself is left out; include_self=1 keeps it)")
            )
        if uploaded is not None:
            out["notes"].append(
                "search by image: the uploaded image, encoded by the run's image encoder and "
                "heads, is the query"
            )
        total_s = time.perf_counter() - t0
        out["seconds"] = {
            "encode": round(t_enc, 6) if query_text is not None else 0.0,
            "search": round(result.seconds, 6),
            "total": round(total_s, 6),
        }
        return out

    def _weights(
        self, w1: str | float | None, w2: str | float | None
    ) -> tuple[float, float] | None:
        a, b = _weight("w1", w1), _weight("w2", w2)
        if a is None and b is None:
            return None
        m = self.manifest
        pair = (m.w1 if a is None else a, m.w2 if b is None else b)
        if pair[0] == 0 and pair[1] == 0:
            raise BadRequest("w1 and w2 cannot both be 0")
        return (float(pair[0]), float(pair[1]))

    async def search_upload(self, data: bytes, **params: Any) -> dict[str, Any]:
        """Answer ``POST /api/search/image``: the uploaded image file is the query.

        The file is checked (size, type by its first bytes, pixels), decoded, encoded by
        the run's image encoder and heads, and kept (by the first 16 hex digits of its
        sha256) so that later searches name it with ``image=ID``.

        Args:
            data: The file's bytes.
            **params: The search parameters of :meth:`search` (``k``, ``mode``, ...).

        Raises:
            BadRequest: 400 undecodable, 413 too large, 415 not an image, 409 when the
                run cannot encode images.
        """
        if not self.images.available:
            raise BadRequest(f"search by uploaded image is not available: {self.images.error}", 409)
        loop = asyncio.get_running_loop()
        try:
            decoded = await loop.run_in_executor(
                self._image_pool,
                functools.partial(
                    queries.decode_upload,
                    data,
                    max_bytes=self.limits.max_upload_mb * 1_000_000,
                    max_pixels=self.limits.max_upload_pixels,
                ),
            )
        except queries.QueryInputError as exc:
            raise BadRequest(str(exc), exc.status) from None
        upload_id = decoded.sha256[:16]
        if self.uploads.get(upload_id) is None:
            self._admit()
            try:
                dense, sparse = await loop.run_in_executor(
                    self._image_pool, self.images.encode, [decoded.image]
                )
                thumb = await loop.run_in_executor(
                    self._image_pool, queries.thumbnail_jpeg, decoded.image
                )
            except queries.QueryInputError as exc:
                raise BadRequest(str(exc), exc.status) from None
            finally:
                self._release()
            self.uploads.put(
                queries.UploadedQuery(
                    upload_id=upload_id,
                    sparse=sparse[0],
                    dense=dense[:1],
                    thumbnail=thumb,
                    meta={
                        "kind": decoded.kind,
                        "width": decoded.width,
                        "height": decoded.height,
                        "bytes": decoded.nbytes,
                    },
                )
            )
        item = self.uploads.get(upload_id)
        assert item is not None
        upload = {
            "id": upload_id,
            **item.meta,
            "thumbnail_url": f"/api/uploads/{upload_id}/thumbnail",
        }
        params = {key: v for key, v in params.items() if key not in ("q", "like", "image")}
        return await self.search(image=upload_id, upload=upload, **params)

    def upload_thumbnail(self, upload_id: str) -> bytes:
        """The small JPEG of an uploaded query image.

        Raises:
            BadRequest: 404 when the server no longer holds it.
        """
        item = self.uploads.get(str(upload_id))
        if item is None:
            raise BadRequest(f"no uploaded image {str(upload_id)[:40]!r}", 404)
        return item.thumbnail

    def _like_vectors(self, row: int, mode: str) -> tuple[sp.csr_matrix, np.ndarray | None]:
        terms, weights = self.doc_vector(row)
        sparse = sp.csr_matrix(
            (weights, terms, [0, terms.size]), shape=(1, self.manifest.vocab_size)
        )
        dense = self.searcher.doc_dense(row) if mode != "sparse" else None
        return sparse, dense

    def term_rows(self, term: int) -> np.ndarray:
        """Global rows holding a term, deleted ones included (cached; engine thread)."""
        rows = self._term_rows.get(int(term))
        if rows is None:
            rows = self.searcher.engine.term_rows(int(term))
            if len(self._term_rows) < 4096:
                self._term_rows[int(term)] = rows
        return rows

    def _count_live(self, live: np.ndarray | None) -> int:
        """Live images (not deleted) a mask admits (``None``: every live image)."""
        deleted = self.searcher.engine.live  # None when nothing is deleted
        if live is None:
            return int(self.manifest.n_images)
        return int((live & deleted).sum() if deleted is not None else live.sum())

    def _total(self, sparse: sp.csr_matrix, mode: str, live: np.ndarray | None) -> int:
        """How many images the query ranks: those sharing a term (sparse), or every one."""
        n = self.searcher.engine.n_docs  # global rows, deleted ones included
        if mode == "sparse":
            mask = queries.rows_sharing_terms(sparse.indices[sparse.data > 0], n, self.term_rows)
            return self._count_live(mask & live if live is not None else mask)
        return self._count_live(live)

    def _ranked(
        self,
        sparse: sp.csr_matrix,
        dense: np.ndarray | None,
        k: int,
        mode: str,
        explain: bool,
        edits: list[queries.TermEdit],
        row: int | None,
        include_self: bool,
        weights: tuple[float, float] | None,
    ) -> tuple[SearchResult, int, np.ndarray | None]:
        n = self.searcher.engine.n_docs  # masks are over global rows, deleted ones too
        live = queries.filter_mask(edits, n, self.term_rows)
        if row is not None and not include_self:
            live = np.ones(n, dtype=bool) if live is None else live.copy()
            live[row] = False
        total = self._total(sparse, mode, live)
        if live is not None and not self._count_live(live):
            result = SearchResult(
                query=None, caption_id=None, k=k, mode=mode, engine=self.manifest.engine
            )
            order = np.lexsort((sparse.indices, -sparse.data))
            vocab = self.searcher.vocab
            result.query_terms = [
                (vocab.term(int(sparse.indices[j])), float(sparse.data[j])) for j in order
            ]
            result.n_query_terms = int(sparse.nnz)
            result.notes.append("no image passes the filter: no result")
            return result, 0, live
        result = self._search_vectors(sparse, dense, k, mode, explain, live, weights)
        return result, total, live

    def _search_vectors(
        self,
        sparse: sp.csr_matrix,
        dense: np.ndarray | None,
        k: int,
        mode: str,
        explain: bool,
        live: np.ndarray | None = None,
        weights: tuple[float, float] | None = None,
    ) -> SearchResult:
        return self.searcher.search_vectors(
            sparse,
            dense,
            k=k,
            mode=mode,
            explain=explain,
            explain_terms=self.manifest.vocab_size,
            query_terms=None,
            weights=weights,
            live=live,
        )[0]

    def _image_url(self, filename: str) -> str | None:
        if not filename:
            return None
        if self._root_of(filename) is None:
            if not self.images_dir:
                return None
            if self.image_check and self.image_check["all_missing"]:
                return None  # no grey tiles: the page shows the names and the warning
        return "/images/" + urllib.parse.quote(filename)

    def _root_of(self, filename: str) -> tuple[Path, str] | None:
        """``(folder, path in it)`` of an image added from another folder, else ``None``."""
        roots = self._current().image_roots
        for prefix in sorted(roots, key=len, reverse=True):
            if filename.startswith(prefix):
                return roots[prefix], filename[len(prefix) :]
        return None

    def browse(self, offset: str | int | None = None, k: str | int | None = None) -> dict[str, Any]:
        """Answer ``/api/images``: indexed images in index order (a start page to browse).

        Raises:
            BadRequest: On a bad ``offset`` or ``k``.
        """
        k_ = _positive_int("k", k, 20, self.limits.max_k)
        with self._use() as served:
            live = served.live_rows  # deleted images are not listed
            n = int(live.size)
            offset_ = _positive_int("offset", offset, 0, max(n - 1, 0), minimum=0)
            rows = live[offset_ : offset_ + k_].tolist()
            ids, names = served.searcher.image_ids, served.searcher.filenames
            return {
                "total": n,
                "offset": offset_,
                "generation": served.number,
                "images": [
                    {"image_id": ids[r], "filename": names[r], "url": self._image_url(names[r])}
                    for r in rows
                ],
            }

    async def image_terms(self, image_id: str, k: str | int | None = None) -> dict[str, Any]:
        """Answer ``/api/images/{id}/terms``: the image's heaviest indexed terms.

        Raises:
            BadRequest: On an unknown image id (404) or a bad ``k``.
        """
        k_ = _positive_int("k", k, 20, self.limits.max_terms_k)
        with self._use() as served:
            row = self.image_row(image_id)
            terms, weights = await self._on_engine(self.doc_vector, row)
            order = np.lexsort((terms, -weights))
            vocab = self.searcher.vocab
            return {
                "image_id": self.searcher.image_ids[row],
                "filename": self.searcher.filenames[row],
                "url": self._image_url(self.searcher.filenames[row]),
                "n_terms": int(terms.size),
                "generation": served.number,
                "terms": [
                    {"term": vocab.term(int(terms[j])), "weight": _finite(float(weights[j]))}
                    for j in order[:k_]
                ],
            }

    def image_path(self, name: str) -> Path:
        """The file of an indexed image name inside its images folder.

        Only names of live images of the served generation are served, and the resolved
        path must lie inside the folder (the index's images folder, or the folder an
        image was added from), so ``../`` (in any encoding), absolute paths and links out
        of the folder are refused.

        Raises:
            BadRequest: 404 for anything else.
        """
        shown = name[:80]
        with self._use():
            added = self._root_of(name)
            if self.images_dir is None and added is None:
                raise BadRequest(
                    "this index's data has no images folder (start with --images)", 404
                )
            if name not in self.image_files or "\x00" in name:
                raise BadRequest(f"no indexed image file named {shown!r}", 404)
        folder, rel = added if added is not None else (self.images_dir, name)
        folder = folder.resolve()
        path = (folder / rel).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            raise BadRequest(f"no indexed image file named {shown!r}", 404)
        return path

    def info(self, paths: bool | None = None) -> dict[str, Any]:
        """Answer ``/api/info``: the run, engine, vocabulary, images, options and limits.

        Args:
            paths: Also give the server's absolute paths (``run_dir``, ``index_dir``,
                ``images_dir``); default: the service's ``show_paths``. Otherwise the run
                and the images folder are named by their last path component only.
        """
        with self._use() as served:
            out = self._info(paths)
            gen = served.searcher.view.generation
            out.update(
                generation=served.number,
                segments=len(gen.segments),
                deleted_rows=gen.n_deleted,
                generation_created=gen.created,
            )
            return out

    def _info(self, paths: bool | None) -> dict[str, Any]:
        m = self.manifest
        show = self.show_paths if paths is None else bool(paths)
        out: dict[str, Any] = {
            "run": Path(m.run_dir).name,
            "engine": m.engine,
            "split": m.split,
            "images_dir": Path(m.images_dir).name if m.images_dir else m.images_dir,
            "vocab_size": m.vocab_size,
            "images": m.n_images,
            "dense_dim": m.dense_dim,
            "w1": m.w1,
            "w2": m.w2,
            "options": {
                "image_topk": m.options.image_topk,
                "threshold": m.options.threshold,
                "quantize": m.options.quantize,
            },
            "modes": self.modes,
            "text_search": self.text_error is None,
            "text_search_error": self.text_error,
            "image_search": self.images.available,
            "image_search_error": self.images.error,
            "image_files": self.images_dir is not None,
            "image_files_check": self.image_check,
            "ready": self.ready.is_set(),
            "encoder": self.encoder_mode,
            "limits": {
                "max_k": self.limits.max_k,
                "max_depth": self.limits.max_depth,
                "max_terms_k": self.limits.max_terms_k,
                "max_query_chars": self.limits.max_query_chars,
                "max_query_pieces": MAX_QUERY_PIECES,
                "max_pending": self.limits.max_pending,
                "max_upload_mb": self.limits.max_upload_mb,
                "max_upload_pixels": self.limits.max_upload_pixels,
            },
            "notes": list(self.searcher.notes),
        }
        if show:
            out["paths"] = {
                "run_dir": str(Path(m.run_dir).resolve()),
                "index_dir": str(self.index_dir.resolve()),
                "images_dir": None if self.images_dir is None else str(self.images_dir),
            }
        return out

    def health(self) -> dict[str, Any]:
        """Answer ``/healthz`` (liveness: cheap, ok as soon as the server answers)."""
        return {
            "status": "ok",
            "ready": self.ready.is_set(),
            "in_flight": self._pending,
            "served": self.served,
            "refused": self.refused,
            "uptime_s": round(time.time() - self.started, 3),
            "encoder": self._encoder.stats(),
            "generation": self.generation,
            "images": self._served.manifest.n_images,
            "reloads": self.reloads,
            "reload_errors": self.reload_errors,
            "last_reload_error": self.last_reload_error,
        }


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else 0.0
