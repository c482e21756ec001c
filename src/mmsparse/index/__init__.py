"""Serving sparse retrieval: index builds, engines, search, exports.

The engines (``inverted``, ``seismic``, ``milvus``, ``bmp``, ``kannolo``) sit behind one
contract in :mod:`mmsparse.index.engines` (``get_engine``, ``engine_names``). The retrieval
benchmark lives in :mod:`mmsparse.bench.retrieval`.

Optional engines (numba, pyseismic-lsr, pymilvus + milvus-lite, bmp, kannolo, faiss-cpu)
are imported lazily, on first use, with an install hint (``pip install 'mmsparse[index]'``).
The names below are imported on first access too, so that ``mmsparse.index.engines`` (the
command line's engine list) does not load the model code.

A live index (``mmsparse index add``, ``remove``, ``optimize``) is a sequence of
generations of immutable segments (:mod:`mmsparse.index.generations`,
:mod:`mmsparse.index.segments`, :mod:`mmsparse.index.live`).

``mmsparse.index.search`` is the search module (``mmsparse.index.search.Searcher``);
:func:`search_index` searches an index once. Calling the module,
``mmsparse.index.search(...)``, still works with a deprecation warning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmsparse.index import search
    from mmsparse.index.build import build_index, index_vectors
    from mmsparse.index.engines import Engine, engine_names, get_engine
    from mmsparse.index.export import export_run
    from mmsparse.index.folder import FolderIndexReport, add_images, build_folder_index
    from mmsparse.index.hits import SearchHits
    from mmsparse.index.inverted import InvertedIndex, write_postings
    from mmsparse.index.live import (
        LiveReport,
        add_vectors,
        live_info,
        optimize_index,
        remove_images,
    )
    from mmsparse.index.manifest import IndexManifest, IndexOptions
    from mmsparse.index.quantize import dequantize, quantize
    from mmsparse.index.search import Hit, Searcher, SearchResult, search_index
    from mmsparse.index.segments import IndexView, open_view

_EXPORTS = {
    "Engine": "mmsparse.index.engines",
    "FolderIndexReport": "mmsparse.index.folder",
    "Hit": "mmsparse.index.search",
    "IndexManifest": "mmsparse.index.manifest",
    "IndexOptions": "mmsparse.index.manifest",
    "IndexView": "mmsparse.index.segments",
    "InvertedIndex": "mmsparse.index.inverted",
    "LiveReport": "mmsparse.index.live",
    "SearchHits": "mmsparse.index.hits",
    "SearchResult": "mmsparse.index.search",
    "Searcher": "mmsparse.index.search",
    "add_images": "mmsparse.index.folder",
    "add_vectors": "mmsparse.index.live",
    "build_folder_index": "mmsparse.index.folder",
    "build_index": "mmsparse.index.build",
    "dequantize": "mmsparse.index.quantize",
    "engine_names": "mmsparse.index.engines",
    "export_run": "mmsparse.index.export",
    "get_engine": "mmsparse.index.engines",
    "index_vectors": "mmsparse.index.build",
    "live_info": "mmsparse.index.live",
    "open_view": "mmsparse.index.segments",
    "optimize_index": "mmsparse.index.live",
    "quantize": "mmsparse.index.quantize",
    "remove_images": "mmsparse.index.live",
    "search_index": "mmsparse.index.search",
    "write_postings": "mmsparse.index.inverted",
}

__all__ = [
    "Engine",
    "FolderIndexReport",
    "Hit",
    "IndexManifest",
    "IndexOptions",
    "IndexView",
    "InvertedIndex",
    "LiveReport",
    "SearchHits",
    "SearchResult",
    "Searcher",
    "add_images",
    "add_vectors",
    "build_folder_index",
    "build_index",
    "dequantize",
    "engine_names",
    "export_run",
    "get_engine",
    "index_vectors",
    "live_info",
    "open_view",
    "optimize_index",
    "quantize",
    "remove_images",
    "search",
    "search_index",
    "write_postings",
]


def __getattr__(name: str) -> Any:
    if name == "search":  # the module (callable, deprecated, like the function it was)
        return importlib.import_module("mmsparse.index.search")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mmsparse.index' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
