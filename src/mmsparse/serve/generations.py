"""The generation of the index that ``mmsparse serve`` serves, and its switch to a new one.

The service serves one generation of the index at a time (:mod:`mmsparse.index.generations`).
A watcher thread looks at the index every ``reload_interval`` seconds (its ``CURRENT``
pointer, and the identity of every file the served generation was read from); when they
change it opens the new generation in the background (segments it already holds are shared,
not read again) and then swaps one reference. A request takes the generation that is
current when it starts and keeps it to its end (its search, explanations, image ids and
files: a context variable that the engine thread inherits), so no request sees a mix and
none fails because of a switch; the old generation is released when its last request ends.
A generation that fails to open (a file missing, corrupt, or being rewritten in place) is
logged in one line and the old one is kept; it is tried again when the files change again.
The index files are read into memory, not memory-mapped, so nothing done to them on disk can
crash the server (a memory-mapped file truncated in place raised SIGBUS at the next search,
with no log line).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmsparse.errors import MMSparseError
from mmsparse.index.generations import CURRENT_NAME
from mmsparse.index.manifest import MANIFEST_NAME
from mmsparse.index.search import Searcher
from mmsparse.index.segments import file_stamp, open_view
from mmsparse.serve.params import one_line
from mmsparse.serve.served import REQUEST, Served

log = logging.getLogger(__name__)


class Generations:
    """The generation served now, the one each request holds, and the watcher.

    Args:
        index_dir: Directory written by ``mmsparse index build``.
        reload_interval: Seconds between two looks at the index for a new generation; 0
            never looks (the generation opened at start is served until the end).
        **searcher_args: ``run_dir``, ``data``, ``bundle``, ``text_encoder`` of the first
            :class:`~mmsparse.index.Searcher` (later generations share its run and text
            encoder).

    Attributes:
        base: The first generation's searcher: it encodes every text query.
        reloads: New generations served since the start.
        reload_errors: Generations that could not be opened.
        last_reload_error: Why the last one could not (one line), else ``None``.

    Raises:
        IndexFormatError: If the index is missing, corrupt or no longer matches its run.
        MMSparseError: On a negative ``reload_interval``.
    """

    def __init__(self, index_dir: str | Path, *, reload_interval: float, **searcher_args: Any):
        if not (isinstance(reload_interval, int | float) and reload_interval >= 0):
            raise MMSparseError(f"reload_interval must be >= 0 seconds, got {reload_interval!r}")
        self.index_dir = Path(index_dir)
        self.reload_interval = float(reload_interval)
        pointer = self._pointer()  # before opening: a switch meanwhile is seen next time
        self.base = Searcher(index_dir, in_memory=True, **searcher_args)
        self._served = Served(self.base)
        self._lock = threading.Lock()
        self._token = (pointer, *self._look(recorded=True)[1:])
        self._failed_token: Any = None
        self._changed_token: Any = None
        self.reloads = 0
        self.reload_errors = 0
        self.last_reload_error: str | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def served(self) -> Served:
        """The generation served now (new requests take it)."""
        return self._served

    def current(self) -> Served:
        """The request's generation, or the one served now outside a request."""
        return REQUEST.get() or self._served

    @contextlib.contextmanager
    def hold(self) -> Iterator[Served]:
        """Hold the generation served now for the block (a request; see the module doc).

        Nested holds (a search by upload runs a search) get the same generation.
        """
        held = REQUEST.get()
        if held is not None:
            yield held
            return
        with self._lock:
            served = self._served
            served.acquire()
        token = REQUEST.set(served)
        try:
            yield served
        finally:
            REQUEST.reset(token)
            served.release()

    def start(self) -> None:
        """Start the watcher thread (nothing when ``reload_interval`` is 0)."""
        if self.reload_interval > 0 and self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch, name="mmsparse-generations", daemon=True
            )
            self._watcher.start()

    def stop(self) -> None:
        """Stop the watcher thread (no new generation is opened after)."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)

    def close(self) -> None:
        """Release the generation served now once its last request ends (call last)."""
        with self._lock:
            served = self._served
        served.retire()

    def stats(self) -> dict[str, Any]:
        """``generation``, ``images``, ``reloads``, ``reload_errors``, ``last_reload_error``."""
        return {
            "generation": self._served.number,
            "images": self._served.manifest.n_images,
            "reloads": self.reloads,
            "reload_errors": self.reload_errors,
            "last_reload_error": self.last_reload_error,
        }

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
                self.check()
            except Exception as exc:  # the watcher must outlive anything
                log.error("%s: generation watcher: %s", self.index_dir, one_line(str(exc)))

    def check(self) -> bool:
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
                searcher = self.base.with_view(view)
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
        with self._lock:
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
