"""The caps of ``mmsparse serve``: what one request may ask for, and the requests in flight.

:class:`ServeLimits` are the caps; :class:`Admission` keeps the searches in flight (encoding,
queued or searching) under ``max_pending`` and answers the rest at once with
:class:`~mmsparse.serve.params.Overloaded` (503 with ``Retry-After``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields

from mmsparse.errors import MMSparseError
from mmsparse.serve.params import Overloaded


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


class Admission:
    """A bound on the searches in flight: beyond ``max_pending``, :class:`Overloaded` (503).

    Attributes:
        served: Searches admitted and finished.
        refused: Searches refused for the bound.
    """

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self.served = 0
        self.refused = 0

    @property
    def pending(self) -> int:
        """Searches in flight now."""
        return self._pending

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the places for the block.

        Raises:
            Overloaded: At once, when every place is taken.
        """
        with self._lock:
            if self._pending >= self.max_pending:
                self.refused += 1
                raise Overloaded(
                    f"the server is busy ({self._pending} searches in flight, limit "
                    f"{self.max_pending}); retry shortly"
                )
            self._pending += 1
        try:
            yield
        finally:
            with self._lock:
                self._pending -= 1
                self.served += 1
