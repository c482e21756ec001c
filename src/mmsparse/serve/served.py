"""One generation of the index as ``mmsparse serve`` serves it, and the one a request holds."""

from __future__ import annotations

import contextvars
import threading
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.index.search import Searcher


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
REQUEST: contextvars.ContextVar[Served | None] = contextvars.ContextVar(
    "mmsparse_served", default=None
)
