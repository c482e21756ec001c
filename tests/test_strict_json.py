"""JSON is written strictly: a NaN or an infinity is a clear error, never invalid JSON
(``NaN`` in ``index.json`` broke other tools). The index options: tests/index/."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import mmsparse
from mmsparse.errors import MMSparseError
from mmsparse.io_utils import atomic_write_json, json_text

SRC = Path(mmsparse.__file__).resolve().parent


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_atomic_write_json_refuses_non_finite_numbers_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "stats.json"
    atomic_write_json(path, {"ok": 1.5})
    with pytest.raises(MMSparseError, match=r"stats.json: stats.loss\[1\] is nan, which JSON"):
        atomic_write_json(path, {"stats": {"loss": [0.5, float("nan")]}})
    assert _strict(path.read_text()) == {"ok": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]  # no temporary left
    with pytest.raises(MMSparseError, match=r"stdout: x is -inf"):
        json_text({"x": float("-inf")}, what="stdout")
    assert json_text([1.0, "a"], indent=None) == '[1.0, "a"]'


def test_every_json_writer_in_the_library_is_strict():
    """json.dump/dumps calls pass allow_nan=False (or go through io_utils.json_text)."""
    loose = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("dump", "dumps")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "json"
            ):
                strict = any(
                    k.arg == "allow_nan" and isinstance(k.value, ast.Constant) and not k.value.value
                    for k in node.keywords
                )
                if not strict:
                    loose.append(f"{rel}:{node.lineno}")
    assert loose == []
