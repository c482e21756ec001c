"""``mmsparse bench serve``'s load generator against a live server, and its argument checks."""

from __future__ import annotations

import pytest

from mmsparse.bench.local_server import latency_ms
from mmsparse.bench.serve import bench_serve, run_load
from mmsparse.errors import MMSparseError


def test_run_load_sends_every_query_once_and_counts_errors(server):
    port = int(server.rsplit(":", 1)[1])
    queries = [f"a dog number {i}" for i in range(23)] + [" ", "dog"]  # one blank: a 400
    res = run_load(port, queries, clients=4, k=5)
    assert len(res["latencies"]) == 25 and res["wall_s"] > 0
    assert len(res["errors"]) == 1 and res["errors"][0].startswith("HTTP 400")
    assert all(t > 0 for t in res["latencies"])


def test_percentiles_in_milliseconds():
    p = latency_ms([0.001 * i for i in range(1, 101)])
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01)
    assert p["max"] == 100.0 and latency_ms([]) == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clients": 0}, "at least 1"),
        ({"rounds": 0}, "at least 1"),
        ({"k": 0}, "--k must be at least 1, got 0"),
        ({"encoder_threads": 0}, "--encoder-threads must be at least 1, got 0"),
        ({"encoders": ["fast"]}, "unknown encoder mode 'fast'"),
    ],
)
def test_bad_arguments(served_index, kwargs, match):
    with pytest.raises(MMSparseError, match=match):
        bench_serve(served_index, out=None, progress=False, **kwargs)
