"""The search service behind ``mmsparse serve``: one opened index, shared by every request.

:class:`SearchService` is what a web server needs and nothing web-specific; the FastAPI
application (:mod:`mmsparse.serve.app`) is a thin layer over it, and it is itself a façade
over one module per responsibility:

- :mod:`~mmsparse.serve.generations`: the generation of the index served, the one each
  request holds, and the watcher that opens a new one in the background and swaps it in;
- :mod:`~mmsparse.serve.served`: one generation and what is computed on it (stored vectors,
  filters, totals, the ranked search);
- :mod:`~mmsparse.serve.searching`: a search request from its parameters to its answer
  (:mod:`~mmsparse.serve.params` checks them, :mod:`~mmsparse.serve.queries` edits the
  query, :mod:`~mmsparse.serve.results` writes the JSON);
- :mod:`~mmsparse.serve.uploads`: uploaded query images (limits, decoding, the backbone, the
  cache of recent uploads);
- :mod:`~mmsparse.serve.images`: the image files (folder, URLs, safe paths);
- :mod:`~mmsparse.serve.limits`: the caps and the bound on searches in flight (503);
- :mod:`~mmsparse.serve.workers`: the text encoder (``batch`` or ``threads``) and the engine
  thread, off the event loop;
- :mod:`~mmsparse.serve.readiness`: the warm-up, then ``/readyz``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.errors import MMSparseError
from mmsparse.index.search import MAX_QUERY_PIECES, Searcher
from mmsparse.serve import results
from mmsparse.serve.generations import Generations
from mmsparse.serve.images import ImageFolder
from mmsparse.serve.limits import ServeLimits
from mmsparse.serve.params import positive_int
from mmsparse.serve.readiness import WarmUp
from mmsparse.serve.searching import SearchParams, SearchRunner
from mmsparse.serve.served import Served
from mmsparse.serve.uploads import ImageQueries
from mmsparse.serve.workers import ENCODER_MODES


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
        reload_interval: Seconds between two looks at the index for a new generation
            (:mod:`mmsparse.serve.generations`); 0 never looks (the generation opened at
            start is served until the end).

    Raises:
        IndexFormatError: If the index is missing, corrupt or no longer matches its run
            (the error ``mmsparse search`` gives).
        MMSparseError: On an unknown encoder mode or a run that cannot be loaded.

    Attributes:
        generations: The generation served and the watcher
            (:class:`~mmsparse.serve.generations.Generations`).
        folder: The image files (:class:`~mmsparse.serve.images.ImageFolder`).
        uploads: Uploaded query images (:class:`~mmsparse.serve.uploads.ImageQueries`).
        runner: The searches (:class:`~mmsparse.serve.searching.SearchRunner`): admission,
            text encoder, engine thread.
        warm: The warm-up and readiness (:class:`~mmsparse.serve.readiness.WarmUp`).
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
        self.limits = limits or ServeLimits()
        self.encoder_mode = encoder
        self.index_dir = Path(index_dir)
        self.show_paths = bool(show_paths)
        # An injected text encoder replaces the run's (which the Searcher loads on first use).
        # The first searcher encodes every query; later generations share its run.
        self.generations = Generations(
            index_dir,
            reload_interval=reload_interval,
            run_dir=run_dir,
            data=data,
            bundle=bundle,
            text_encoder=text_encoder,
        )
        base = self.generations.base
        self.folder = ImageFolder(images_dir, base)
        opts = base.manifest.options
        self.uploads = ImageQueries(
            base.run,
            topk=opts.image_topk,
            threshold=opts.threshold,
            limits=self.limits,
            image_encoder=image_encoder,
        )
        self.started = time.time()
        self.runner = SearchRunner(
            base.encode_text, encoder, limits=self.limits, uploads=self.uploads, folder=self.folder
        )
        if warm_up:
            self.runner.check_text()
        steps = [lambda: self.runner.warm_up(self.generations.served), self.uploads.warm_up]
        self.warm = WarmUp(steps + ([warm_up_hook] if warm_up_hook is not None else []))
        self.generations.start()

    # -- the generation of the request (outside a request: the one served now) -------------

    @property
    def searcher(self) -> Searcher:
        """The searcher of the request's generation (outside a request: the current one)."""
        return self.generations.current().searcher

    @property
    def manifest(self) -> Any:
        """The manifest of the request's generation (``n_images``: its live images)."""
        return self.generations.current().manifest

    @property
    def row_of(self) -> dict[str, int]:
        """Global row of every live image id of the request's generation."""
        return self.generations.current().row_of

    @property
    def modes(self) -> list[str]:
        """Search modes this index supports (dense and hybrid where it holds dense vectors)."""
        return list(self.searcher.modes)

    @property
    def generation(self) -> int:
        """The generation served now."""
        return self.generations.served.number

    def check_generation(self) -> bool:
        """Serve the index's new generation if its files changed (the watcher's step).

        Returns:
            Whether a new generation is now served (see
            :meth:`~mmsparse.serve.generations.Generations.check`).
        """
        return self.generations.check()

    def doc_vector(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The indexed sparse vector of an image row: ``(term ids, weights)``, as searched.

        Call from the engine thread (or with no search running).
        """
        return self.generations.current().doc_vector(row)

    # -- state ------------------------------------------------------------------------------

    @property
    def images_dir(self) -> Path | None:
        """The folder of the image files, or ``None``."""
        return self.folder.path

    @property
    def image_check(self) -> dict[str, Any] | None:
        """How many indexed image files were missing from the folder at start."""
        return self.folder.check

    @property
    def text_error(self) -> str | None:
        """Why text queries cannot be encoded (``None``: they can)."""
        return self.runner.text_error

    @property
    def ready(self) -> Any:
        """A ``threading.Event`` set once the warm-up has run."""
        return self.warm.ready

    @property
    def pending(self) -> int:
        """Searches in flight now."""
        return self.runner.admission.pending

    def start_warm_up(self) -> None:
        """Run one search per mode (and load the image encoder) in a thread, then be ready.

        The first search of a process compiles the engine's kernels (numba: 2-3 s); until
        the warm-up has run, ``/readyz`` answers 503 and the page says "warming up".
        Calling it again does nothing.
        """
        self.warm.start()

    def readiness(self) -> dict[str, Any]:
        """Answer ``/readyz``: ``ready`` once the warm-up searches have run."""
        return self.warm.readiness()

    def close(self) -> None:
        """Stop the worker threads and release the index."""
        self.generations.stop()
        self.runner.close()
        self.uploads.close()
        self.generations.close()

    # -- requests ---------------------------------------------------------------------------

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
        params = {
            "k": k,
            "offset": offset,
            "mode": mode,
            "explain": explain,
            "force": force,
            "terms": terms,
            "w1": w1,
            "w2": w2,
            "include_self": include_self,
        }
        with self.generations.hold() as served:
            checked = SearchParams.parse(served.searcher, self.limits, **params)
            out = await self.runner.search(
                served, checked, q=q, like=like, image=image, upload=upload
            )
            out["generation"] = served.number
            return out

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
        upload = await self.uploads.upload(data, self.runner.admission)
        params = {key: v for key, v in params.items() if key not in ("q", "like", "image")}
        return await self.search(image=upload["id"], upload=upload, **params)

    def upload_thumbnail(self, upload_id: str) -> bytes:
        """The small JPEG of an uploaded query image.

        Raises:
            BadRequest: 404 when the server no longer holds it.
        """
        return self.uploads.thumbnail(upload_id)

    def browse(self, offset: str | int | None = None, k: str | int | None = None) -> dict[str, Any]:
        """Answer ``/api/images``: indexed images in index order (a start page to browse).

        Raises:
            BadRequest: On a bad ``offset`` or ``k``.
        """
        k_ = positive_int("k", k, 20, self.limits.max_k)
        with self.generations.hold() as served:
            n = int(served.live_rows.size)
            offset_ = positive_int("offset", offset, 0, max(n - 1, 0), minimum=0)
            return self.folder.browse(served, offset_, k_)

    async def image_terms(self, image_id: str, k: str | int | None = None) -> dict[str, Any]:
        """Answer ``/api/images/{id}/terms``: the image's heaviest indexed terms.

        Raises:
            BadRequest: On an unknown image id (404) or a bad ``k``.
        """
        k_ = positive_int("k", k, 20, self.limits.max_terms_k)
        with self.generations.hold() as served:
            row = served.image_row(image_id)
            terms, weights = await self.runner.engine.run(served.doc_vector, row)
            url = self.folder.url(served, served.searcher.filenames[row])
            return results.image_terms_json(served, row, terms, weights, k_, url)

    def image_path(self, name: str) -> Path:
        """The file of an indexed image name inside its images folder.

        Only names of live images of the served generation are served, and the resolved
        path must lie inside the folder (the index's images folder, or the folder an
        image was added from), so ``../`` (in any encoding), absolute paths and links out
        of the folder are refused.

        Raises:
            BadRequest: 404 for anything else.
        """
        with self.generations.hold() as served:
            return self.folder.file(served, name)

    def info(self, paths: bool | None = None) -> dict[str, Any]:
        """Answer ``/api/info``: the run, engine, vocabulary, images, options and limits.

        Args:
            paths: Also give the server's absolute paths (``run_dir``, ``index_dir``,
                ``images_dir``); default: the service's ``show_paths``. Otherwise the run
                and the images folder are named by their last path component only.
        """
        with self.generations.hold() as served:
            out = self._info(served, paths)
            gen = served.searcher.view.generation
            out.update(
                generation=served.number,
                segments=len(gen.segments),
                deleted_rows=gen.n_deleted,
                generation_created=gen.created,
            )
            return out

    def _info(self, served: Served, paths: bool | None) -> dict[str, Any]:
        m = served.manifest
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
            "modes": list(served.searcher.modes),
            "query_encoder": "lookup" if served.searcher.inference_free else "head",
            "text_search": self.runner.text_error is None,
            "text_search_error": self.runner.text_error,
            "image_search": self.uploads.available,
            "image_search_error": self.uploads.error,
            "image_files": self.images_dir is not None,
            "image_files_check": self.image_check,
            "ready": self.warm.ready.is_set(),
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
            "notes": list(served.searcher.notes),
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
        admission = self.runner.admission
        return {
            "status": "ok",
            "ready": self.warm.ready.is_set(),
            "in_flight": admission.pending,
            "served": admission.served,
            "refused": admission.refused,
            "uptime_s": round(time.time() - self.started, 3),
            "encoder": self.runner.encoder.stats(),
            **self.generations.stats(),
        }
