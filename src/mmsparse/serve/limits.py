"""The caps of ``mmsparse serve``: what one request may ask for, and the requests in flight."""

from __future__ import annotations

from dataclasses import dataclass, fields

from mmsparse.errors import MMSparseError


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
