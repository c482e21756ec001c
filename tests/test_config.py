from __future__ import annotations

import json

import pytest

from mmsparse.config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
)
from mmsparse.errors import ConfigError
from tests.helpers import REPO


def test_defaults_round_trip(tmp_path):
    cfg = RunConfig()
    save_config(cfg, tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == cfg


def test_unknown_key_names_the_key(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"train": {"lrr": 1e-4}}))
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr'") as exc:
        load_config(path)
    assert str(path) in str(exc.value)


def test_unknown_group_is_an_error():
    with pytest.raises(ConfigError, match="unknown config key 'trainer'"):
        config_from_dict({"trainer": {}})


def test_type_errors_name_the_key():
    with pytest.raises(ConfigError, match="train.epochs"):
        config_from_dict({"train": {"epochs": "many"}})
    with pytest.raises(ConfigError, match="objective.distill_teacher"):
        config_from_dict({"objective": {"distill_teacher": "bogus"}})
    with pytest.raises(ConfigError, match="train.batch_size"):
        config_from_dict({"train": {"batch_size": 1}})
    with pytest.raises(ConfigError, match="objective.contrastive_weight must be non-negative"):
        config_from_dict({"objective": {"contrastive_weight": -1}})
    with pytest.raises(ConfigError, match="train.tau_lr_scale must be non-negative"):
        config_from_dict({"train": {"tau_lr_scale": -0.5}})


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "Infinity", "-Infinity", "NaN", "1e400"])
@pytest.mark.parametrize(
    "key", ["objective.w1", "train.lr", "eval.threshold", "objective.lexical_weight"]
)
def test_every_float_key_refuses_non_finite_values(key, text):
    """One rule: an override, a JSON file (NaN, Infinity) and YAML (.inf) alike."""
    with pytest.raises(ConfigError, match=rf"^override: '{key}' must be a finite number, got "):
        apply_overrides(RunConfig(), [f"{key}={text}"])


def test_non_finite_values_in_files_and_lists_name_the_key(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"objective": {"w2": Infinity}}')
    with pytest.raises(ConfigError, match=r"c\.json: 'objective\.w2' must be a finite number"):
        load_config(path)
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  weight_decay: .inf\n")
    with pytest.raises(ConfigError, match=r"'train\.weight_decay' must be a finite number"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'train\.betas' must be a finite number, got nan"):
        config_from_dict({"train": {"betas": [0.9, float("nan")]}})
    with pytest.raises(ConfigError, match=r"'objective\.w1' must be a finite number"):
        config_from_dict({"objective": {"w1": 10**400}})


def test_integer_keys_must_fit_in_64_bits():
    # train.seed=2**64 used to pass validation and crash in torch.Generator.manual_seed.
    with pytest.raises(ConfigError, match=r"'train\.seed' must be an integer within \+-2\^63"):
        apply_overrides(RunConfig(), ["train.seed=18446744073709551616"])
    assert apply_overrides(RunConfig(), [f"train.seed={2**63 - 1}"]).train.seed == 2**63 - 1


def test_overrides_parse_values():
    cfg = apply_overrides(
        RunConfig(),
        [
            "train.lr=1e-4",
            "objective.expansion_control=true",
            "data.bundle=null",
            "train.betas=[0.8, 0.9]",
            "name=abc",
            "train.epochs=5.0",
        ],
    )
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.objective.expansion_control is True
    assert cfg.data.bundle is None
    assert cfg.train.betas == (0.8, 0.9)
    assert cfg.name == "abc"
    assert cfg.train.epochs == 5
    with pytest.raises(ConfigError, match="unknown config key 'model.vocab'"):
        apply_overrides(cfg, ["model.vocab=3"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(cfg, ["train.lr"])


def test_yaml_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("objective:\n  method: d2s\ntrain:\n  lr: 0.001\n")
    cfg = load_config(path)
    assert cfg.objective.method == "d2s" and cfg.train.lr == pytest.approx(1e-3)


def test_unparsable_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")


PUBLISHED = {
    "blip-coco": (5e-5, 0.1, 0.1, 0.9, 0.3, 5e-4, 3e-5),
    "albef-coco": (5e-5, 0.2, 0.5, 0.9, 0.3, 1e-5, 3e-5),
    "blip-flickr": (1e-5, 0.1, 0.2, 0.7, 0.7, 1e-4, 2e-5),
    "albef-flickr": (1e-5, 0.1, 0.2, 0.3, 0.3, 1e-4, 2e-5),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_configs(name):
    cfg = load_config(REPO / "configs" / f"{name}.json")
    lr, w1, w2, lam1, lam2, q_reg, d_reg = PUBLISHED[name]
    o, t = cfg.objective, cfg.train
    assert (t.lr, o.w1, o.w2, o.lam1, o.lam2, o.q_reg, o.d_reg) == (
        lr,
        w1,
        w2,
        lam1,
        lam2,
        q_reg,
        d_reg,
    )
    assert (t.epochs, t.batch_size, t.patience, t.seed, t.weight_decay, t.grad_clip) == (
        200,
        256,
        20,
        42,
        0.05,
        1.0,
    )
    assert t.betas == (0.9, 0.999) and t.eps == 1e-8 and t.warmup_frac == 0.2
    assert o.reg_warmup_frac == 0.2 and o.method == "joint"
    assert cfg.model.tau_init == 0.07 and (cfg.model.tau_min, cfg.model.tau_max) == (0.001, 0.5)
    assert cfg.data.train_splits == ("train", "restval")


def test_every_shipped_config_loads():
    for path in sorted((REPO / "configs").glob("*.json")):
        load_config(path)


def test_flickr8k_config_readme_and_evaluate_agree_on_pruning():
    """The README's Flickr8k numbers are at 64 terms per caption and 256 per image."""
    from mmsparse.config import load_config
    from tests.helpers import REPO

    cfg = load_config(REPO / "configs" / "flickr8k.json")
    assert (cfg.eval.text_topk, cfg.eval.image_topk) == (64, 256)
    readme = (REPO / "README.md").read_text()
    assert "at 64 terms per caption and 256 per image" in readme
    assert "`text_topk: 64`" in readme and "`image_topk: 256`" in readme


def test_bench_help_points_at_an_existing_benchmarks_doc(capsys):
    from mmsparse.cli.main import main
    from tests.helpers import REPO

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "docs/benchmarks.md" in capsys.readouterr().out
    doc = (REPO / "docs" / "benchmarks.md").read_text()
    for name in ("bench flickr8k", "bench train", "bench retrieval", "bench serve", "--threads"):
        assert name in doc


def test_fuzz_findings_are_one_line_config_errors(tmp_path):
    """What tests/test_fuzz.py found: each was a traceback or a multi-line message."""
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.\\n'") as exc:
        config_from_dict({"train": {"\n": 1}})
    assert "\n" not in str(exc.value)
    path = tmp_path / "c.yaml"
    path.write_text("\x1f")
    with pytest.raises(ConfigError, match="cannot parse config file: unacceptable") as exc:
        load_config(path)
    assert "\n" not in str(exc.value)
    path = tmp_path / "c.json"
    for text, override in [("1", "train.lr=1"), ('{"train": 5}', "train.lr=1"), ("[1]", "=")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match="mapping at the top level|'train' is not a group"):
            load_config(path, [override])
    path = tmp_path / "d.yaml"
    path.write_text("train:\n  device: 2024-01-01\n")  # a date: no JSON round trip
    with pytest.raises(ConfigError, match=r"'train\.device' must be a string"):
        load_config(path, ["train.lr=1e-3"])
    path.write_text('name: "\\uD800"\n')  # a lone surrogate: cannot be saved as UTF-8
    with pytest.raises(ConfigError, match="'name' is not valid Unicode text"):
        load_config(path)
