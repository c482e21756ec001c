"""The frontier benchmark end to end on tiny synthetic data in the Flickr8k format."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from mmsparse.bench.frontier import FrontierBench, recipe_options, run_frontier_bench
from mmsparse.bench.machine import MACHINE_KEYS
from mmsparse.config import RunConfig, apply_overrides
from mmsparse.errors import ConfigError, MMSparseError
from tests.helpers import tiny_bench_fields, write_bench_config


def test_recipe_options_group_the_differences():
    paper = RunConfig()
    recipe = apply_overrides(
        paper,
        ["objective.train_text_topk=5", "objective.w1=1.0", "model.vocab_restrict=train-captions"],
    )
    opts = recipe_options(paper, recipe)
    assert set(opts) == {"cap", "teacher", "vocab"}
    assert opts["teacher"] == {"objective.w1": (0.1, 1.0)}
    new = apply_overrides(paper, ["train.dense_lr_scale=0", "model.sparse_input=features"])
    assert recipe_options(paper, new) == {
        "dense-rate": {"train.dense_lr_scale": (1.0, 0.0)},
        "input": {"model.sparse_input": ("dense", "features")},
    }
    with pytest.raises(ConfigError, match="model.tau_init differs .* belongs to no option"):
        recipe_options(paper, apply_overrides(paper, ["model.tau_init=0.05"]))


def test_frontier_pipeline_on_tiny_data(tmp_path, tiny_release):
    paper = write_bench_config(tmp_path / "paper.json", {"q_reg": 1e-3, "d_reg": 1e-3})
    recipe = write_bench_config(
        tmp_path / "recipe.json",
        {"q_reg": 1e-3, "d_reg": 1e-3, "train_text_topk": 6},
        model={"dense_dim": 16, "vocab_restrict": "train-captions"},
    )
    spec = FrontierBench(
        **tiny_bench_fields(tmp_path, tiny_release),
        paper_config=str(paper),
        config=str(recipe),
        curves=("recipe",),
    )
    res = run_frontier_bench(
        spec,
        results_path=tmp_path / "f.json",
        doc_path=tmp_path / "f.md",
        plot_path=tmp_path / "f.png",
    )
    rows = res["rows"]
    assert tuple(res["machine"]) == MACHINE_KEYS
    assert rows["joint"]["seeds"] == [1, 2] and rows["d2s"]["seeds"] == [1, 2]
    assert rows["joint"]["sparsity"]["text_nnz"] <= 8
    assert "readability" in rows["joint"]
    assert {a["option"] for a in res["ablation"]} == {"vocab", "cap"}
    for option in ("vocab", "cap"):
        assert f"joint-minus-{option}" in rows and f"paper-plus-{option}" in rows
    assert len(res["curves"]["recipe-joint"]) == 2 and "paper-joint" not in res["curves"]
    sig = res["significance"]
    assert sig["joint sparse - D2S sparse"]["R@1"]["n"] == 2 * 120
    assert sig["recipe joint sparse - paper joint sparse"]["seeds"] == [1]
    doc = (tmp_path / "f.md").read_text()
    assert "<!-- frontier:begin -->" in doc and "| joint | sparse | 2 |" in doc
    assert "joint sparse - D2S sparse" in doc
    assert (tmp_path / "f.png").stat().st_size > 1000
    again = run_frontier_bench(dataclasses.replace(spec, paper=False, ablation=False))  # reused
    assert again["rows"]["joint"]["t2i"] == rows["joint"]["t2i"]
    assert "paper-joint" not in again["rows"]  # --no-paper
    assert "recipe joint sparse - paper joint sparse" not in again["significance"]


def _small_spec(tmp_path, tiny_release, out: str, jobs: int) -> FrontierBench:
    cfg = write_bench_config(tmp_path / "recipe.json", {"q_reg": 1e-3, "d_reg": 1e-3})
    return FrontierBench(
        **tiny_bench_fields(tmp_path, tiny_release, out),
        paper_config=str(cfg),
        config=str(cfg),
        ablation=False,
        paper=False,
        curves=("recipe",),
        jobs=jobs,
    )


def test_parallel_training_gives_the_same_results(tmp_path, tiny_release):
    serial = run_frontier_bench(_small_spec(tmp_path, tiny_release, "serial", 1))
    parallel = run_frontier_bench(_small_spec(tmp_path, tiny_release, "parallel", 2))
    assert (
        set(parallel["rows"])
        == set(serial["rows"])
        == {
            "dense-backbone",
            "d2s",
            "joint",
            "d2s-reg0.5",
            "joint-reg0.5",
        }
    )
    for name, row in serial["rows"].items():
        assert parallel["rows"][name]["t2i"] == row["t2i"], name
    for curve, points in serial["curves"].items():
        for a, b in zip(points, parallel["curves"][curve], strict=True):
            assert {k: v for k, v in a.items() if k != "train_seconds"} == {
                k: v for k, v in b.items() if k != "train_seconds"
            }
    assert (tmp_path / "parallel" / "joint-reg0.5-s1" / "final.json").is_file()


def test_parallel_training_names_the_failed_runs(tmp_path, tiny_release):
    spec = dataclasses.replace(
        _small_spec(tmp_path, tiny_release, "runs", 2), data=str(tmp_path / "missing")
    )
    with pytest.raises(
        MMSparseError,
        match=r"2 run\(s\) of .*runs failed: dense-backbone-s1: DataError: .*missing: dataset "
        r"directory not found; dense-backbone-s2: ",
    ):
        run_frontier_bench(spec)
    assert not (tmp_path / "runs" / "d2s-s1").exists()  # nothing starts from a failed stage 0


def test_a_run_with_another_config_is_refused_before_anything_trains(tmp_path, tiny_release):
    spec = _small_spec(tmp_path, tiny_release, "runs", 2)
    run_frontier_bench(dataclasses.replace(spec, curves=(), seeds=(1,)))
    changed = dataclasses.replace(spec, seeds=(1,), overrides=("objective.q_reg=0.01",))
    with pytest.raises(
        ConfigError,
        match=r"2 run\(s\) hold another config .*: d2s-s1 \(keys objective.q_reg\); joint-s1 ",
    ):
        run_frontier_bench(changed)
    assert not (tmp_path / "runs" / "d2s-reg0.5-s1").exists()  # nothing was trained
    # a start that never checkpointed is begun afresh by training: not refused
    for name in ("d2s-s1", "joint-s1"):
        for f in (tmp_path / "runs" / name).iterdir():
            if f.name != "config.json":
                if f.is_dir():
                    shutil.rmtree(f)
                else:
                    f.unlink()
    assert run_frontier_bench(changed)["rows"]["d2s"]["seeds"] == [1]
