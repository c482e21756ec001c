"""Reading and writing feature files: the paper's parquet release, ``.npy`` and safetensors.

The release format (Song et al., 2025) is one parquet file per modality with two columns:
``id`` (string: Karpathy ``imgid`` for images, ``sentid`` for captions) and ``emb`` (a list
of floats, one feature vector taken right before the backbone's final projection).

Alternatives accepted for the same role:

* ``.safetensors`` with a tensor ``emb`` of shape ``(N, d)`` and either an integer tensor
  ``id`` of shape ``(N,)`` or a JSON list of strings under the header metadata key ``ids``;
  without ids, rows follow the metadata order.
* ``.npy`` holding an ``(N, d)`` array (never unpickled); ids come from a sibling
  ``<stem>.ids.txt`` (one id per line) or, without it, follow the metadata order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.errors import DataError
from mmsparse.io_utils import atomic_path

FEATURE_SUFFIXES = (".parquet", ".safetensors", ".npy")


# Largest absolute feature value accepted: features taken before a backbone's projection are
# of order 1-100; a float32 whose exponent bits were flipped is typically beyond 1e9.
MAX_ABS_FEATURE = 1e6


@dataclass(frozen=True)
class ValueRange:
    """The minimum and maximum a file records for its rows ``start`` to ``stop - 1``."""

    start: int
    stop: int
    min: float
    max: float


@dataclass(frozen=True)
class FeatureFile:
    """Feature vectors read from one file.

    Attributes:
        path: The file they came from.
        ids: Row ids as strings, or ``None`` when the file carries none (metadata order).
        emb: ``(N, d)`` float32 array.
    """

    path: Path
    ids: list[str] | None
    emb: np.ndarray


def read_feature_file(
    path: str | Path, expected_dim: int | None = None, *, max_abs: float = MAX_ABS_FEATURE
) -> FeatureFile:
    """Read one feature file and check it: dimension, values, duplicate ids.

    Values must be finite, at most ``max_abs`` in magnitude and, in a parquet file, within
    the minimum and maximum its footer records for each row group (a corrupt but readable
    file is refused rather than trained on).

    Args:
        path: A ``.parquet``, ``.safetensors`` or ``.npy`` feature file.
        expected_dim: If given, every vector must have this many values.
        max_abs: Largest absolute feature value accepted (:data:`MAX_ABS_FEATURE`).

    Returns:
        The validated :class:`FeatureFile`.

    Raises:
        DataError: Naming the file and the offending id or row.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: feature file not found")
    suffix = path.suffix.lower()
    ranges: list[ValueRange] = []
    if suffix == ".parquet":
        ids, emb, ranges = _read_parquet(path)
    elif suffix == ".safetensors":
        ids, emb = _read_safetensors(path)
    elif suffix == ".npy":
        ids, emb = _read_npy(path)
    else:
        raise DataError(
            f"{path}: unsupported feature file type (use {', '.join(FEATURE_SUFFIXES)})"
        )
    if emb.ndim != 2:
        raise DataError(f"{path}: features must be a 2-d array (rows, dim), got shape {emb.shape}")
    if emb.shape[0] == 0:
        raise DataError(f"{path}: feature file has no rows")
    if emb.shape[1] == 0:
        raise DataError(f"{path}: features of dimension 0 (empty vectors)")
    if ids is not None and len(ids) != emb.shape[0]:
        raise DataError(f"{path}: {len(ids)} ids but {emb.shape[0]} feature rows")
    if expected_dim is not None and emb.shape[1] != expected_dim:
        raise DataError(
            f"{path}: wrong embedding dimension: expected {expected_dim}, got {emb.shape[1]}"
            f" (row 0{'' if ids is None else ', id ' + ids[0]})"
        )
    check_values(emb, path, ids, max_abs=max_abs, ranges=ranges)
    if ids is not None:
        check_unique(ids, path, "id")
    return FeatureFile(path=path, ids=ids, emb=emb)


def check_finite(emb: np.ndarray, path: Path | str, ids: list[str] | None) -> None:
    """Raise :class:`DataError` naming the first row (and id) holding NaN or inf."""
    finite = np.isfinite(emb).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        bad = int((~finite).sum())
        where = f"row {row}" + ("" if ids is None else f", id {ids[row]}")
        raise DataError(f"{path}: NaN or inf in feature at {where} ({bad} bad rows in all)")


def check_values(
    emb: np.ndarray,
    path: Path | str,
    ids: list[str] | None,
    *,
    max_abs: float = MAX_ABS_FEATURE,
    ranges: Sequence[ValueRange] = (),
) -> None:
    """Check that every value is finite, of a sane magnitude and within the file's statistics.

    A corrupt but readable file (flipped bits in a data page) holds values its writer never
    wrote: outside the minimum and maximum that the file's footer records for those rows,
    or of an absurd magnitude. Both are refused, as are NaN and inf. The common case costs
    one minimum and one maximum per row range; the offending row is looked up on failure.

    Args:
        emb: ``(N, d)`` features.
        path: The file they came from (for the message).
        ids: Row ids, or ``None``.
        max_abs: Largest absolute value accepted.
        ranges: Consecutive row ranges from row 0 to the last, with the minimum and
            maximum the file records for each (``-inf``/``inf`` where it records none).

    Raises:
        DataError: Naming the file, the first offending row, its id and the value.
    """
    n = emb.shape[0]
    blocks = list(ranges)
    tiled = [r.start for r in blocks] == [0] + [r.stop for r in blocks[:-1]]
    if not blocks or not tiled or blocks[-1].stop != n:
        blocks = [ValueRange(0, n, -np.inf, np.inf)]  # no usable statistics: bounds only
    for block in blocks:
        part = emb[block.start : block.stop]
        if part.size == 0:
            continue
        lo, hi = float(part.min()), float(part.max())  # NaN propagates, inf is kept
        if not (np.isfinite(lo) and np.isfinite(hi)):
            check_finite(emb, path, ids)
        if max(-lo, hi) > max_abs:
            _raise_outside(
                emb, path, ids, ValueRange(0, n, -max_abs, max_abs), "a sane bound for features"
            )
        if lo < block.min or hi > block.max:
            _raise_outside(
                emb,
                path,
                ids,
                block,
                f"the range the file's own statistics record for rows {block.start}-"
                f"{block.stop - 1}",
            )


def _raise_outside(
    emb: np.ndarray, path: Path | str, ids: list[str] | None, block: ValueRange, what: str
) -> None:
    part = emb[block.start : block.stop]
    outside = (part < block.min) | (part > block.max)
    bad_rows = np.flatnonzero(outside.any(axis=1))
    row, col = int(bad_rows[0]), int(np.flatnonzero(outside[bad_rows[0]])[0])
    value = float(part[row, col])
    row += block.start
    where = f"row {row}" + ("" if ids is None else f", id {ids[row]}")
    raise DataError(
        f"{path}: corrupt feature at {where}: value {value:.4g} in column {col} lies outside "
        f"[{block.min:.4g}, {block.max:.4g}], {what} ({bad_rows.size} bad "
        f"row{'' if bad_rows.size == 1 else 's'} in all); "
        "re-extract or re-download the file"
    )


def check_unique(ids: list[str], path: Path | str, what: str) -> None:
    """Raise :class:`DataError` naming the first duplicated id."""
    seen: dict[str, int] = {}
    for row, key in enumerate(ids):
        if key in seen:
            raise DataError(f"{path}: duplicate {what} {key} (rows {seen[key]} and {row})")
        seen[key] = row


def _parquet_ranges(metadata: Any) -> list[ValueRange]:
    """Rows and recorded value range of every row group (of the leaf column under ``emb``).

    Parquet keeps statistics of leaf columns only: for a list column ``emb`` they are those
    of its element column (``emb.list.element``), over all values of the row group.
    """
    leaves = [
        i
        for i in range(metadata.num_columns)
        if metadata.schema.column(i).path.split(".")[0] == "emb"
    ]
    if len(leaves) != 1:
        return []
    ranges, start = [], 0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        stats = group.column(leaves[0]).statistics
        lo, hi = -np.inf, np.inf
        if stats is not None and stats.has_min_max:
            try:
                # As float32, like the values read: rounding keeps x <= max as fl(x) <= fl(max)
                # (a float64 statistic beyond float32 becomes inf, as its value does).
                with np.errstate(over="ignore"):
                    lo, hi = float(np.float32(stats.min)), float(np.float32(stats.max))
            except (TypeError, ValueError, OverflowError):
                lo, hi = -np.inf, np.inf
            if not (lo <= hi):  # NaN or nonsense statistics: trust the values alone
                lo, hi = -np.inf, np.inf
        ranges.append(ValueRange(start, start + group.num_rows, lo, hi))
        start += group.num_rows
    return ranges


def _read_parquet(path: Path) -> tuple[list[str], np.ndarray, list[ValueRange]]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path)
        names = metadata.schema.to_arrow_schema().names
        missing = [c for c in ("id", "emb") if c not in names]
        if missing:
            raise DataError(
                f"{path}: parquet file needs columns 'id' and 'emb', it lacks "
                f"{' and '.join(repr(c) for c in missing)} (columns: {', '.join(names)})"
            )
        ranges = _parquet_ranges(metadata)
        table = pq.read_table(path, columns=["id", "emb"])
    except DataError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:  # a damaged name: UnicodeError
        # Arrow's messages may span lines (a schema): one line here.
        reason = " ".join(str(exc).split())
        raise DataError(f"{path}: unreadable or truncated parquet file ({reason})") from exc
    ids = [str(x) for x in table.column("id").to_pylist()]
    col = table.column("emb").combine_chunks()
    n = len(col)
    if n == 0:
        raise DataError(f"{path}: feature file has no rows")
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: missing embedding at row {row}, id {ids[row]}")
    if pa.types.is_fixed_size_list(col.type):
        dim = col.type.list_size
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        dim = int(lengths[0])
        bad = np.flatnonzero(lengths != dim)
        if bad.size:
            row = int(bad[0])
            raise DataError(
                f"{path}: wrong embedding dimension at row {row}, id {ids[row]}: "
                f"{int(lengths[row])} values, but row 0 has {dim}"
            )
    else:
        raise DataError(f"{path}: column 'emb' must be a list of floats, got {col.type}")
    values = col.flatten()
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise DataError(f"{path}: column 'emb' must hold numbers, got {values.type}")
    if values.null_count:
        raise DataError(f"{path}: null values inside column 'emb'")
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf: refused below
        emb = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    emb = emb.reshape(n, dim)
    if not emb.flags.writeable:  # zero-copy views of Arrow buffers are read-only
        emb = emb.copy()
    return ids, emb, ranges


def _read_safetensors(path: Path) -> tuple[list[str] | None, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            keys = set(fh.keys())
            metadata = fh.metadata() or {}
            if "emb" not in keys:
                raise DataError(f"{path}: safetensors feature file needs a tensor 'emb'")
            emb = np.asarray(fh.get_tensor("emb"), dtype=np.float32)
            ids_arr = fh.get_tensor("id") if "id" in keys else None
    except DataError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise DataError(f"{path}: unreadable or truncated safetensors file ({reason})") from exc
    ids: list[str] | None
    if ids_arr is not None:
        ids = [str(int(x)) for x in np.asarray(ids_arr).reshape(-1)]
    elif "ids" in metadata:
        ids = [str(x) for x in json.loads(metadata["ids"])]
    else:
        ids = None
    return ids, emb


def _read_npy(path: Path) -> tuple[list[str] | None, np.ndarray]:
    try:
        emb = np.load(path, allow_pickle=False, mmap_mode=None)
    except Exception as exc:  # a damaged header raises ValueError, SyntaxError, TokenError...
        reason = " ".join(str(exc).split())
        raise DataError(f"{path}: unreadable or truncated .npy file ({reason})") from exc
    emb = np.asarray(emb, dtype=np.float32)
    ids_path = path.with_name(path.stem + ".ids.txt")
    ids = None
    if ids_path.is_file():
        ids = [line.strip() for line in ids_path.read_text(encoding="utf-8").splitlines()]
        ids = [x for x in ids if x]
    return ids, emb


def write_feature_parquet(path: str | Path, ids: list[str], emb: np.ndarray) -> None:
    """Write features in the paper's release format (columns ``id``, ``emb``), atomically.

    Args:
        path: Destination ``.parquet`` file.
        ids: One string id per row.
        emb: ``(N, d)`` array; stored as a fixed-size list of float32.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise DataError(f"{path}: expected {len(ids)} rows of features, got shape {emb.shape}")
    values = pa.array(emb.reshape(-1), type=pa.float32())
    col = pa.FixedSizeListArray.from_arrays(values, emb.shape[1])
    table = pa.table({"id": pa.array([str(i) for i in ids], type=pa.string()), "emb": col})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
