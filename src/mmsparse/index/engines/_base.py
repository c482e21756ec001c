"""The engine contract (:class:`Engine`, :class:`Param`) and the registry of engines.

An engine is one class in one module of :mod:`mmsparse.index.engines`, decorated with
:func:`register_engine`. The registry imports the modules of the package on first use
(:func:`discover`), so adding an engine is adding one file; the modules import their
optional packages only inside methods (:meth:`Engine.require`), so listing the engines
never needs them.

What the base class does once for every engine:

* parameters: :meth:`Engine.check_params` validates build and search parameters against
  the declared :class:`Param` lists (an unknown key or a bad value is one
  :class:`~mmsparse.errors.QueryError` line that lists the engine's parameters, their
  types and defaults);
* documents: :meth:`Engine.build` checks the vectors, applies the quantisation (engines
  with ``stores_impacts`` get the float weights and the mode and store integer impacts;
  the others get the dequantised weights, so every engine serves the same vectors) and
  refuses dense vectors to an engine that cannot hold them;
* queries: :meth:`Engine.check_query` checks the mode (known, and served by this index),
  ``k``, the sparse vectors (vocabulary size, finite non-negative weights), the dense
  vectors (dimension), ``threads``, the ``live`` mask and the search parameters;
* deleted rows: ``live`` (a bool per row) is honoured natively by engines with
  ``native_live``; for the others :meth:`Engine.search_batch` asks for ``k`` plus the
  number of dead rows and drops them, which keeps an exact engine exact.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import pkgutil
import re
import shutil
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError, MMSparseError, QueryError, require_extra
from mmsparse.index.hits import SearchHits, check_k, check_live, check_queries, check_weights
from mmsparse.index.manifest import IndexManifest
from mmsparse.index.quantize import QUANTIZE_MODES, dequantize
from mmsparse.index.quantize import quantize as quantize_docs

log = logging.getLogger(__name__)

SEARCH_MODES = ("sparse", "dense", "hybrid")
DEFAULT_ENGINE = "inverted"
CAPABILITIES: dict[str, str] = {
    "exact": "returns the exact top-k of the vectors it stores",
    "dense": "can hold the images' dense vectors (dense and hybrid search)",
    "hybrid": "weighted w1 * dense + w2 * sparse search (with dense vectors)",
    "explain": "returns the stored weight of a term in an image (doc_weights, --explain)",
    "incremental": "builds over any subset of the images into a directory of its own, so "
    "an index can be several segments, each searched alone",
    "threads": "search_batch uses the threads it is given",
}
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


# -- parameters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One build or search parameter of an engine.

    Attributes:
        name: Key (``--param NAME=VALUE``).
        type: ``int``, ``float``, ``str`` or ``bool``.
        default: Value when not given (``None``: the engine decides, see ``help``).
        help: What it does, one line.
        minimum: Smallest value allowed (numbers).
        maximum: Largest value allowed (numbers).
        positive: The value must be above 0 (numbers).
        choices: Allowed values (strings, compared case-insensitively, stored upper case
            when every choice is upper case).
    """

    name: str
    type: type
    default: Any = None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    choices: tuple[str, ...] = ()

    def rule(self) -> str:
        """The type and range, e.g. ``int >= 1`` or ``float in (0, 1]``."""
        kind = self.type.__name__
        if self.choices:
            return f"{kind}: {'|'.join(self.choices)}"
        if self.minimum is not None and self.maximum is not None:
            return f"{kind} in {self.minimum:g}..{self.maximum:g}"
        if self.positive:
            return f"{kind} > 0"
        if self.minimum is not None:
            return f"{kind} >= {self.minimum:g}"
        return f"{kind} <= {self.maximum:g}" if self.maximum is not None else kind

    def describe(self) -> str:
        """``name (rule, default D)``."""
        default = "none" if self.default is None else repr(self.default)
        return f"{self.name} ({self.rule()}, default {default})"

    def parse(self, value: Any) -> Any:
        """``value`` checked and converted to the parameter's type.

        Raises:
            ValueError: Saying what is wrong with the value.
        """
        if value is None:
            return None
        if self.type is bool:
            if isinstance(value, bool):
                return value
            raise ValueError(f"expected true or false, got {value!r}")
        if self.type is str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {value!r}")
            if self.choices:
                upper = all(c == c.upper() for c in self.choices)
                found = [c for c in self.choices if c.lower() == value.lower()]
                if not found:
                    raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}")
                return found[0].upper() if upper else found[0]
            return value
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise ValueError(f"expected {self.rule()}, got {value!r}")
        if self.type is int:
            if not float(value).is_integer():
                raise ValueError(f"expected an integer, got {value!r}")
            number: float = int(value)
        else:
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"expected a finite number, got {value!r}")
        if (
            (self.positive and number <= 0)
            or (self.minimum is not None and number < self.minimum)
            or (self.maximum is not None and number > self.maximum)
        ):
            raise ValueError(f"expected {self.rule()}, got {value!r}")
        return number


@dataclass
class BuildRequest:
    """A checked build request (what :meth:`Engine._build` receives).

    Attributes:
        sparse: ``(n, V)`` float32 CSR, finite non-negative weights (dequantised unless the
            engine ``stores_impacts``).
        dense: ``(n, dense_dim)`` float32 for engines that hold dense vectors, else ``None``.
        build: Every build parameter, given or default.
        search: Every search parameter, given or default (the index's search defaults).
        quantize: ``none``, or the mode an engine with ``stores_impacts`` applies.
        image_ids: Image id of every row.
        progress: Show progress bars.
    """

    sparse: sp.csr_matrix
    dense: np.ndarray | None
    build: dict[str, Any]
    search: dict[str, Any]
    quantize: str
    image_ids: list[str]
    progress: bool


@dataclass
class Query:
    """A checked search request (what :meth:`Engine._search` receives).

    Attributes:
        sparse: ``(B, V)`` canonical float32 CSR (sorted terms, no duplicates, weights
            finite and non-negative).
        k: Results per query (``>= 1``, within the engine's ``max_k``).
        mode: ``sparse``, ``dense`` or ``hybrid``, served by this index.
        dense: ``(B, dense_dim)`` float32 for ``dense``/``hybrid``, else ``None``.
        threads: Threads to search with (``None``: the engine's default).
        live: ``(n_docs,)`` bool of the rows that may be returned, or ``None`` (all).
        params: Every search parameter of the engine, given or the index's default.
        weights: ``(w1, w2)`` of a ``hybrid`` search that replace the index's (``None``:
            the index's, :attr:`Engine.w1` and :attr:`Engine.w2`).
    """

    sparse: sp.csr_matrix
    k: int
    mode: str
    dense: np.ndarray | None
    threads: int | None
    live: np.ndarray | None
    params: dict[str, Any]
    weights: tuple[float, float] | None = None


# -- the contract -------------------------------------------------------------------------


class Engine(ABC):
    """Base class of the index engines: build, open, search, and what they can do.

    Subclasses declare the class attributes below and implement :meth:`_build`,
    :meth:`_load` and :meth:`_search`; they may override :meth:`doc_weights`,
    :meth:`doc_vector`, :meth:`doc_dense`, :attr:`nbytes` and :meth:`close`.

    Class attributes:
        name: Registry name (``--engine NAME``).
        summary: One line for ``--help`` and ``mmsparse index engines``.
        capabilities: Subset of :data:`CAPABILITIES`.
        build_params: Parameters of :meth:`build` (search parameters given at build time
            are stored as the index's search defaults).
        search_params: Parameters of :meth:`search_batch`.
        requires: ``(module, purpose)`` of the optional packages it needs.
        extra: The mmsparse extra that installs them.
        files: Names it writes into an index directory (removed before any rebuild).
        stores_impacts: Gets float weights and the quantisation mode, and stores integer
            impacts itself (else gets the dequantised weights).
        always_dense: Always stores the images' dense vectors (needs them to build).
        max_k: Most results a search may ask for (``None``: no limit).
        native_live: ``_search`` honours ``query.live`` itself.

    Instances (from :meth:`open`) have ``directory``, ``params`` (the manifest's engine
    parameters), ``n_docs``, ``vocab_size``, ``dense_dim``, ``has_dense``, ``w1``, ``w2``.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[str]] = frozenset()
    build_params: ClassVar[tuple[Param, ...]] = ()
    search_params: ClassVar[tuple[Param, ...]] = ()
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()
    extra: ClassVar[str] = "index"
    files: ClassVar[tuple[str, ...]] = ()
    stores_impacts: ClassVar[bool] = False
    always_dense: ClassVar[bool] = False
    max_k: ClassVar[int | None] = None
    native_live: ClassVar[bool] = False

    # -- what the engine is ------------------------------------------------------------

    @classmethod
    def available(cls) -> bool:
        """Whether its optional packages are installed (without importing them)."""
        return all(importlib.util.find_spec(module) is not None for module, _ in cls.requires)

    @classmethod
    def require(cls) -> None:
        """Import its optional packages.

        Raises:
            MissingExtraError: With the install command, if one is missing.
        """
        for module, purpose in cls.requires:
            require_extra(module, cls.extra, purpose)

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """JSON-ready description: summary, capabilities, parameters, availability."""
        return {
            "name": cls.name,
            "summary": cls.summary,
            "capabilities": sorted(cls.capabilities),
            "build_params": [_param_dict(p) for p in cls.build_params],
            "search_params": [_param_dict(p) for p in cls.search_params],
            "max_k": cls.max_k,
            "requires": [module for module, _ in cls.requires],
            "available": cls.available(),
            "install": f"pip install 'mmsparse[{cls.extra}]'" if cls.requires else None,
        }

    @classmethod
    def params_help(cls) -> str:
        """The engine's parameters on one line (for errors and ``--help``)."""
        parts = []
        for stage, params in (("build", cls.build_params), ("search", cls.search_params)):
            listed = ", ".join(p.describe() for p in params) or "none"
            parts.append(f"{stage}: {listed}")
        return f"the {cls.name} engine takes " + "; ".join(parts)

    @classmethod
    def check_params(cls, params: Mapping[str, Any] | None, stage: str) -> dict[str, Any]:
        """Validated parameters of one stage, each converted to its declared type.

        Args:
            params: Given parameters (``None``: none).
            stage: ``build`` (build and search parameters: the latter become the stored
                search defaults) or ``search``.

        Returns:
            The given parameters, checked (defaults are not filled in).

        Raises:
            QueryError: On an unknown key or a bad value, listing the engine's parameters.
        """
        declared = {p.name: p for p in cls.search_params}
        if stage == "build":
            declared.update({p.name: p for p in cls.build_params})
        elif stage != "search":
            raise ValueError(f"unknown parameter stage {stage!r}")
        given = dict(params or {})
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise QueryError(
                f"unknown {cls.name} parameter(s) {unknown} for {stage}; {cls.params_help()}"
            )
        out = {}
        for key, value in given.items():
            try:
                out[key] = declared[key].parse(value)
            except ValueError as exc:
                raise QueryError(
                    f"bad {cls.name} parameter {key}={value!r}: {exc}; {cls.params_help()}"
                ) from None
        return out

    @classmethod
    def split_params(cls, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Checked build parameters as ``(build, search)``, every default filled in.

        A value of ``None`` stands for the default.
        """
        names = {p.name for p in cls.search_params}
        build = {p.name: p.default for p in cls.build_params}
        search = {p.name: p.default for p in cls.search_params}
        for key, value in params.items():
            if value is not None:
                (search if key in names else build)[key] = value
        return build, search

    # -- build -------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        directory: str | Path,
        sparse: sp.spmatrix,
        dense: np.ndarray | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        quantize: str = "none",
        image_ids: list[str] | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Write this engine's files for some images into ``directory``.

        Any subset of a collection can be built into its own directory (engines with
        ``incremental``); rows are numbered ``0..n-1`` within it.

        Args:
            directory: Directory to write into (created).
            sparse: ``(n, V)`` non-negative image sparse vectors (already pruned).
            dense: ``(n, dense_dim)`` image dense vectors, stored by engines with ``dense``
                (needed by ``always_dense`` engines).
            params: Build parameters, and search parameters to store as the defaults.
            quantize: ``none``, ``uint8`` or ``uint16`` (see the module doc).
            image_ids: Image id of every row (engines that store them; default: the row).
            progress: Show progress bars.

        Returns:
            The engine parameters to record in the manifest (what :meth:`open` reads).

        Raises:
            MissingExtraError: If an optional package is missing.
            QueryError: On an unknown or bad parameter.
            MMSparseError: On bad vectors, or if the engine fails.
        """
        checked = cls.check_params(params, "build")
        build, search = cls.split_params(checked)
        if quantize not in QUANTIZE_MODES:
            raise MMSparseError(
                f"unknown quantisation {quantize!r} (one of {', '.join(QUANTIZE_MODES)})"
            )
        docs = sp.csr_matrix(sparse, dtype=np.float32)
        if docs.nnz and (not np.isfinite(docs.data).all() or docs.data.min() < 0):
            raise MMSparseError(f"{cls.name}: document weights must be finite and non-negative")
        n = docs.shape[0]
        if dense is not None:
            if "dense" not in cls.capabilities:
                raise MMSparseError(f"the {cls.name} engine holds sparse vectors only (no dense)")
            dense = np.asarray(dense, dtype=np.float32)
            if dense.ndim != 2 or dense.shape[0] != n or not np.isfinite(dense).all():
                raise MMSparseError(
                    f"{cls.name}: dense vectors of shape {dense.shape} for {n} images "
                    "(one finite row per image expected)"
                )
        elif cls.always_dense:
            raise MMSparseError(f"the {cls.name} engine needs the images' dense vectors")
        if image_ids is not None and len(image_ids) != n:
            raise MMSparseError(f"{len(image_ids)} image ids for {n} images")
        if not cls.stores_impacts and quantize != "none":
            impacts, scale = quantize_docs(docs, quantize)
            docs, quantize = dequantize(impacts, scale), "none"
        cls.require()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        request = BuildRequest(
            sparse=docs,
            dense=dense,
            build=build,
            search=search,
            quantize=quantize,
            image_ids=list(image_ids) if image_ids is not None else [str(i) for i in range(n)],
            progress=progress,
        )
        return cls._build(directory, request)

    @classmethod
    @abstractmethod
    def _build(cls, directory: Path, request: BuildRequest) -> dict[str, Any]:
        """Write the files of a checked request; returns the parameters for the manifest."""

    @classmethod
    def remove_files(cls, directory: str | Path) -> None:
        """Delete the files this engine writes in ``directory`` (before a rebuild)."""
        for name in cls.files:
            path = Path(directory) / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    # -- open --------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str | Path,
        manifest_or_params: IndexManifest | Mapping[str, Any] | None = None,
        *,
        verify: bool = True,
        w1: float | None = None,
        w2: float | None = None,
        n_docs: int | None = None,
        vocab_size: int | None = None,
        dense_dim: int | None = None,
        in_memory: bool = False,
    ) -> Engine:
        """Open the engine's files in ``directory``.

        Args:
            directory: The directory :meth:`build` wrote.
            manifest_or_params: The index's :class:`~mmsparse.index.IndexManifest` (which
                gives the sizes and ``w1``/``w2``), or the parameters :meth:`build`
                returned.
            verify: Check the files' checksums where the engine records them.
            w1: Dense weight of hybrid search (default: the manifest's, else 1).
            w2: Sparse weight of hybrid search (default: the manifest's, else 1).
            n_docs: Rows of the index, for engines whose files do not say (and checked
                against those that do).
            vocab_size: Likewise, the sparse dimension.
            dense_dim: Likewise, the dense dimension.
            in_memory: Read the files into the process's memory instead of memory-mapping
                them (``mmsparse serve``: a file changed in place cannot crash the
                process). The engines of other libraries read theirs into memory anyway.

        Raises:
            IndexFormatError: If the files are missing, corrupt or disagree with the sizes.
            MissingExtraError: If an optional package is missing.
        """
        if isinstance(manifest_or_params, IndexManifest):
            m = manifest_or_params
            if m.engine != cls.name:
                raise IndexFormatError(f"{directory}: a {m.engine} index, not {cls.name}")
            params: Mapping[str, Any] = m.engine_params
            n_docs, vocab_size = m.n_images, m.vocab_size
            dense_dim = m.dense_dim
            w1 = m.w1 if w1 is None else w1
            w2 = m.w2 if w2 is None else w2
        else:
            params = manifest_or_params or {}
        return cls(
            directory,
            params,
            n_docs=n_docs,
            vocab_size=vocab_size,
            dense_dim=dense_dim,
            verify=verify,
            w1=1.0 if w1 is None else w1,
            w2=1.0 if w2 is None else w2,
            in_memory=in_memory,
        )

    def __init__(
        self,
        directory: str | Path,
        params: Mapping[str, Any] | None = None,
        *,
        n_docs: int | None = None,
        vocab_size: int | None = None,
        dense_dim: int | None = None,
        verify: bool = True,
        w1: float = 1.0,
        w2: float = 1.0,
        in_memory: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.params = dict(params or {})
        self.verify = bool(verify)
        self.in_memory = bool(in_memory)
        self.w1, self.w2 = float(w1), float(w2)
        self.n_docs: int = n_docs  # type: ignore[assignment]  # checked below
        self.vocab_size: int = vocab_size  # type: ignore[assignment]
        self.dense_dim = dense_dim
        self.has_dense = self.always_dense
        self.require()
        self._load()
        for what in ("n_docs", "vocab_size"):
            if getattr(self, what) is None:
                raise MMSparseError(f"opening a {self.name} index needs {what} (give the manifest)")

    def _found(self, **sizes: int) -> None:
        """Record sizes read from the engine's files, checked against the given ones."""
        for what, found in sizes.items():
            expected = getattr(self, what)
            if expected is not None and int(expected) != int(found):
                raise IndexFormatError(
                    f"{self.directory}: the {self.name} files and the manifest disagree on "
                    f"{what} ({found} vs {expected}); rebuild the index"
                )
            setattr(self, what, int(found))

    @abstractmethod
    def _load(self) -> None:
        """Open the files (``self.directory``, ``self.params``).

        Calls :meth:`_found` with the sizes the files record, and sets ``has_dense`` where
        it depends on the index.
        """

    # -- search ------------------------------------------------------------------------

    @property
    def modes(self) -> tuple[str, ...]:
        """The search modes this index serves."""
        if not self.has_dense:
            return ("sparse",)
        return (
            ("sparse", "dense", "hybrid") if "hybrid" in self.capabilities else ("sparse", "dense")
        )

    def check_mode(self, mode: str) -> str:
        """``mode`` if it is known and this index serves it.

        Raises:
            QueryError: Naming the way to an index that serves it.
        """
        if mode not in SEARCH_MODES:
            raise QueryError(f"unknown search mode {mode!r} (sparse, dense or hybrid)")
        if mode not in self.modes:
            if not self.has_dense:
                raise QueryError(
                    f"the {self.name} index holds sparse vectors only; --mode {mode} needs "
                    f"dense vectors: build the index with {dense_hint()}"
                )
            raise QueryError(f"the {self.name} engine does not serve --mode {mode}")
        return mode

    def check_query(
        self,
        sparse: sp.spmatrix | np.ndarray,
        k: int,
        *,
        dense: np.ndarray | None = None,
        mode: str = "sparse",
        threads: int | None = None,
        live: np.ndarray | None = None,
        params: Mapping[str, Any] | None = None,
        weights: tuple[float, float] | None = None,
    ) -> Query:
        """Every check of a search request, in one place (see :meth:`search_batch`).

        Returns:
            The checked :class:`Query`, search parameters filled in from the index's
            stored defaults.

        Raises:
            QueryError: On a bad mode, ``k``, weights, ``threads``, ``live`` or parameter.
            IndexFormatError: If the query vectors are of another vocabulary or dimension.
        """
        mode = self.check_mode(mode)
        k = check_k(k, self.max_k, self.name)
        q = check_queries(sparse, self.vocab_size, f"the {self.name} index {self.directory}")
        if mode == "sparse":
            dense = None
        elif dense is None:
            raise QueryError(f"--mode {mode} needs the queries' dense vectors")
        else:
            dense = np.asarray(dense, dtype=np.float32)
            if dense.ndim == 1:
                dense = dense.reshape(1, -1)
            if dense.ndim != 2 or dense.shape[0] != q.shape[0]:
                raise QueryError(f"{dense.shape} dense query vectors for {q.shape[0]} sparse ones")
            if self.dense_dim is not None and dense.shape[1] != self.dense_dim:
                raise IndexFormatError(
                    f"query dense vectors have {dense.shape[1]} dimensions, the index "
                    f"{self.directory} {self.dense_dim}"
                )
            if not np.isfinite(dense).all():
                raise QueryError("dense query vectors must be finite")
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1
        ):
            raise QueryError(f"threads must be at least 1, got {threads!r}")
        if weights is not None:
            weights = check_weights(weights)
            if mode != "hybrid":
                weights = None  # only a hybrid score has weights
        given = self.check_params(params, "search")
        stored = self.stored_search_params()
        knobs = {
            p.name: given.get(p.name) if given.get(p.name) is not None else stored.get(p.name)
            for p in self.search_params
        }
        return Query(
            sparse=q,
            k=k,
            mode=mode,
            dense=dense,
            threads=None if threads is None else int(threads),
            live=check_live(live, self.n_docs),
            params=knobs,
            weights=weights,
        )

    def hybrid_weights(self, query: Query | None = None) -> tuple[float, float]:
        """``(w1, w2)`` of a hybrid search: the query's, else the index's."""
        if query is not None and query.weights is not None:
            return query.weights
        return self.w1, self.w2

    def stored_search_params(self) -> dict[str, Any]:
        """The index's search defaults.

        The declared ones, overridden by those stored at build time (``params["search"]``).
        """
        stored = self.params.get("search") or {}
        return {p.name: stored.get(p.name, p.default) for p in self.search_params}

    def search_batch(
        self,
        sparse: sp.spmatrix | np.ndarray,
        k: int,
        *,
        dense: np.ndarray | None = None,
        mode: str = "sparse",
        threads: int | None = None,
        live: np.ndarray | None = None,
        weights: tuple[float, float] | None = None,
        **params: Any,
    ) -> SearchHits:
        """Top-``k`` images of every query.

        Args:
            sparse: ``(B, V)`` query sparse vectors (CSR, or a dense array).
            k: Results per query (``>= 1``; at most ``max_k``).
            dense: ``(B, dense_dim)`` query dense vectors (``dense``/``hybrid`` modes).
            mode: ``sparse``, ``dense`` or ``hybrid`` (see :attr:`modes`).
            threads: Threads to search with (engines with ``threads``).
            live: ``(n_docs,)`` bool: only rows where it is true are returned (deleted
                rows of a live index, or a filter); ``None`` returns any row.
            weights: ``(w1, w2)`` of a ``hybrid`` search, replacing the index's (finite,
                non-negative, not both 0); ignored in the other modes.
            **params: Search parameters (see :attr:`search_params`; ``None`` or absent:
                the index's default).

        Returns:
            :class:`~mmsparse.index.hits.SearchHits` of shape ``(B, k)`` (ties: lower row
            first, where the engine ranks exactly).

        Raises:
            QueryError: On a bad request (see :meth:`check_query`).
            IndexFormatError: If the query vectors are of another vocabulary or dimension.
            MMSparseError: If the engine fails.
        """
        query = self.check_query(
            sparse,
            k,
            dense=dense,
            mode=mode,
            threads=threads,
            live=live,
            params=params,
            weights=weights,
        )
        return self.search(query)

    def search(self, query: Query) -> SearchHits:
        """Run a request checked by :meth:`check_query`.

        What :meth:`search_batch` does after the checks; for callers that keep the checked
        query (e.g. to explain it).
        """
        if query.live is None or self.native_live:
            return self._search(query)
        # Ask for enough rows that k live ones remain (within max_k), then drop the others.
        live, k = query.live, query.k
        want = k + int(self.n_docs - live.sum())
        asked = replace(query, k=min(want, self.max_k) if self.max_k is not None else want)
        asked.live = None
        return self._search(asked).only(live, k)

    @abstractmethod
    def _search(self, query: Query) -> SearchHits:
        """Top-``query.k`` of a checked query (``query.live`` only with ``native_live``)."""

    # -- stored vectors ----------------------------------------------------------------

    def doc_weights(self, rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
        """Stored weights of ``rows`` at ``terms`` (engines with ``explain``).

        Returns:
            ``(len(rows), len(terms))`` float32, 0 where a term is absent.

        Raises:
            QueryError: If the engine does not return stored weights.
        """
        raise QueryError(f"the {self.name} engine does not return stored weights (no explain)")

    def doc_vector(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored sparse vector of one row: ``(term ids int64 increasing, weights)``.

        The base version reads :meth:`doc_weights` over the whole vocabulary.
        """
        every = np.arange(self.vocab_size, dtype=np.int64)
        weights = np.asarray(self.doc_weights(np.array([row], dtype=np.int64), every))[0]
        terms = np.flatnonzero(weights).astype(np.int64)
        return terms, weights[terms].astype(np.float32)

    def doc_dense(self, row: int) -> np.ndarray | None:
        """``(1, dense_dim)`` stored dense vector of one row, or ``None`` without dense."""
        return None

    def stored_vectors(self) -> tuple[sp.csr_matrix, np.ndarray | None]:
        """Every row's stored vectors, as searched: what a merge of segments rebuilds from.

        The base version reads :meth:`doc_vector` and :meth:`doc_dense` row by row.

        Returns:
            ``(n_docs, V)`` float32 CSR of the (dequantised) sparse weights, and the
            ``(n_docs, dense_dim)`` float32 dense vectors or ``None`` without dense.
        """
        indptr, indices, data = [0], [], []
        for row in range(self.n_docs):
            terms, weights = self.doc_vector(row)
            indices.append(np.asarray(terms, dtype=np.int64))
            data.append(np.asarray(weights, dtype=np.float32))
            indptr.append(indptr[-1] + len(terms))
        csr = sp.csr_matrix(
            (
                np.concatenate(data) if data else np.zeros(0, np.float32),
                np.concatenate(indices) if indices else np.zeros(0, np.int64),
                np.asarray(indptr, dtype=np.int64),
            ),
            shape=(self.n_docs, self.vocab_size),
        )
        dense = None
        if self.has_dense:
            dense = np.concatenate([self.doc_dense(r) for r in range(self.n_docs)]).astype(
                np.float32
            )
        return csr, dense

    @classmethod
    def params_of(cls, engine_params: Mapping[str, Any]) -> dict[str, Any]:
        """The build and search parameters recorded in a manifest's ``engine_params``.

        What :meth:`build` was given (or defaulted to), so that another segment of the
        same index can be built alike: the declared parameters found at the top level of
        what :meth:`_build` returned, or under its ``build`` and ``search`` keys.
        """
        declared = {p.name for p in (*cls.build_params, *cls.search_params)}
        out = {k: v for k, v in engine_params.items() if k in declared}
        for part in ("build", "search"):
            given = engine_params.get(part)
            if isinstance(given, Mapping):
                out.update({k: v for k, v in given.items() if k in declared})
        return out

    def term_rows(self, term: int) -> np.ndarray:
        """Rows whose stored sparse vector holds ``term`` (int64, increasing).

        What a filter on a term is made of (``mmsparse serve``: a required term). The base
        version reads :meth:`doc_weights` over every row, in blocks; engines with postings
        read the term's posting list.

        Raises:
            QueryError: If the engine does not return stored weights.
        """
        out = []
        block = 65536
        col = np.array([int(term)], dtype=np.int64)
        for start in range(0, self.n_docs, block):
            rows = np.arange(start, min(start + block, self.n_docs), dtype=np.int64)
            w = np.asarray(self.doc_weights(rows, col))[:, 0]
            out.append(rows[w != 0])
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes on disk of the engine's files."""
        total = 0
        for name in self.files:
            path = self.directory / name
            if path.is_file():
                total += path.stat().st_size
            elif path.is_dir():
                total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return total

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what the engine holds open (nothing by default)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _param_dict(p: Param) -> dict[str, Any]:
    return {
        "name": p.name,
        "type": p.type.__name__,
        "default": p.default,
        "rule": p.rule(),
        "help": p.help,
    }


# -- registry -----------------------------------------------------------------------------

_REGISTRY: dict[str, type[Engine]] = {}
_SCANNED: set[str] = set()


def register_engine(cls: type[Engine]) -> type[Engine]:
    """Class decorator: add an :class:`Engine` subclass to the registry under its ``name``.

    Raises:
        TypeError: If the class is not a complete engine, or its declarations are invalid.
    """
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise TypeError(f"{cls!r} is not an Engine subclass")
    if not _NAME.match(cls.name or ""):
        raise TypeError(f"{cls.__name__}.name must match {_NAME.pattern}, got {cls.name!r}")
    if getattr(cls, "__abstractmethods__", None):
        raise TypeError(f"{cls.__name__} does not implement {sorted(cls.__abstractmethods__)}")
    unknown = set(cls.capabilities) - set(CAPABILITIES)
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown capabilities {sorted(unknown)}")
    names = [p.name for p in (*cls.build_params, *cls.search_params)]
    if len(names) != len(set(names)):
        raise TypeError(f"{cls.__name__}: a parameter is declared twice ({names})")
    held = _REGISTRY.get(cls.name)
    if held is not None and (held.__module__, held.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise TypeError(f"engine name {cls.name!r} taken by {held.__module__}.{held.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def discover(refresh: bool = False) -> None:
    """Import every engine module of the package (once; ``refresh`` looks again).

    A module whose name starts with ``_`` is not an engine. Engine modules import their
    optional packages only when used, so this is cheap.
    """
    package = sys.modules[__package__]
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or (info.name in _SCANNED and not refresh):
            continue
        importlib.import_module(f"{__package__}.{info.name}")
        _SCANNED.add(info.name)


def engine_names() -> tuple[str, ...]:
    """Names of every engine: the default (``inverted``) first, then alphabetical."""
    discover()
    return tuple(sorted(_REGISTRY, key=lambda n: (n != DEFAULT_ENGINE, n)))


def all_engines() -> list[type[Engine]]:
    """Every engine class, in :func:`engine_names` order."""
    return [_REGISTRY[n] for n in engine_names()]


def get_engine(name: str) -> type[Engine]:
    """The engine class registered under ``name``.

    Raises:
        MMSparseError: On an unknown name, listing the known ones.
    """
    discover()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise MMSparseError(
            f"unknown engine {name!r} (one of {', '.join(engine_names())})"
        ) from None


def dense_hint() -> str:
    """How to build an index with dense vectors, from the engines' declarations.

    For example ``--engine milvus, or --engine inverted --dense``.
    """
    engines = all_engines()
    always = [f"--engine {e.name}" for e in engines if e.always_dense]
    optional = [
        f"--engine {e.name} --dense"
        for e in engines
        if "dense" in e.capabilities and not e.always_dense
    ]
    return ", or ".join(always + optional) or "an engine that holds dense vectors"


def open_engine(
    directory: str | Path, manifest: IndexManifest, verify: bool = True, in_memory: bool = False
) -> Engine:
    """Open the engine of an index directory described by ``manifest``.

    Args:
        directory: The index (or segment) directory.
        manifest: Its manifest.
        verify: Check the files' checksums.
        in_memory: Read the files into memory instead of memory-mapping them (see
            :meth:`Engine.open`).

    Raises:
        IndexFormatError: If the manifest names no known engine, or the files are bad.
    """
    try:
        cls = get_engine(manifest.engine)
    except MMSparseError as exc:
        raise IndexFormatError(f"{directory}: {exc}") from None
    return cls.open(directory, manifest, verify=verify, in_memory=in_memory)
