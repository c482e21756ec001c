"""Non-finite index options are refused up front (``--threshold nan`` wrote ``NaN`` into
``index.json``, which is not JSON), and what an index build writes is strict JSON."""

from __future__ import annotations

import json

import pytest

from mmsparse.cli.main import main
from mmsparse.errors import MMSparseError


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value", ["nan", "inf", "-0.5"])
def test_index_build_refuses_a_non_finite_or_negative_threshold(tiny_run, tmp_path, capsys, value):
    out = tmp_path / "idx"
    argv = ["index", "build", str(tiny_run), "--out", str(out), "--threshold", value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--threshold must be a finite number >= 0" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_index_vectors_and_export_refuse_a_nan_threshold(tiny_run, tmp_path, capsys):
    import numpy as np
    import scipy.sparse as sp

    from mmsparse.index.build import index_vectors
    from mmsparse.index.manifest import IndexOptions

    with pytest.raises(MMSparseError, match="--threshold must be a finite number"):
        index_vectors(
            tmp_path / "v",
            "inverted",
            sp.csr_matrix(np.eye(2, dtype=np.float32)),
            np.zeros((2, 2), np.float32),
            ["a", "b"],
            ["", ""],
            manifest_fields={},
            options=IndexOptions(threshold=float("nan")),
        )
    argv = ["export", str(tiny_run), "--format", "anserini", "--out", str(tmp_path / "e")]
    assert main([*argv, "--threshold", "nan"]) == 2
    assert "--threshold must be a finite number" in capsys.readouterr().err


def test_a_built_index_and_the_command_line_json_are_strict(tiny_run, tmp_path, capsys):
    out = tmp_path / "idx"
    assert main(["index", "build", str(tiny_run), "--out", str(out), "--json"]) == 0
    assert _strict(capsys.readouterr().out)["engine"] == "inverted"
    for name in ("index.json", "docs.json"):
        _strict((out / name).read_text())
