"""Edited queries of ``mmsparse serve``: terms weighted, required or excluded.

Images as queries (uploads) are :mod:`mmsparse.serve.uploads`.

**Edited queries.** A text (or image) query is a weighted bag of vocabulary terms; the API
takes edits of it as ``terms=EDIT,EDIT,...`` (``GET /api/search``), so an edited query is
reproducible from its URL. Each edit is ``[+|-]TERM[:FACTOR]``:

- ``TERM:FACTOR`` multiplies the term's query weight by ``FACTOR`` (``0`` drops the term,
  ``2`` doubles it); a term the query does not hold has weight 0, so a factor does nothing
  there (a note says so);
- ``+TERM`` requires the term: only images whose indexed sparse vector holds it are ranked;
- ``-TERM`` excludes it: images that hold it are not ranked.

``TERM`` is the vocabulary's spelling (``dog``, ``##s``), with ``%``, ``,``, ``:`` and a
leading ``+``/``-`` percent-encoded (``%2C``); ``#ID`` names a term by its id. Required and
excluded terms are a **filter**: a boolean mask of the rows that may be ranked, built from
the terms' rows (:meth:`~mmsparse.index.engines.Engine.term_rows`: the posting lists of the
``inverted`` engine) and handed to the engine as its ``live`` mask. The ``inverted`` engine
ranks only those rows (exact: the same top-k as ranking every image and keeping the
admitted ones); other engines are asked for more candidates and the others dropped
(:meth:`~mmsparse.index.engines.Engine.search`). Weights change the sparse vector, so the
``sparse`` and ``hybrid`` scores; a ``dense`` score is not made of words, and only the
filter applies to it.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmsparse.serve.params import BadRequest

MAX_EDITS = 128


class QueryInputError(BadRequest):
    """A query edit or an uploaded image is not acceptable (served as a 4xx).

    Attributes:
        status: The HTTP status: 400 (bad edit, undecodable image), 413 (too large),
            415 (not an image type), 409 (the run cannot encode images).
    """


# -- edited queries -------------------------------------------------------------------------


@dataclass(frozen=True)
class TermEdit:
    """One edit of a query's terms.

    Attributes:
        term: The term as the vocabulary spells it.
        term_id: Its id.
        factor: Multiplies the term's query weight (``None``: unchanged).
        require: Only images holding the term are ranked.
        exclude: Images holding the term are not ranked.
    """

    term: str
    term_id: int
    factor: float | None = None
    require: bool = False
    exclude: bool = False

    def spec(self) -> str:
        """The edit as written in ``terms=`` (canonical form)."""
        head = "+" if self.require else "-" if self.exclude else ""
        name = quote_term(self.term)
        tail = "" if self.factor is None else f":{_number(self.factor)}"
        return f"{head}{name}{tail}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``term``, ``factor``, ``require``, ``exclude``."""
        return {
            "term": self.term,
            "factor": self.factor,
            "require": self.require,
            "exclude": self.exclude,
        }


def _number(x: float) -> str:
    return f"{x:g}"


def quote_term(term: str) -> str:
    """A term percent-encoded where ``terms=`` would misread it.

    ``%``, ``,``, ``:`` and a leading ``+`` or ``-`` are escaped.
    """
    out = term.replace("%", "%25").replace(",", "%2C").replace(":", "%3A")
    if out[:1] in ("+", "-"):
        out = f"%{ord(out[0]):02X}" + out[1:]
    return out


def _term_id(name: str, vocab: Any) -> int | None:
    tid = vocab.id(name) if getattr(vocab, "named", True) else None
    if tid is None and name.startswith("#") and name[1:].isdigit():
        n = int(name[1:])
        if 0 <= n < len(vocab):
            return n
    return tid


def parse_terms(spec: str | None, vocab: Any) -> list[TermEdit]:
    """The edits of a ``terms=`` value (see the module docstring).

    A term edited twice keeps the last factor and either flag.

    Raises:
        QueryInputError: On an unknown term, a bad factor, a term both required and
            excluded, or more than :data:`MAX_EDITS` edits; the message names the edit.
    """
    if spec is None or not spec.strip():
        return []
    if vocab is None:
        raise QueryInputError("terms= needs the run's vocabulary (the index opened without it)")
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    if len(entries) > MAX_EDITS:
        raise QueryInputError(f"terms: at most {MAX_EDITS} edits, got {len(entries)}")
    edits: dict[int, TermEdit] = {}
    for entry in entries:
        shown = entry[:60]
        require = exclude = False
        body = entry
        if body[0] in "+-" and len(body) > 1:
            require, exclude = body[0] == "+", body[0] == "-"
            body = body[1:]
        factor: float | None = None
        if ":" in body:
            name_part, _, value = body.rpartition(":")
            try:
                factor = float(value)
            except ValueError:
                raise QueryInputError(
                    f"terms: {shown!r}: the factor after ':' must be a number, got {value[:20]!r}"
                ) from None
            if not math.isfinite(factor) or factor < 0 or factor > 1000:
                raise QueryInputError(
                    f"terms: {shown!r}: the factor must be between 0 and 1000, got {value[:20]!r}"
                )
            body = name_part
        name = urllib.parse.unquote(body)
        if not name:
            raise QueryInputError(f"terms: {shown!r} names no term")
        tid = _term_id(name, vocab)
        if tid is None:
            raise QueryInputError(
                f"terms: {name[:40]!r} is not a term of this run's vocabulary (edit the "
                "query's listed terms, or write #ID for a term id)"
            )
        term = vocab.term(tid)
        old = edits.get(tid)
        if old is not None:
            factor = old.factor if factor is None else factor
            require, exclude = require or old.require, exclude or old.exclude
        if require and exclude:
            raise QueryInputError(f"terms: {term!r} is both required (+) and excluded (-)")
        edits[tid] = TermEdit(term, tid, factor, require, exclude)
    return list(edits.values())


def terms_spec(edits: list[TermEdit]) -> str:
    """The canonical ``terms=`` value of a list of edits."""
    return ",".join(e.spec() for e in edits)


def apply_edits(
    sparse: sp.csr_matrix, edits: list[TermEdit], vocab: Any = None
) -> tuple[sp.csr_matrix, list[str]]:
    """The query's sparse vector with every factor applied.

    Args:
        sparse: ``(1, V)`` query sparse vector.
        edits: The edits (filters are not applied here: see :func:`filter_mask`).
        vocab: Names terms in the notes.

    Returns:
        ``((1, V) float32 CSR, notes)``: terms at factor 0 are removed.
    """
    q = sp.csr_matrix(sparse, dtype=np.float32, copy=True)
    q.sort_indices()
    notes = []
    held = dict(zip(q.indices.tolist(), range(q.nnz)))
    data = q.data.copy()
    for e in edits:
        if e.factor is None:
            continue
        j = held.get(e.term_id)
        if j is None:
            if e.factor != 0:
                notes.append(
                    f"{e.term!r} is not one of the query's terms: its factor changes nothing "
                    f"(+{quote_term(e.term)} requires it instead)"
                )
            continue
        data[j] = np.float32(data[j] * e.factor)
    q = sp.csr_matrix((data, q.indices.copy(), q.indptr.copy()), shape=q.shape)
    q.eliminate_zeros()
    return q, notes


def filter_mask(
    edits: list[TermEdit], n_docs: int, term_rows: Any, live: np.ndarray | None = None
) -> np.ndarray | None:
    """The rows a filtered query may rank: holding every required term, no excluded one.

    Args:
        edits: The edits (only ``require`` and ``exclude`` count).
        n_docs: Rows of the index.
        term_rows: ``term_rows(term_id) -> int64 rows`` holding the term.
        live: An existing mask to narrow (``None``: every row).

    Returns:
        ``(n_docs,)`` bool, or ``live`` unchanged when no edit filters.
    """
    filters = [e for e in edits if e.require or e.exclude]
    if not filters:
        return live
    mask = np.ones(n_docs, dtype=bool) if live is None else np.array(live, dtype=bool)
    for e in filters:
        has = np.zeros(n_docs, dtype=bool)
        has[np.asarray(term_rows(e.term_id), dtype=np.int64)] = True
        mask &= has if e.require else ~has
    return mask


def rows_sharing_terms(term_ids: np.ndarray, n_docs: int, term_rows: Any) -> np.ndarray:
    """``(n_docs,)`` bool: the rows holding at least one of ``term_ids``."""
    mask = np.zeros(n_docs, dtype=bool)
    for t in np.asarray(term_ids, dtype=np.int64).tolist():
        mask[np.asarray(term_rows(t), dtype=np.int64)] = True
    return mask
