"""``mmsparse bench e2e`` on a tiny run: every stage timed, the lookup never encodes text."""

from __future__ import annotations

import json

import pytest

from mmsparse.bench.e2e import bench_end_to_end, format_e2e_table
from tests.index.conftest import make_run
from tests.serve.conftest import HashEncoder


class CountingEncoder(HashEncoder):
    pass


@pytest.mark.parametrize("lookup", [True, False])
def test_e2e_times_both_pipelines_at_every_size(tmp_path, lookup):
    pytest.importorskip("faiss")
    run = make_run(tmp_path, lookup=lookup)
    enc = CountingEncoder(16)
    out = tmp_path / "e2e.json"
    report = bench_end_to_end(
        run, sizes=[30, 120], n_queries=12, text_encoder=enc, out=out, progress=False
    )
    assert json.loads(out.read_text())["sizes"].keys() == {"30", "120"}
    assert report["query_encoder"] == ("lookup" if lookup else "head")
    for entry in report["sizes"].values():
        for pipe in ("sparse", "dense"):
            for stage in ("encode", "search", "total"):
                t = entry[pipe][stage]
                assert 0 <= t["p50_ms"] <= t["p99_ms"]
        assert entry["dense_over_sparse_p50"] > 0
    # the encoder runs for the dense pipeline (and the sparse one only without the lookup):
    # 2 warm-up texts, then per size 1 warm-up + 12 dense (+ 12 sparse) queries
    per_size = 13 + (0 if lookup else 13)
    assert sum(len(c) for c in enc.calls) == 2 + 2 * per_size
    assert "dense / sparse" in format_e2e_table(report)


def test_e2e_sparse_only_lookup_needs_no_encoder(tmp_path):
    run = make_run(tmp_path, lookup=True)
    report = bench_end_to_end(run, sizes=[40], n_queries=5, dense=False, out=None, progress=False)
    assert "dense" not in report["sizes"]["40"] and report["sizes"]["40"]["sparse"]
