"""Serving sparse retrieval: index builds, engines, search, exports.

The engines (``inverted``, ``seismic``, ``milvus``, ``bmp``, ``kannolo``) sit behind one
contract in :mod:`mmsparse.index.engines` (``get_engine``, ``engine_names``). The retrieval
benchmark lives in :mod:`mmsparse.bench.retrieval`.

Optional engines (numba, pyseismic-lsr, pymilvus + milvus-lite, bmp, kannolo, faiss-cpu)
are imported lazily, on first use, with an install hint (``pip install 'mmsparse[index]'``).
The names below are imported on first access too, so that ``mmsparse.index.engines`` (the
command line's engine list) does not load the model code.

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
    from mmsparse.index.hits import SearchHits
    from mmsparse.index.inverted import InvertedIndex, write_postings
    from mmsparse.index.manifest import IndexManifest, IndexOptions
    from mmsparse.index.quantize import dequantize, quantize
    from mmsparse.index.search import Hit, Searcher, SearchResult, search_index

_EXPORTS = {
    "Engine": "mmsparse.index.engines",
    "Hit": "mmsparse.index.search",
    "IndexManifest": "mmsparse.index.manifest",
    "IndexOptions": "mmsparse.index.manifest",
    "InvertedIndex": "mmsparse.index.inverted",
    "SearchHits": "mmsparse.index.hits",
    "SearchResult": "mmsparse.index.search",
    "Searcher": "mmsparse.index.search",
    "build_index": "mmsparse.index.build",
    "dequantize": "mmsparse.index.quantize",
    "engine_names": "mmsparse.index.engines",
    "export_run": "mmsparse.index.export",
    "get_engine": "mmsparse.index.engines",
    "index_vectors": "mmsparse.index.build",
    "quantize": "mmsparse.index.quantize",
    "search_index": "mmsparse.index.search",
    "write_postings": "mmsparse.index.inverted",
}

__all__ = [
    "Engine",
    "Hit",
    "IndexManifest",
    "IndexOptions",
    "InvertedIndex",
    "SearchHits",
    "SearchResult",
    "Searcher",
    "build_index",
    "dequantize",
    "engine_names",
    "export_run",
    "get_engine",
    "index_vectors",
    "quantize",
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
