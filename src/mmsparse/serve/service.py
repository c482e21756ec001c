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
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
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
from mmsparse.index.search import MAX_QUERY_PIECES, Searcher, SearchResult, cap_query

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
    if isinstance(exc, BadRequest):
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
    """

    max_k: int = 100
    max_terms_k: int = 200
    max_query_chars: int = 1000
    max_pending: int = 64
    max_batch: int = 32
    threads: int = 2

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


def _positive_int(name: str, value: str | int | None, default: int, cap: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise BadRequest(f"{name} must be a positive integer, got {str(value)[:40]!r}") from None
    if number < 1:
        raise BadRequest(f"{name} must be a positive integer, got {number}")
    if number > cap:
        raise BadRequest(f"{name} must be at most {cap}, got {number}")
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


class SearchService:
    """An index opened once, with its run and text encoder, serving API requests.

    Args:
        index_dir: Directory written by ``mmsparse index build``.
        run_dir: Encode queries with this run (default: the index's).
        bundle: Backbone bundle directory (default: the run's).
        data: Feature directory of the index's data (default: the index's).
        images_dir: Folder of the image files (default: ``images/`` in the index's data
            directory, when present); only the file names the index lists are served.
        text_encoder: An object with ``encode(list[str]) -> (N, d_txt)`` features to use
            instead of the run's extraction backend (tests, custom encoders).
        encoder: ``batch`` (concurrent queries encoded together) or ``threads``.
        limits: :class:`ServeLimits`.
        warm_up: Load the text encoder and encode one query at start, so the first request
            is not slow.

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
    ) -> None:
        if encoder not in ENCODER_MODES:
            raise MMSparseError(f"unknown encoder mode {encoder!r} (batch or threads)")
        self.limits = limits or ServeLimits()
        self.encoder_mode = encoder
        # An injected text encoder replaces the run's (which the Searcher loads on first use).
        self.searcher = Searcher(
            index_dir, run_dir=run_dir, data=data, bundle=bundle, text_encoder=text_encoder
        )
        self.manifest = self.searcher.manifest
        self.index_dir = Path(index_dir)
        self.row_of = {image_id: row for row, image_id in enumerate(self.searcher.image_ids)}
        self.images_dir = self._images_dir(images_dir)
        self.image_files = set(self.searcher.filenames) if self.images_dir else set()
        self.text_error: str | None = None
        self._engine_pool = cf.ThreadPoolExecutor(1, thread_name_prefix="mmsparse-engine")
        self._engine_lock = threading.Lock()
        self._doc_vectors: dict[int, tuple[np.ndarray, np.ndarray]] = {}
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

    # -- set-up ---------------------------------------------------------------------------

    def _images_dir(self, images_dir: str | Path | None) -> Path | None:
        if images_dir is not None:
            path = Path(images_dir)
            if not path.is_dir():
                raise MMSparseError(f"{path}: images folder not found")
            return path.resolve()
        data = self.searcher.data_dir
        if data and (Path(data) / "images").is_dir():
            return (Path(data) / "images").resolve()
        return None

    def _encode_texts(self, texts: list[str]) -> tuple[np.ndarray, sp.csr_matrix]:
        return self.searcher.encode_text(texts)

    def close(self) -> None:
        """Stop the worker threads and release the engine."""
        self._encoder.close()
        self._engine_pool.shutdown(wait=False, cancel_futures=True)
        self.searcher.close()

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
        return await loop.run_in_executor(self._engine_pool, call)

    def _locked(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with self._engine_lock:
            return fn(*args, **kwargs)

    def image_row(self, image_id: str) -> int:
        """Index row of an image id.

        Raises:
            BadRequest: 404 on an unknown image id.
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
        k: str | int | None = None,
        mode: str | None = None,
        explain: str | bool | None = True,
        force: str | bool | None = False,
    ) -> dict[str, Any]:
        """Answer ``/api/search``: a text query ``q``, or ``like`` (an image id's vector).

        A text query gets a ``confidence`` verdict (:mod:`mmsparse.index.confidence`); a
        ``no_match`` one answers no hits unless ``force`` is true.

        Returns:
            The JSON-ready result (see docs/serving.md).

        Raises:
            BadRequest: On any invalid parameter (one-line message).
            Overloaded: If too many searches are in flight.
            MMSparseError: If text search is not possible for this run.
        """
        t0 = time.perf_counter()
        k_ = _positive_int("k", k, 10, self.limits.max_k)
        mode_ = self.check_mode(mode)
        explain_ = parse_bool("explain", explain, True)
        force_ = parse_bool("force", force, False)
        notes: list[str] = []
        if (q is None or q == "") and not like:
            raise BadRequest("missing query: give q=some words (or like=IMAGE_ID)")
        if q and like:
            raise BadRequest("give either q or like, not both")
        row = None
        if like:
            row = self.image_row(like)
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
            if row is not None:
                query_text = None
                result = await self._on_engine(self._search_like, row, k_, mode_, explain_)
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
                result = await self._on_engine(
                    self._search_vectors, sparse, dense, k_, mode_, explain_
                )
        finally:
            self._release()
        out = self._result_json(result, explain_)
        verdict = None if query_text is None else self.searcher.assess(query_text, result)
        out["confidence"] = None if verdict is None else verdict.to_dict()
        if verdict is not None and verdict.flagged:
            hide = verdict.verdict == "no_match" and not force_ and out["hits"]
            out["notes"].append(
                verdict.note() + ("; no image shown (force=1 shows the closest)" if hide else "")
            )
            if hide:
                out["hits"] = []
        out["query"] = query_text
        out["like"] = None if row is None else self.searcher.image_ids[row]
        out["notes"] = notes + out["notes"]
        if row is not None:
            out["notes"].append(
                f"more like image {self.searcher.image_ids[row]}: its indexed sparse vector is "
                "the query"
            )
        total = time.perf_counter() - t0
        out["seconds"] = {
            "encode": round(t_enc, 6) if row is None else 0.0,
            "search": round(result.seconds, 6),
            "total": round(total, 6),
        }
        return out

    def _search_vectors(
        self, sparse: sp.csr_matrix, dense: np.ndarray, k: int, mode: str, explain: bool
    ) -> SearchResult:
        return self.searcher.search_vectors(
            sparse, dense, k=k, mode=mode, explain=explain, explain_terms=self.manifest.vocab_size
        )[0]

    def _search_like(self, row: int, k: int, mode: str, explain: bool) -> SearchResult:
        terms, weights = self.doc_vector(row)
        sparse = sp.csr_matrix(
            (weights, terms, [0, terms.size]), shape=(1, self.manifest.vocab_size)
        )
        dense = self.searcher.doc_dense(row) if mode != "sparse" else None
        return self._search_vectors(sparse, dense, k, mode, explain)

    def _image_url(self, filename: str) -> str | None:
        if not self.images_dir or not filename:
            return None
        return "/images/" + urllib.parse.quote(filename)

    def _result_json(self, result: SearchResult, explain: bool) -> dict[str, Any]:
        hits = []
        for hit in result.hits:
            item: dict[str, Any] = {
                "rank": hit.rank,
                "image_id": hit.image_id,
                "filename": hit.filename,
                "url": self._image_url(hit.filename),
                "score": _finite(hit.score),
            }
            if explain:
                terms = [
                    {
                        "term": t,
                        "query_weight": _finite(qw),
                        "image_weight": _finite(dw),
                        "contribution": _finite(c),
                    }
                    for t, qw, dw, c in hit.terms or []
                ]
                item["terms"] = terms
                item["sparse_score"] = _finite(float(sum(t["contribution"] for t in terms)))
            hits.append(item)
        return {
            "k": result.k,
            "mode": result.mode,
            "engine": result.engine,
            "query_terms": [{"term": t, "weight": _finite(w)} for t, w in result.query_terms],
            "hits": hits,
            "notes": list(result.notes),
        }

    async def image_terms(self, image_id: str, k: str | int | None = None) -> dict[str, Any]:
        """Answer ``/api/images/{id}/terms``: the image's heaviest indexed terms.

        Raises:
            BadRequest: On an unknown image id (404) or a bad ``k``.
        """
        k_ = _positive_int("k", k, 20, self.limits.max_terms_k)
        row = self.image_row(image_id)
        terms, weights = await self._on_engine(self.doc_vector, row)
        order = np.lexsort((terms, -weights))
        vocab = self.searcher.vocab
        return {
            "image_id": self.searcher.image_ids[row],
            "filename": self.searcher.filenames[row],
            "url": self._image_url(self.searcher.filenames[row]),
            "n_terms": int(terms.size),
            "terms": [
                {"term": vocab.term(int(terms[j])), "weight": _finite(float(weights[j]))}
                for j in order[:k_]
            ],
        }

    def image_path(self, name: str) -> Path:
        """The file of an indexed image name inside the images folder.

        Only names listed in the index are served, and the resolved path must lie inside
        the folder, so ``../`` (in any encoding), absolute paths and links out of the
        folder are refused.

        Raises:
            BadRequest: 404 for anything else.
        """
        shown = name[:80]
        if self.images_dir is None:
            raise BadRequest("this index's data has no images folder (start with --images)", 404)
        if name not in self.image_files or "\x00" in name:
            raise BadRequest(f"no indexed image file named {shown!r}", 404)
        path = (self.images_dir / name).resolve()
        if not path.is_relative_to(self.images_dir) or not path.is_file():
            raise BadRequest(f"no indexed image file named {shown!r}", 404)
        return path

    def info(self) -> dict[str, Any]:
        """Answer ``/api/info``: the run, engine, vocabulary, images, options and limits."""
        m = self.manifest
        return {
            "run": m.run_dir,
            "engine": m.engine,
            "split": m.split,
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
            "image_files": self.images_dir is not None,
            "encoder": self.encoder_mode,
            "limits": {
                "max_k": self.limits.max_k,
                "max_terms_k": self.limits.max_terms_k,
                "max_query_chars": self.limits.max_query_chars,
                "max_query_pieces": MAX_QUERY_PIECES,
                "max_pending": self.limits.max_pending,
            },
            "notes": list(self.searcher.notes),
        }

    def health(self) -> dict[str, Any]:
        """Answer ``/healthz``."""
        return {
            "status": "ok",
            "in_flight": self._pending,
            "served": self.served,
            "refused": self.refused,
            "uptime_s": round(time.time() - self.started, 3),
            "encoder": self._encoder.stats(),
        }


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else 0.0
