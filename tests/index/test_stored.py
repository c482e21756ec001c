"""The stored image vectors of the bmp and kannolo engines."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mmsparse.errors import IndexFormatError
from mmsparse.index.stored import load_stored, save_stored, stored_weights


def test_round_trip_with_extra_arrays_and_dtypes(tmp_path):
    m = sp.random(5, 40, density=0.2, format="csr", random_state=0, dtype=np.float32)
    path = tmp_path / "meta.npz"
    save_stored(path, m, indices_dtype=np.uint16, kth=np.arange(3))
    got, extra = load_stored(path, "bmp", ("kth",))
    assert got.shape == (5, 40) and got.indices.dtype == np.int32
    np.testing.assert_array_equal(got.toarray(), m.toarray())
    np.testing.assert_array_equal(extra["kth"], np.arange(3))
    rows, terms = np.array([4, 0]), np.array([7, 1, 39])
    want = m.toarray()[rows][:, terms] * 0.5
    np.testing.assert_allclose(stored_weights(got, rows, terms, 0.5), want)


def test_unreadable_or_incomplete_metadata_names_the_file_and_engine(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(IndexFormatError, match=r"bad\.npz: unreadable kannolo metadata"):
        load_stored(bad, "kannolo")
    path = tmp_path / "meta.npz"
    save_stored(path, sp.csr_matrix(np.eye(3, dtype=np.float32)))
    with pytest.raises(IndexFormatError, match=r"meta\.npz: unreadable bmp metadata"):
        load_stored(path, "bmp", ("kth",))
