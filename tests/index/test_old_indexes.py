"""Indexes written before the engines moved behind one contract open and search the same.

``golden/indexes`` holds one index per engine written by main at 8bf57c9 (with
``golden/make_old_indexes.py``) and the results that code gave; the current code must
open them through the registry and give the same rows, scores and stored weights.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmsparse.index.engines import get_engine, open_engine
from mmsparse.index.manifest import IndexManifest
from tests.index.golden.make_old_indexes import ENGINES, K, vectors

OLD = Path(__file__).parent / "golden" / "indexes"
MODULE = {"seismic": "seismic", "bmp": "bmp", "kannolo": "kannolo", "milvus": "milvus_lite"}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_an_index_written_before_opens_and_searches_the_same(engine, tmp_path):
    module = MODULE.get(engine)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed (pip install 'mmsparse[index]')")
    index = tmp_path / engine
    shutil.copytree(OLD / engine, index)  # milvus-lite writes a lock file next to its data
    expected = json.loads((OLD / "expected.json").read_text())[engine]
    _, _, queries, q_dense = vectors()
    manifest = IndexManifest.load(index)
    with open_engine(index, manifest) as opened:
        assert isinstance(opened, get_engine(engine))
        for mode in ("sparse", "dense", "hybrid"):
            if mode not in expected:
                continue
            rows, scores = expected[mode]
            hits = opened.search_batch(queries, K, dense=q_dense, mode=mode, threads=1)
            np.testing.assert_array_equal(hits.rows, np.array(rows))
            np.testing.assert_allclose(hits.scores, np.array(scores), rtol=1e-6, atol=1e-7)
        weights = opened.doc_weights(np.arange(0, 60, 7), np.arange(40))
        np.testing.assert_allclose(weights, np.array(expected["doc_weights"]), rtol=1e-6)
