"""Write the indexes of tests/index/test_old_indexes.py with a given mmsparse checkout.

They were written by the mmsparse of main before the engines moved behind one contract
(commit 8bf57c9), so the test proves that indexes built then still open and search the
same. To remake them (only after an intended on-disk format change)::

    PYTHONPATH=/path/to/mmsparse/src python tests/index/golden/make_old_indexes.py

It uses only ``index_vectors``, ``IndexManifest``, ``open_engine`` and ``search_batch``,
which both the old and the new code have.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mmsparse.index.build import index_vectors
from mmsparse.index.engines import open_engine
from mmsparse.index.manifest import IndexManifest, IndexOptions

HERE = Path(__file__).parent / "indexes"
ENGINES = {  # engine: (quantize, store_dense, engine params)
    "inverted": ("uint8", True, {}),
    "seismic": ("none", False, {"n_postings": 200, "query_cut": 30, "heap_factor": 1.0}),
    "bmp": ("none", False, {"bsize": 8}),
    "kannolo": ("none", False, {"m": 8, "ef_construction": 50, "ef_search": 60}),
    "milvus": ("none", False, {}),
}
K = 5


def vectors() -> tuple[sp.csr_matrix, np.ndarray, sp.csr_matrix, np.ndarray]:
    """Seeded image and query vectors: ``(sparse, dense, query sparse, query dense)``."""
    rng = np.random.default_rng(2024)
    docs = sp.random(60, 40, density=0.15, random_state=rng, format="csr", dtype=np.float32)
    queries = sp.random(6, 40, density=0.2, random_state=rng, format="csr", dtype=np.float32)
    dense = rng.standard_normal((60, 8)).astype(np.float32)
    q_dense = rng.standard_normal((6, 8)).astype(np.float32)
    return docs, dense, queries, q_dense


def main() -> None:
    docs, dense, queries, q_dense = vectors()
    expected: dict[str, dict[str, list]] = {}
    for engine, (quant, store_dense, params) in ENGINES.items():
        out = HERE / engine
        if out.exists():
            shutil.rmtree(out)
        index_vectors(
            out,
            engine,
            docs,
            dense,
            [f"img{i}" for i in range(60)],
            [f"img{i}.jpg" for i in range(60)],
            manifest_fields={
                "run_dir": "/nowhere/run",
                "checkpoint_sha256": "0" * 64,
                "vocab_sha256": "0" * 64,
                "split": "val",
                "data_dir": "",
                "w1": 0.4,
                "w2": 0.6,
            },
            options=IndexOptions(image_topk=None, threshold=0.0, quantize=quant),
            engine_params=params,
            store_dense=store_dense,
        )
        m = IndexManifest.load(out)
        eng = open_engine(out, m)
        modes = ["sparse", "dense", "hybrid"] if engine in ("inverted", "milvus") else ["sparse"]
        expected[engine] = {}
        for mode in modes:
            hits = eng.search_batch(queries, K, dense=q_dense, mode=mode, threads=1)
            expected[engine][mode] = [hits.rows.tolist(), hits.scores.tolist()]
        expected[engine]["doc_weights"] = eng.doc_weights(
            np.arange(0, 60, 7), np.arange(40)
        ).tolist()
        eng.close()
    rows = [f" {json.dumps(e)}: {json.dumps(v)}" for e, v in expected.items()]
    (HERE / "expected.json").write_text("{\n" + ",\n".join(rows) + "\n}\n")


if __name__ == "__main__":
    main()
