"""``mmsparse bench train``: the report's arithmetic, the file of runs, the command line."""

from __future__ import annotations

import json

import pytest
import torch

from mmsparse.bench.machine import MACHINE_KEYS
from mmsparse.bench.train import (
    Scale,
    bench_train,
    format_report,
    synthetic_store,
    write_report,
)
from mmsparse.cli.main import main
from mmsparse.errors import ConfigError, DataError

MINI = Scale(
    "mini",
    n_train=300,
    n_test=30,
    captions_per_image=2,
    d_in=16,
    dense_dim=8,
    d_word=16,
    vocab_size=64,
    batch_size=40,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_synthetic_store_has_the_dataset_sizes():
    store = synthetic_store(MINI, seed=1)
    assert store.split("train").n_images == 300 and store.split("train").n_captions == 600
    assert store.split("val").n_images == store.split("test").n_images == 30
    assert store.image_feats.shape == (360, 16) and store.caption_feats.dtype == "float32"
    again = synthetic_store(MINI, seed=1)
    assert (again.caption_feats == store.caption_feats).all()


def test_report_numbers_are_consistent():
    report = bench_train(
        MINI, device="cpu", steps=6, warmup=2, reference=True, reference_workers=0, eval_repeats=1
    )
    assert report["steps_per_epoch"] == 600 // 40
    median = report["step_ms"]["median"]
    assert 0 < report["step_ms"]["p10"] <= median <= report["step_ms"]["p90"]
    assert report["epoch_seconds"] == pytest.approx(15 * median / 1000, rel=1e-3, abs=1e-3)
    assert report["projected_200_epochs_seconds"] == pytest.approx(
        200 * report["epoch_seconds"], rel=1e-3, abs=0.2
    )
    ev = report["eval"]
    assert (ev["n_images"], ev["n_captions"]) == (30, 60)
    assert ev["total_seconds"] >= ev["encode_seconds"]
    assert report["device"]["type"] == "cpu" and tuple(report["machine"]) == MACHINE_KEYS
    assert report["machine"]["torch"] == torch.__version__
    assert report["machine"]["threads"] == 1
    assert report["settings"]["fused_adamw"] is True
    assert report["reference"]["steps_timed"] == 6
    assert report["speedup_vs_reference"] == pytest.approx(
        report["reference"]["step_ms"]["median"] / median, rel=0.01
    )
    assert all(v == v for v in report["mean_terms"].values())  # finite, no NaN
    # The published-style evaluation (per-query sorting into dicts) finds the same R@1.
    assert report["eval_reference"]["t2i_sparse_R@1"] == pytest.approx(ev["t2i_sparse_R@1"])
    table = format_report(report)
    assert report["device"]["name"] in table and "speed-up" in table


def test_unknown_scale_and_bad_counts():
    with pytest.raises(ConfigError, match="unknown scale"):
        bench_train("imagenet")
    with pytest.raises(ConfigError, match="--steps"):
        bench_train(MINI, steps=0)


def test_report_file_replaces_the_same_setting(tmp_path):
    path = tmp_path / "b" / "train_speed.json"
    base = {
        "scale": "tiny",
        "device": {"name": "cpu x"},
        "settings": {"compile": "off", "amp_dtype": "float32", "fused_adamw": True},
    }
    write_report({**base, "n": 1}, path)
    write_report({**base, "n": 2}, path)
    write_report({**base, "settings": {**base["settings"], "compile": "default"}, "n": 3}, path)
    runs = json.loads(path.read_text())["runs"]
    assert [r["n"] for r in runs] == [2, 3]
    data = json.loads(path.read_text())
    data["pending"] = [{"command": "mmsparse bench train --x"}, {"command": "other"}]
    path.write_text(json.dumps(data))
    write_report({**base, "n": 4, "command": "mmsparse bench train --x"}, path)
    data = json.loads(path.read_text())
    assert [r["n"] for r in data["runs"]] == [3, 4] and data["pending"] == [{"command": "other"}]
    path.write_text("{not json")
    with pytest.raises(DataError, match="not a train-speed report"):
        write_report(base, path)


def test_command_line_prints_one_json_object(tmp_path, capsys):
    out = tmp_path / "train_speed.json"
    argv = ["bench", "train", "--scale", "tiny", "--device", "cpu", "--steps", "3"]
    argv += ["--warmup", "1", "--eval-repeats", "1", "--no-reference", "--threads", "1"]
    assert main([*argv, "--json", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scale"] == "tiny" and report["steps_timed"] == 3
    assert report["command"].startswith("mmsparse bench train --scale tiny --device cpu")
    assert json.loads(out.read_text())["runs"][0]["step_ms"] == report["step_ms"]
    assert main(argv) == 0
    assert "ms / step (median of 3)" in capsys.readouterr().out
