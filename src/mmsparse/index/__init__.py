"""Serving sparse retrieval: index builds, engines (inverted, Seismic, Milvus), search, exports.

Optional engines (numba, pyseismic-lsr, pymilvus + milvus-lite, faiss-cpu) are imported
lazily, on first use, with an install hint (``pip install 'mmsparse[index]'``).
"""

from mmsparse.index.bench import bench_retrieval, format_bench_table, synthesize_corpus
from mmsparse.index.build import build_index, index_vectors
from mmsparse.index.export import export_run
from mmsparse.index.inverted import InvertedIndex, SearchHits, write_postings
from mmsparse.index.manifest import IndexManifest, IndexOptions
from mmsparse.index.quantize import dequantize, quantize
from mmsparse.index.search import Hit, Searcher, SearchResult, search

__all__ = [
    "Hit",
    "IndexManifest",
    "IndexOptions",
    "InvertedIndex",
    "SearchHits",
    "SearchResult",
    "Searcher",
    "bench_retrieval",
    "build_index",
    "dequantize",
    "export_run",
    "format_bench_table",
    "index_vectors",
    "quantize",
    "search",
    "synthesize_corpus",
    "write_postings",
]
