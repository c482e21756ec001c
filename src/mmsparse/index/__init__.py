"""Serving sparse retrieval: index builds, engines (inverted, Seismic, Milvus), search, exports.

The retrieval benchmark lives in :mod:`mmsparse.bench.retrieval`.

Optional engines (numba, pyseismic-lsr, pymilvus + milvus-lite, faiss-cpu) are imported
lazily, on first use, with an install hint (``pip install 'mmsparse[index]'``).
"""

from mmsparse.index.build import build_index, index_vectors
from mmsparse.index.export import export_run
from mmsparse.index.folder import FolderIndexReport, build_folder_index
from mmsparse.index.inverted import InvertedIndex, SearchHits, write_postings
from mmsparse.index.manifest import IndexManifest, IndexOptions
from mmsparse.index.quantize import dequantize, quantize
from mmsparse.index.search import Hit, Searcher, SearchResult, search

__all__ = [
    "FolderIndexReport",
    "Hit",
    "IndexManifest",
    "IndexOptions",
    "InvertedIndex",
    "SearchHits",
    "SearchResult",
    "Searcher",
    "build_folder_index",
    "build_index",
    "dequantize",
    "export_run",
    "index_vectors",
    "quantize",
    "search",
    "write_postings",
]
