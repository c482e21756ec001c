"""The worker threads of ``mmsparse serve``: the text encoder and the engine, off the event loop.

The engine is searched from one thread at a time (:class:`EngineThread`: the inverted index
keeps work arrays; Milvus clients are not shared across threads), and the text encoder runs
in worker threads (:func:`text_encoder`), either

- ``batch`` (default): one encoder thread takes every query waiting at that moment (up to
  ``max_batch``) and encodes them in one forward pass, so concurrent queries share the
  cost; an idle server encodes a lone query at once, without a batching window; or
- ``threads``: a pool of ``threads`` workers, each encoding one query.

``mmsparse bench serve`` measures both (docs/serving.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextvars
import functools
import queue
import threading
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import MMSparseError

ENCODER_MODES = ("batch", "threads")


class BatchEncoder:
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
        """Encode ``text``; the future's result is ``(dense (1, d), sparse (1, V) CSR)``."""
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
                # dense is None for inference-free queries (no dense query side). A failure
                # here goes to the request: the loop must live on, or later requests hang.
                try:
                    fut.set_result((None if dense is None else dense[i : i + 1], sparse[i]))
                except BaseException as exc:
                    fut.set_exception(exc)

    def stats(self) -> dict[str, Any]:
        """``{"mode": "batch", "batches", "queries"}``: the batches and queries encoded."""
        return {"mode": "batch", "batches": self.batches, "queries": self.encoded}

    def close(self) -> None:
        """Stop the thread (the queries queued before are encoded first)."""
        self._queue.put(None)
        self._thread.join(timeout=5)


class ThreadEncoder:
    """A pool of threads, each encoding one query."""

    def __init__(self, encode: Any, threads: int) -> None:
        self._encode = encode
        self.threads = threads
        self._pool = cf.ThreadPoolExecutor(threads, thread_name_prefix="mmsparse-encoder")

    def submit(self, text: str) -> cf.Future:
        """Encode ``text``; the future's result is ``(dense (1, d), sparse (1, V) CSR)``."""
        return self._pool.submit(self._encode_one, text)

    def _encode_one(self, text: str) -> tuple[np.ndarray, sp.csr_matrix]:
        dense, sparse = self._encode([text])
        return dense, sparse[0]

    def stats(self) -> dict[str, Any]:
        """``{"mode": "threads", "threads"}``."""
        return {"mode": "threads", "threads": self.threads}

    def close(self) -> None:
        """Stop the workers (queries not yet started are cancelled)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def text_encoder(mode: str, encode: Any, *, max_batch: int, threads: int) -> Any:
    """The text encoder's workers of an encoder mode.

    Args:
        mode: ``batch`` (:class:`BatchEncoder`) or ``threads`` (:class:`ThreadEncoder`).
        encode: ``encode(list[str]) -> (dense (N, d), sparse (N, V) CSR)``.
        max_batch: Largest batch of the ``batch`` encoder.
        threads: Workers of the ``threads`` encoder.

    Raises:
        MMSparseError: On an unknown mode.
    """
    if mode == "batch":
        return BatchEncoder(encode, max_batch)
    if mode == "threads":
        return ThreadEncoder(encode, threads)
    raise MMSparseError(f"unknown encoder mode {mode!r} (batch or threads)")


class EngineThread:
    """One thread that runs every engine call, one at a time.

    Calls from a request run in a copy of its context, so the engine thread uses the
    generation the request holds (:mod:`mmsparse.serve.generations`).
    """

    def __init__(self) -> None:
        self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="mmsparse-engine")
        self._lock = threading.Lock()

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the engine thread, awaited."""
        loop = asyncio.get_running_loop()
        call = functools.partial(self.call, fn, *args, **kwargs)
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._pool, context.run, call)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in this thread, while no engine call runs (the warm-up)."""
        with self._lock:
            return fn(*args, **kwargs)

    def close(self) -> None:
        """Stop the thread (calls not yet started are cancelled)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
