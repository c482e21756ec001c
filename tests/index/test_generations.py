"""Generations of a live index: the pointer, the writers' lock, and the calibration across
generations."""

from __future__ import annotations

import json
import multiprocessing
import os

import numpy as np
import pytest
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError, MMSparseError
from mmsparse.index import Searcher, build_index
from mmsparse.index.generations import (
    CURRENT_NAME,
    Generation,
    IndexLock,
    SegmentRef,
    generation_path,
    publish,
    read_current,
)
from mmsparse.index.live import add_vectors, optimize_index, remove_images
from mmsparse.index.manifest import IndexManifest, read_docs
from mmsparse.index.verdict import CALIBRATION_NAME, Calibration, index_identity


@pytest.fixture
def tiny_index(tiny_run, tmp_path):
    out = tmp_path / "index"
    build_index(tiny_run, out, store_dense=True, progress=False)
    return out


def _vectors(manifest, n, seed):
    rng = np.random.default_rng(seed)
    sparse = sp.random(n, manifest.vocab_size, density=0.05, random_state=rng, format="csr")
    sparse.data = np.abs(sparse.data).astype(np.float32) + 0.1
    dense = rng.standard_normal((n, manifest.dense_dim)).astype(np.float32)
    return sparse.astype(np.float32), dense


def test_the_pointer_names_one_checked_generation(tiny_index):
    gen = read_current(tiny_index)
    assert gen.generation == 0 and gen.segments[0].path == "."
    m = IndexManifest.load(tiny_index)
    publish(
        tiny_index,
        Generation(generation=1, segments=[SegmentRef("base", ".", m.n_images)], note="same"),
    )
    pointer = json.loads((tiny_index / CURRENT_NAME).read_text())
    assert pointer["manifest"] == generation_path(1) == "generations/g000001.json"
    assert read_current(tiny_index).note == "same"
    # a generation manifest changed behind the pointer's back is refused, not half-read
    path = tiny_index / generation_path(1)
    path.write_text(path.read_text().replace('"same"', '"edit"'))
    with pytest.raises(IndexFormatError, match="checksum mismatch"):
        read_current(tiny_index)


def _hold_lock(index, ready, release):
    with IndexLock(index, "index add"):
        ready.set()
        release.wait(30)


def test_one_writer_at_a_time(tiny_index):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tiny_index, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        m = IndexManifest.load(tiny_index)
        sparse, dense = _vectors(m, 2, 0)
        with pytest.raises(MMSparseError, match="another writer is changing this index") as err:
            add_vectors(tiny_index, sparse, dense, ["x", "y"])
        message = str(err.value)
        assert "\n" not in message and f"pid {holder.pid}" in message and "index add" in message
        with pytest.raises(MMSparseError, match="another writer"):
            remove_images(tiny_index, [read_docs(tiny_index, m.n_images)[0][0]])
        assert read_current(tiny_index).generation == 0  # nothing published
    finally:
        release.set()
        holder.join(30)
    # the holder is gone (a killed holder's lock goes with it): the next writer goes ahead
    m = IndexManifest.load(tiny_index)
    sparse, dense = _vectors(m, 2, 0)
    assert add_vectors(tiny_index, sparse, dense, ["x", "y"]).generation == 1
    assert os.path.getsize(tiny_index / "LOCK") == 0


def test_the_calibration_lives_across_adds_and_is_computed_again_on_optimize(tiny_index):
    cal_path = tiny_index / CALIBRATION_NAME
    assert cal_path.is_file()
    searcher = Searcher(tiny_index)
    assert searcher.calibration is not None
    classic = searcher.calibration.quantiles
    searcher.close()
    m = IndexManifest.load(tiny_index)
    sparse, dense = _vectors(m, 6, 1)
    rep = add_vectors(tiny_index, sparse, dense, [f"new{i}" for i in range(6)], gc_grace_s=0)
    assert rep.calibration.startswith("kept")
    cal = Calibration.load(tiny_index)
    assert cal.index_sha256 == index_identity(tiny_index, m)  # tied to the collection now
    ids, _ = read_docs(tiny_index, m.n_images)
    remove_images(tiny_index, ids[:5], gc_grace_s=0)
    searcher = Searcher(tiny_index)
    assert searcher.calibration is not None and searcher.calibration.quantiles == classic
    assert not [n for n in searcher.notes if CALIBRATION_NAME in n]
    searcher.close()
    before = cal_path.read_bytes()
    rep = optimize_index(tiny_index, gc_grace_s=0)
    assert rep.calibration.startswith("computed again")
    assert cal_path.read_bytes() != before  # other images, other top scores
    searcher = Searcher(tiny_index)
    assert searcher.calibration is not None
    assert searcher.calibration.quantiles != classic
    assert searcher.manifest.n_images == m.n_images + 6 - 5
    searcher.close()
