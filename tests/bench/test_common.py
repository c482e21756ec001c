"""The pieces the training benchmarks share (mmsparse.bench.common)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from mmsparse.bench.common import (
    RunRecord,
    hit_at_1,
    mean_std,
    paired_permutation_test,
    reciprocal_rank_at_10,
    replace_marked_block,
    results_footer,
    seed_rows,
)


def test_paired_permutation_test_by_hand():
    a = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    b = np.zeros(8)
    res = paired_permutation_test(a, b, n_resamples=2000)
    # only the two all-same-sign flips reach |mean| = 1: p ~ 2 / 256
    assert res["mean_diff"] == 1.0 and res["p_value"] == pytest.approx(2 / 256, abs=0.01)
    same = paired_permutation_test(a, a)
    assert same["p_value"] == 1.0


def test_per_query_hits():
    ranks = np.array([1, 2, 10, 11])
    assert hit_at_1(ranks).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert reciprocal_rank_at_10(ranks).tolist() == [1.0, 0.5, 0.1, 0.0]


def _record(seed: int, r1: float, seconds: float) -> RunRecord:
    metrics = {"R@1": r1, "R@5": 2 * r1, "R@10": 3 * r1, "MRR@10": r1 / 2}
    result = {
        "t2i": {"sparse": metrics},
        "i2t": {"sparse": metrics},
        "sparsity": {"flops": 4.0, "text_nnz": 5.0, "image_nnz": 6.0},
    }
    return RunRecord("joint", "main", seed, Path(f"runs/joint-s{seed}"), result, {}, seconds, {})


def test_seed_rows_mean_and_std_over_seeds_and_totals():
    records = {"joint": [_record(1, 10.0, 60.0), _record(2, 12.0, 90.0)]}
    rows = seed_rows(records, {"joint": [{"img": 30.0}, {"img": 40.0}]})
    row = rows["joint"]
    assert row["group"] == "main" and row["seeds"] == [1, 2]
    assert row["t2i"]["sparse"]["R@1"]["mean"] == 11.0
    assert row["t2i"]["sparse"]["R@1"]["std"] == pytest.approx(np.sqrt(2.0))
    assert row["sparsity"]["flops"] == 4.0 and row["train_seconds"] == 75.0
    assert row["readability"] == {"img": 35.0}
    assert row["runs"] == ["runs/joint-s1", "runs/joint-s2"]
    footer = results_footer(records, [1.0, 2.0, 3.0], time.perf_counter())
    assert footer["train_seconds_all_runs"] == 150.0 and footer["n_runs"] == 2
    assert 0 <= footer["total_seconds"] < 5 and footer["machine"]["load_average"]["start"] == [
        1.0,
        2.0,
        3.0,
    ]
    assert mean_std(row["t2i"]["sparse"]["R@1"]) == "11.00 ± 1.41"
    assert mean_std({"mean": 3.0, "std": 0.0}) == "3.00"


def test_replace_marked_block(tmp_path):
    path = tmp_path / "r.md"
    replace_marked_block(path, "x", "<!-- x:begin -->\none\n<!-- x:end -->", "# Title")
    assert path.read_text() == "# Title\n\n<!-- x:begin -->\none\n<!-- x:end -->\n"
    path.write_text("head\n<!-- x:begin -->\nold\n<!-- x:end -->\ntail\n")
    replace_marked_block(path, "x", "<!-- x:begin -->\nnew\n<!-- x:end -->", "# Title")
    assert path.read_text() == "head\n<!-- x:begin -->\nnew\n<!-- x:end -->\ntail\n"
