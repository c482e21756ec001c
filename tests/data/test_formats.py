from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from mmsparse.data.formats import read_feature_file, write_feature_parquet
from mmsparse.errors import DataError


def _emb(n=5, d=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_parquet_round_trip_fixed_size(tmp_path):
    emb = _emb()
    write_feature_parquet(tmp_path / "f.parquet", [str(i) for i in range(5)], emb)
    ff = read_feature_file(tmp_path / "f.parquet")
    assert ff.ids == ["0", "1", "2", "3", "4"]
    np.testing.assert_array_equal(ff.emb, emb)


def test_parquet_variable_lists_as_released(tmp_path):
    # The paper's files store `emb` as a plain list<double>.
    emb = _emb().astype(np.float64)
    table = pa.table({"id": ["a", "b", "c", "d", "e"], "emb": [list(r) for r in emb]})
    pq.write_table(table, tmp_path / "f.parquet")
    ff = read_feature_file(tmp_path / "f.parquet", expected_dim=4)
    np.testing.assert_allclose(ff.emb, emb.astype(np.float32))


def test_ragged_row_is_named(tmp_path):
    table = pa.table({"id": ["a", "b", "c"], "emb": [[1.0, 2.0], [1.0, 2.0, 3.0], [0.0, 1.0]]})
    pq.write_table(table, tmp_path / "f.parquet")
    with pytest.raises(DataError, match=r"f\.parquet: wrong embedding dimension at row 1, id b"):
        read_feature_file(tmp_path / "f.parquet")


def test_wrong_dimension(tmp_path):
    write_feature_parquet(tmp_path / "f.parquet", ["0", "1", "2", "3", "4"], _emb())
    with pytest.raises(DataError, match="wrong embedding dimension: expected 8, got 4"):
        read_feature_file(tmp_path / "f.parquet", expected_dim=8)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_names_row_and_id(tmp_path, bad):
    emb = _emb()
    emb[3, 1] = bad
    write_feature_parquet(tmp_path / "f.parquet", ["a", "b", "c", "d", "e"], emb)
    with pytest.raises(DataError, match=r"NaN or inf in feature at row 3, id d"):
        read_feature_file(tmp_path / "f.parquet")


def test_duplicate_id(tmp_path):
    write_feature_parquet(tmp_path / "f.parquet", ["a", "b", "a", "d", "e"], _emb())
    with pytest.raises(DataError, match=r"duplicate id a \(rows 0 and 2\)"):
        read_feature_file(tmp_path / "f.parquet")


def test_truncated_parquet(tmp_path):
    write_feature_parquet(tmp_path / "f.parquet", ["0", "1", "2", "3", "4"], _emb())
    data = (tmp_path / "f.parquet").read_bytes()
    (tmp_path / "g.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"g\.parquet: unreadable or truncated parquet"):
        read_feature_file(tmp_path / "g.parquet")


def test_missing_columns(tmp_path):
    pq.write_table(pa.table({"key": ["a"], "vec": [[1.0]]}), tmp_path / "f.parquet")
    with pytest.raises(DataError, match="f.parquet"):
        read_feature_file(tmp_path / "f.parquet")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="feature file not found"):
        read_feature_file(tmp_path / "nope.parquet")


def test_npy_with_and_without_ids(tmp_path):
    emb = _emb()
    np.save(tmp_path / "f.npy", emb)
    ff = read_feature_file(tmp_path / "f.npy")
    assert ff.ids is None
    np.testing.assert_array_equal(ff.emb, emb)
    (tmp_path / "f.ids.txt").write_text("\n".join("abcde"))
    assert read_feature_file(tmp_path / "f.npy").ids == list("abcde")


def test_npy_object_arrays_are_never_unpickled(tmp_path):
    np.save(tmp_path / "f.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="unreadable"):
        read_feature_file(tmp_path / "f.npy")


def test_safetensors_ids_as_tensor_or_metadata(tmp_path):
    emb = _emb()
    save_file(
        {"emb": emb, "id": np.arange(5, dtype=np.int64) * 10}, str(tmp_path / "a.safetensors")
    )
    assert read_feature_file(tmp_path / "a.safetensors").ids == ["0", "10", "20", "30", "40"]
    save_file(
        {"emb": emb}, str(tmp_path / "b.safetensors"), metadata={"ids": json.dumps(list("vwxyz"))}
    )
    ff = read_feature_file(tmp_path / "b.safetensors")
    assert ff.ids == list("vwxyz")
    np.testing.assert_array_equal(ff.emb, emb)
    save_file({"x": emb}, str(tmp_path / "c.safetensors"))
    with pytest.raises(DataError, match="needs a tensor 'emb'"):
        read_feature_file(tmp_path / "c.safetensors")
    (tmp_path / "d.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataError, match="unreadable or truncated safetensors"):
        read_feature_file(tmp_path / "d.safetensors")


def _flip_bits(path, old: float, mask: int) -> None:
    """Flip ``mask`` in the bits of the one float32 ``old`` stored in an uncompressed file."""
    data = bytearray(path.read_bytes())
    needle = np.float32(old).tobytes()
    assert data.count(needle) == 1
    at = data.index(needle)
    word = np.frombuffer(needle, dtype=np.uint32)[0] ^ np.uint32(mask)
    data[at : at + 4] = np.array([word], dtype=np.uint32).tobytes()
    path.write_bytes(bytes(data))


def _plain_parquet(path, emb, **kwargs) -> None:
    """A release-like parquet file whose float32 values are stored as raw bytes."""
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    ids = [f"r{i}" for i in range(emb.shape[0])]
    table = pa.table({"id": ids, "emb": col})
    pq.write_table(table, path, compression="NONE", use_dictionary=False, **kwargs)


def _distinct(n=20, d=8):
    """Values in [-0.99, 0.99], all different, none equal to the flipped probes."""
    return (np.linspace(-0.99, 0.99, n * d, dtype=np.float32) + 1e-4).reshape(n, d)


def test_bit_flipped_value_outside_the_files_statistics_is_named(tmp_path):
    emb = _distinct()
    emb[7, 3] = 0.8125  # 0x3F500000; flipping the exponent's lowest bit gives 1.625
    path = tmp_path / "f.parquet"
    _plain_parquet(path, emb)
    assert read_feature_file(path).emb[7, 3] == np.float32(0.8125)
    _flip_bits(path, 0.8125, 1 << 23)
    assert float(pq.read_table(path)["emb"][7][3].as_py()) == 1.625  # readable, wrong
    with pytest.raises(
        DataError,
        match=r"f\.parquet: corrupt feature at row 7, id r7: value 1\.625 in column 3 lies "
        r"outside \[-0\.9899, 0\.9901\], the range the file's own statistics record for rows "
        r"0-19 \(1 bad row in all\); re-extract or re-download the file$",
    ):
        read_feature_file(path)


def test_a_flipped_sign_is_caught_by_its_row_groups_statistics(tmp_path):
    emb = np.abs(_distinct())
    emb[10:] *= -1  # row group 0 holds values >= 0, row group 1 values <= 0
    emb[12, 5] = -0.8125
    path = tmp_path / "f.parquet"
    _plain_parquet(path, emb, row_group_size=10)
    read_feature_file(path)
    _flip_bits(path, -0.8125, 1 << 31)  # +0.8125: inside the file's range, not the group's
    with pytest.raises(DataError, match=r"at row 12, id r12: value 0\.8125 .* rows 10-19"):
        read_feature_file(path)


def test_absurd_magnitude_is_refused_without_statistics(tmp_path):
    # Like the bit-flipped file of issue 19: 3.4 became ~2.4e24.
    emb = _distinct()
    emb[4, 2] = 2.4e24
    path = tmp_path / "f.parquet"
    _plain_parquet(path, emb, write_statistics=False)
    with pytest.raises(DataError, match=r"row 4, id r4: value 2\.4e\+24 in column 2 .*sane"):
        read_feature_file(path)
    np.save(tmp_path / "g.npy", emb)  # formats without statistics: the bound alone
    with pytest.raises(DataError, match=r"g\.npy: corrupt feature at row 4: value 2\.4e\+24"):
        read_feature_file(tmp_path / "g.npy")
    assert read_feature_file(tmp_path / "g.npy", max_abs=1e25).emb[4, 2] == np.float32(2.4e24)


def test_released_float64_lists_and_many_row_groups_load(tmp_path):
    # list<double> statistics are float64; values are read as float32 (same rounding).
    emb = np.random.default_rng(1).standard_normal((30, 5)) * 3
    table = pa.table({"id": [str(i) for i in range(30)], "emb": [list(r) for r in emb]})
    pq.write_table(table, tmp_path / "f.parquet", row_group_size=7)
    ff = read_feature_file(tmp_path / "f.parquet")
    np.testing.assert_array_equal(ff.emb, emb.astype(np.float32))


def test_damaged_files_are_one_line_data_errors(tmp_path):
    """Found by tests/test_fuzz.py: a traceback or a multi-line message each."""
    pq.write_table(pa.table({"key": ["a"], "emb": [[1.0]]}), tmp_path / "f.parquet")
    with pytest.raises(DataError) as exc:
        read_feature_file(tmp_path / "f.parquet")
    assert str(exc.value).endswith(
        "f.parquet: parquet file needs columns 'id' and 'emb', it lacks 'id' (columns: key, emb)"
    )
    pq.write_table(pa.table({"id": ["a"], "emb": [[1.0]]}), tmp_path / "g.parquet")
    data = (tmp_path / "g.parquet").read_bytes()
    at = data.index(b"emb", data.index(b"id"))  # its name in the footer: not UTF-8 any more
    (tmp_path / "g.parquet").write_bytes(data[:at] + b"\xf3mb" + data[at + 3 :])
    with pytest.raises(DataError, match=r"g\.parquet: unreadable or truncated parquet") as exc:
        read_feature_file(tmp_path / "g.parquet")
    np.save(tmp_path / "h.npy", _emb())
    data = bytearray((tmp_path / "h.npy").read_bytes())
    data[data.index(b"(")] = ord("[")  # a header Python's tokenizer cannot end
    (tmp_path / "h.npy").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"h\.npy: unreadable or truncated \.npy file") as exc:
        read_feature_file(tmp_path / "h.npy")
    assert "\n" not in str(exc.value)
