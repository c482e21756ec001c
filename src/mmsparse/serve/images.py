"""The image files ``mmsparse serve`` shows: the folder, its check at start, URLs and paths.

Only the file names of live images of the request's generation are served, from the
index's images folder or from the folder an image was added from
(:attr:`~mmsparse.serve.served.Served.image_roots`); a resolved path must lie inside its
folder, so ``../`` (in any encoding), absolute paths and links out of the folder are refused.
"""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.errors import MMSparseError
from mmsparse.index.search import Searcher
from mmsparse.serve.params import BadRequest
from mmsparse.serve.served import Served

log = logging.getLogger(__name__)


class ImageFolder:
    """The folder of the indexed image files, checked once at start.

    Args:
        images_dir: The folder given (default: the folder of an index of photos, else
            ``images/`` in the index's data directory, when present).
        searcher: The first generation's searcher (its manifest, data and file names).

    Attributes:
        path: The resolved folder, or ``None`` when there is none.
        check: How many indexed files are missing from it (:meth:`check_files`).

    Raises:
        MMSparseError: If ``images_dir`` is given and is not a folder.
    """

    def __init__(self, images_dir: str | Path | None, searcher: Searcher) -> None:
        self.path = self._find(images_dir, searcher)
        self.check = self.check_files(searcher.filenames)

    @staticmethod
    def _find(images_dir: str | Path | None, searcher: Searcher) -> Path | None:
        if images_dir is not None:
            path = Path(images_dir)
            if not path.is_dir():
                raise MMSparseError(f"{path}: images folder not found")
            return path.resolve()
        if searcher.manifest.images_dir:  # an index of a folder of photos
            folder = Path(searcher.manifest.images_dir)
            if folder.is_dir():
                return folder.resolve()
            log.warning("%s: the index's image folder is not there (start with --images)", folder)
            return None
        data = searcher.data_dir
        if data and (Path(data) / "images").is_dir():
            return (Path(data) / "images").resolve()
        return None

    def check_files(self, names: list[str], sample: int = 2000) -> dict[str, Any] | None:
        """How many indexed image files are missing from the images folder.

        Checks every file of an index up to ``sample`` images, else a seeded sample of
        ``sample``; a warning is logged when any is missing.

        Returns:
            ``{"checked", "missing", "examples", "all_missing"}``, or ``None`` without a
            folder.
        """
        if self.path is None:
            return None
        rows = np.arange(len(names))
        if rows.size > sample:
            rows = np.sort(np.random.default_rng(0).choice(rows, sample, replace=False))
        missing = [names[r] for r in rows.tolist() if not (self.path / names[r]).is_file()]
        check = {
            "checked": int(rows.size),
            "missing": len(missing),
            "examples": missing[:3],
            "all_missing": bool(rows.size) and len(missing) == rows.size,
        }
        if missing:
            log.warning(
                "%d of %d indexed image files checked are missing from %s (e.g. %s); the "
                "page shows their names instead (give the right folder with --images)",
                len(missing),
                rows.size,
                self.path,
                ", ".join(missing[:3]),
            )
        return check

    def url(self, served: Served, filename: str) -> str | None:
        """The ``/images/`` URL of an indexed file, or ``None`` where none can be shown."""
        if not filename:
            return None
        if served.root_of(filename) is None:
            if not self.path:
                return None
            if self.check and self.check["all_missing"]:
                return None  # no grey tiles: the page shows the names and the warning
        return "/images/" + urllib.parse.quote(filename)

    def file(self, served: Served, name: str) -> Path:
        """The file of an indexed image name of ``served``, inside its images folder.

        Raises:
            BadRequest: 404 for a name that is not a live image's, or a path out of its
                folder (see the module docstring).
        """
        shown = name[:80]
        added = served.root_of(name)
        if self.path is None and added is None:
            raise BadRequest("this index's data has no images folder (start with --images)", 404)
        if name not in served.image_files or "\x00" in name:
            raise BadRequest(f"no indexed image file named {shown!r}", 404)
        folder, rel = added if added is not None else (self.path, name)
        folder = folder.resolve()
        path = (folder / rel).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            raise BadRequest(f"no indexed image file named {shown!r}", 404)
        return path

    def browse(self, served: Served, offset: int, k: int) -> dict[str, Any]:
        """``/api/images`` of ``served``: ``k`` live images from ``offset``, in index order."""
        live = served.live_rows  # deleted images are not listed
        rows = live[offset : offset + k].tolist()
        ids, names = served.searcher.image_ids, served.searcher.filenames
        return {
            "total": int(live.size),
            "offset": offset,
            "generation": served.number,
            "images": [
                {"image_id": ids[r], "filename": names[r], "url": self.url(served, names[r])}
                for r in rows
            ],
        }
