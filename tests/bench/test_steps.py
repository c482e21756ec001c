"""bench steps: variants of one config timed in alternating rounds."""

from __future__ import annotations

import json

import pytest

from mmsparse.bench.machine import MACHINE_KEYS
from mmsparse.bench.steps import compare_steps, format_steps, parse_variant
from mmsparse.errors import ConfigError


def test_parse_variant():
    assert parse_variant("full=") == ("full", [])
    assert parse_variant("r=model.vocab_restrict=train-captions,train.amp=off") == (
        "r",
        ["model.vocab_restrict=train-captions", "train.amp=off"],
    )
    with pytest.raises(ConfigError, match="expected NAME=key=value"):
        parse_variant("model.vocab_restrict")


def test_compare_steps_on_tiny_data(tmp_path, tiny_release):
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps(
            {
                "data": {"path": str(tiny_release), "bundle": str(tiny_release / "bundle")},
                "model": {"dense_dim": 16},
                "train": {"batch_size": 32, "device": "cpu"},
            }
        )
    )
    report = compare_steps(
        cfg,
        [("full", []), ("restricted", ["model.vocab_restrict=train-captions"])],
        steps=2,
        rounds=2,
        warmup=1,
    )
    full, small = report["variants"]["full"], report["variants"]["restricted"]
    assert full["speedup"] == 1.0 and full["sparse_terms"] == 122
    assert 0 < small["sparse_terms"] < 122 and small["ms_per_step"] > 0
    assert "restricted" in format_steps(report)
    assert tuple(report["machine"]) == MACHINE_KEYS
    with pytest.raises(ConfigError, match="at least one --variant"):
        compare_steps(cfg, [])
