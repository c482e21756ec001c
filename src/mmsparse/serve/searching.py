"""A search request of ``mmsparse serve``, from its parameters to the JSON of ranked hits.

:class:`SearchParams` checks what a request asks (one-line
:class:`~mmsparse.serve.params.BadRequest` errors); :class:`SearchRunner` turns the query (a
text, an indexed image or an uploaded one) into query vectors, holds one of the places in
flight (:class:`~mmsparse.serve.limits.Admission`) while it encodes and searches, runs the
search on the engine thread (:meth:`~mmsparse.serve.served.Served.ranked`), judges a text
query (its ``confidence`` verdict) and writes the answer (:mod:`mmsparse.serve.results`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

from mmsparse.errors import MMSparseError
from mmsparse.index.search import MAX_QUERY_PIECES, Searcher, cap_query
from mmsparse.serve import queries, results
from mmsparse.serve.images import ImageFolder
from mmsparse.serve.limits import Admission, ServeLimits
from mmsparse.serve.params import (
    BadRequest,
    check_mode,
    check_text_query,
    parse_bool,
    parse_weights,
    positive_int,
)
from mmsparse.serve.served import Served
from mmsparse.serve.uploads import ImageQueries
from mmsparse.serve.workers import EngineThread, text_encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchParams:
    """What a search asks beyond its query, checked.

    Attributes:
        k: Hits of the page.
        offset: Hits skipped (``offset + k`` at most ``max_depth``).
        mode: ``sparse``, ``dense`` or ``hybrid`` (one the index supports).
        explain: Each hit lists its shared terms and score parts.
        force: Hits even when the verdict is ``no_match``.
        include_self: A search by an indexed image keeps that image among the hits.
        edits: The query's term edits (:mod:`mmsparse.serve.queries`).
        weights: The hybrid weights ``(w1, w2)`` asked for (``None``: the index's).
    """

    k: int
    offset: int
    mode: str
    explain: bool
    force: bool
    include_self: bool
    edits: list[queries.TermEdit]
    weights: tuple[float, float] | None

    @classmethod
    def parse(
        cls,
        searcher: Searcher,
        limits: ServeLimits,
        *,
        k: str | int | None = None,
        offset: str | int | None = None,
        mode: str | None = None,
        explain: str | bool | None = True,
        force: str | bool | None = False,
        terms: str | None = None,
        w1: str | float | None = None,
        w2: str | float | None = None,
        include_self: str | bool | None = False,
    ) -> SearchParams:
        """Check a request's parameters against ``searcher``'s index and the limits.

        Raises:
            BadRequest: Naming the first bad parameter.
        """
        k_ = positive_int("k", k, 10, limits.max_k)
        offset_ = positive_int("offset", offset, 0, limits.max_depth - 1, minimum=0)
        if offset_ + k_ > limits.max_depth:
            raise BadRequest(
                f"offset + k must be at most {limits.max_depth} (results are ranked "
                f"{limits.max_depth} deep), got {offset_ + k_}"
            )
        mode_ = check_mode(mode, searcher.engine, searcher.inference_free)
        explain_ = parse_bool("explain", explain, True)
        force_ = parse_bool("force", force, False)
        self_ = parse_bool("include_self", include_self, False)
        edits = queries.parse_terms(terms, searcher.vocab)
        m = searcher.manifest
        weights = parse_weights(w1, w2, (m.w1, m.w2))
        return cls(k_, offset_, mode_, explain_, force_, self_, edits, weights)


class SearchRunner:
    """The searches of a service: queries encoded off the event loop, ranked on the engine.

    Args:
        encode: ``encode(list[str]) -> (dense, sparse CSR)`` of the run's text encoder.
        encoder: ``batch`` or ``threads`` (:func:`~mmsparse.serve.workers.text_encoder`).
        limits: The service's limits.
        uploads: The uploaded query images.
        folder: The image files (their URLs in the answer).

    Attributes:
        admission: The bound on searches in flight.
        engine: The engine thread.
        text_error: Why text queries cannot be encoded (:meth:`check_text`), else ``None``.
    """

    def __init__(
        self,
        encode: Any,
        encoder: str,
        *,
        limits: ServeLimits,
        uploads: ImageQueries,
        folder: ImageFolder,
    ) -> None:
        self.encode_texts = encode
        self.limits = limits
        self.uploads = uploads
        self.folder = folder
        self.admission = Admission(limits.max_pending)
        self.engine = EngineThread()
        self.text_error: str | None = None
        self.encoder = text_encoder(
            encoder, encode, max_batch=limits.max_batch, threads=limits.threads
        )

    def check_text(self) -> None:
        """Load the text encoder and encode one query; a failure is :attr:`text_error`."""
        try:
            self.encode_texts(["a photo"])
        except MMSparseError as exc:
            self.text_error = str(exc)
            log.warning("text search unavailable: %s", exc)

    def warm_up(self, served: Served) -> None:
        """One search per mode of ``served`` (the engine compiles its kernels)."""
        if self.text_error is None:
            dense, sparse = self.encode_texts(["a photo of a dog"])
        else:
            modes = served.searcher.modes
            sparse, dense = served.like_vectors(
                int(served.live_rows[0]), "hybrid" if "hybrid" in modes else "sparse"
            )
        for mode in served.searcher.modes:
            self.engine.call(served.search_vectors, sparse, dense, 10, mode, True)
            self.engine.call(served.total, sparse, mode, None)

    def close(self) -> None:
        """Stop the text encoder's and the engine's threads."""
        self.encoder.close()
        self.engine.close()

    async def search(
        self,
        served: Served,
        params: SearchParams,
        *,
        q: str | None = None,
        like: str | None = None,
        image: str | None = None,
        upload: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Answer a search of ``served`` (see :meth:`~mmsparse.serve.SearchService.search`).

        Raises:
            BadRequest: On a missing or bad query.
            Overloaded: If too many searches are in flight.
        """
        t0 = time.perf_counter()
        given = [name for name, v in (("q", q), ("like", like), ("image", image)) if v]
        if not given:
            raise BadRequest("missing query: give q=some words (or like=IMAGE_ID, image=UPLOAD_ID)")
        if len(given) > 1:
            raise BadRequest(f"give either q or like or image, not {' and '.join(given)}")
        notes: list[str] = []
        row = uploaded = text = None
        if like:
            row = served.image_row(like)
        elif image:
            uploaded = self.uploads.query(image)
        else:
            assert q is not None
            text, notes = check_text_query(q, self.limits.max_query_chars)
            if self.text_error:
                raise BadRequest(f"text search is not available: {self.text_error}", 400)
        p = params
        with self.admission.slot():
            t_enc = time.perf_counter()
            if row is not None:
                sparse, dense = await self.engine.run(served.like_vectors, row, p.mode)
            elif uploaded is not None:
                sparse, dense = uploaded.sparse, uploaded.dense
            else:
                piece_cut = False
                if not served.searcher.inference_free:  # a lookup has no length limit
                    text, piece_cut = cap_query(text, served.searcher.vocab)
                if piece_cut:
                    notes.append(
                        f"query cut to its first {len(text.split())} words ({MAX_QUERY_PIECES} "
                        "word pieces, the text encoder's limit)"
                    )
                dense, sparse = await asyncio.wrap_future(self.encoder.submit(text))
            t_enc = time.perf_counter() - t_enc
            original = sparse
            if p.edits:
                sparse, edit_notes = queries.apply_edits(sparse, p.edits, served.searcher.vocab)
                notes.extend(edit_notes)
            result, total, live = await self.engine.run(
                served.ranked,
                sparse,
                dense,
                p.offset + p.k,
                p.mode,
                p.explain,
                p.edits,
                row,
                p.include_self,
                p.weights,
            )
        verdict = None
        edited = bool(p.edits) or (p.weights is not None and p.mode == "hybrid")
        if text is not None:
            verdict = results.assess(served.searcher, text, result, words_only=edited)
        result.hits = result.hits[p.offset :]
        out = results.result_json(
            served.searcher,
            result,
            p.explain,
            searched=sparse,
            original=original,
            text=text,
            image_url=functools.partial(self.folder.url, served),
        )
        out["total"] = total
        out["offset"] = p.offset
        out["more"] = p.offset + len(out["hits"]) < min(total, self.limits.max_depth)
        out["edits"] = [e.to_dict() for e in p.edits]
        out["terms"] = queries.terms_spec(p.edits)
        out["notes"].extend(results.edit_notes(p.edits, p.mode, live, served))
        results.add_verdict(out, verdict, edited=edited, force=p.force)
        out["query"] = text
        out["like"] = None if row is None else served.searcher.image_ids[row]
        out["image"] = None if uploaded is None else uploaded.upload_id
        out["upload"] = upload
        out["notes"] = notes + out["notes"]
        if row is not None:
            image_id = served.searcher.image_ids[row]
            out["notes"].append(results.like_note(image_id, p.mode, p.include_self))
        if uploaded is not None:
            out["notes"].append(
                "search by image: the uploaded image, encoded by the run's image encoder and "
                "heads, is the query"
            )
        out["seconds"] = {
            "encode": round(t_enc, 6) if text is not None else 0.0,
            "search": round(result.seconds, 6),
            "total": round(time.perf_counter() - t0, 6),
        }
        return out
