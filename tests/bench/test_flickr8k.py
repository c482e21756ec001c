"""The Flickr8k benchmark pipeline end to end on tiny synthetic data in the same format."""

from __future__ import annotations

import json

from mmsparse.bench.flickr8k import Flickr8kBench, run_flickr8k_bench
from mmsparse.bench.machine import MACHINE_KEYS
from tests.helpers import tiny_bench_fields, write_bench_config


def test_bench_pipeline_on_tiny_data(tmp_path, tiny_release):
    # an eval block as configs/flickr8k.json has: the runs still select on unpruned vectors
    joint = write_bench_config(
        tmp_path / "j.json",
        {"q_reg": 1e-3, "d_reg": 1e-3},
        eval={"text_topk": 4, "image_topk": 4},
    )
    spec = Flickr8kBench(**tiny_bench_fields(tmp_path, tiny_release), config=str(joint))
    res = run_flickr8k_bench(
        spec,
        results_path=tmp_path / "r.json",
        doc_path=tmp_path / "r.md",
        plot_path=tmp_path / "c.png",
    )
    rows = res["rows"]
    assert tuple(res["machine"]) == MACHINE_KEYS
    assert {
        "dense-backbone",
        "d2s",
        "joint",
        "joint-teacher-official",
        "joint-teacher-joint",
        "no-distill",
        "frozen-final-layer",
        "joint-expansion-on",
        "d2s-reg0.5",
        "joint-reg0.5",
    } == set(rows)
    assert rows["joint"]["seeds"] == [1, 2]
    saved = json.loads((tmp_path / "runs" / "joint-s1" / "config.json").read_text())
    assert (saved["eval"]["text_topk"], saved["eval"]["image_topk"]) == (None, None)
    assert rows["joint"]["sparsity"]["text_nnz"] <= 8
    assert rows["joint"]["sparsity"]["image_nnz"] <= 16
    assert 0 < res["significance"]["t2i_R@1"]["p_value"] <= 1
    assert res["significance"]["t2i_R@1"]["n"] == 2 * 120
    assert len(res["tradeoff"]["joint"]) == 2
    assert json.loads((tmp_path / "r.json").read_text())["rows"].keys() == rows.keys()
    doc = (tmp_path / "r.md").read_text()
    assert "<!-- bench:begin -->" in doc and "| joint | sparse | 2 |" in doc
    assert (tmp_path / "c.png").stat().st_size > 1000
    # a second call reuses every finished run and gives the same table
    again = run_flickr8k_bench(spec)
    assert again["rows"]["joint"]["t2i"] == rows["joint"]["t2i"]
