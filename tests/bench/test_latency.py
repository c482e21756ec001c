"""``mmsparse bench latency`` on a tiny inference-free run, served by a real child server."""

from __future__ import annotations

import json

import pytest

from mmsparse.bench.latency import bench_latency, format_latency_table
from mmsparse.errors import MMSparseError
from tests.index.conftest import make_run


def test_latency_serves_each_size_and_times_every_stage(tmp_path):
    # an inference-free run: the child server needs no text encoder
    run = make_run(tmp_path, lookup=True)
    out = tmp_path / "lat.json"
    work = tmp_path / "work"
    report = bench_latency(
        run, sizes=[20, 150], n_queries=6, warmup=2, work=work, out=out, progress=False
    )
    assert json.loads(out.read_text())["sizes"].keys() == {"20", "150"}
    assert report["query_encoder"] == "lookup"
    for n, entry in report["sizes"].items():
        index = json.loads((work / f"index-inverted-{n}" / "index.json").read_text())
        assert index["n_images"] == int(n)  # real images first, then synthetic ones
        assert entry["index"]["nnz"] == index["stats"]["nnz"]
        for stage in ("encode", "search", "total", "client"):
            assert 0 < entry[stage]["p50_ms"] <= entry[stage]["p99_ms"]
        # the server's whole handling holds its encoding and search; the client sees more
        assert entry["total"]["p50_ms"] >= entry["search"]["p50_ms"]
        assert entry["client"]["p50_ms"] >= entry["total"]["p50_ms"]
    assert (work / "index-inverted-150" / "confidence.json").is_file()
    assert "| 150 |" in format_latency_table(report)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sizes": []}, "--sizes must be positive"),
        ({"sizes": [0]}, "--sizes must be positive"),
        ({"n_queries": 0}, "--n-queries must be at least 1"),
        ({"split": "nosuch"}, "split 'nosuch' has no captions"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    run = make_run(tmp_path, lookup=True)
    with pytest.raises(MMSparseError, match=match):
        bench_latency(run, out=None, progress=False, **kwargs)
