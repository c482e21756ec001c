from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mmsparse.config import RunConfig, apply_overrides
from mmsparse.errors import ConfigError, DataError
from mmsparse.model import SparseDenseModel
from mmsparse.train import Trainer, lr_factor, set_trainable, train
from tests.helpers import TINY_OVERRIDES, WHAT_TRAINS, write_train_config


def _cfg(*extra):
    return apply_overrides(RunConfig(name="t"), [*TINY_OVERRIDES, *extra])


def _weights(path):
    return SparseDenseModel.from_pretrained(path / "best").state_dict()


def test_lr_schedule_warmup_then_linear_decay():
    f = [lr_factor(s, 10, 0.2) for s in range(10)]
    assert f[:2] == [0.5, 1.0]
    assert f[2:] == pytest.approx([1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
    assert lr_factor(0, 10, 0.0) == 1.0


@pytest.mark.parametrize("method,dense,sparse,tau", WHAT_TRAINS)
def test_what_trains_per_method(method, dense, sparse, tau):
    m = SparseDenseModel(d_img=4, d_txt=3, dense_dim=2, d_word=2, vocab_size=5)
    set_trainable(m, method)
    assert all(p.requires_grad == dense for p in m.dense_parameters())
    assert all(p.requires_grad == sparse for p in m.sparse_head.parameters())
    assert m.tau.requires_grad == tau


def test_end_to_end_run_directory(tmp_path, tiny_store):
    res = train(_cfg("train.plot=true"), tmp_path / "run", store=tiny_store)
    run = tmp_path / "run"
    for name in (
        "config.json",
        "metrics.jsonl",
        "final.json",
        "curves.png",
        "best/model.json",
        "best/model.safetensors",
        "best/vocab.txt",
        "best/selection.json",
        "checkpoints/latest.json",
    ):
        assert (run / name).is_file(), name
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if r["type"] == "train"]
    assert [r["epoch"] for r in train_recs] == [1, 2, 3]
    for key in (
        "loss",
        "contrastive",
        "distill",
        "reg",
        "l1_txt",
        "l1_img",
        "total",
        "lr",
        "tau",
        "nce_dense",
        "nce_sparse",
        "kd_dense",
        "kd_sparse",
    ):
        assert key in train_recs[0], key
    assert len([r for r in records if r["type"] == "val"]) == 3
    assert 1 <= res.best_epoch <= 3 and res.select_metric == "t2i/sparse/R@1"
    assert res.val["t2i"]["sparse"]["R@1"] == res.best_metric
    # training learned something: far better than chance (1 of 40 images)
    assert res.val["t2i"]["dense"]["R@10"] > 50


def test_temperature_is_clamped_during_training(tmp_path, tiny_store):
    train(
        _cfg("model.tau_max=0.06", "model.tau_init=0.06", "train.lr=0.5", "train.epochs=1"),
        tmp_path / "r",
        store=tiny_store,
    )
    tau = float(SparseDenseModel.from_pretrained(tmp_path / "r" / "best").tau.detach())
    assert 0.001 <= tau <= 0.06


def test_existing_run_is_not_overwritten(tmp_path, tiny_store):
    train(_cfg("train.epochs=1"), tmp_path / "r", store=tiny_store)
    before = (tmp_path / "r" / "best" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_cfg("train.epochs=1"), tmp_path / "r", store=tiny_store)
    with pytest.raises(ConfigError, match=r"different config \(keys train.lr\)"):
        train(
            _cfg("train.epochs=1", "train.lr=1e-2"), tmp_path / "r", store=tiny_store, resume=True
        )
    assert (tmp_path / "r" / "best" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("resume", [False, True])
def test_failed_start_does_not_block_the_corrected_command(tmp_path, tiny_release, resume):
    """A start that fails in set-up leaves only config.json: the fix is not refused."""
    run = tmp_path / "r"
    bundle = f"data.bundle={tiny_release / 'bundle'}"
    bad = _cfg("train.epochs=1", f"data.path={tmp_path / 'no-such-data'}", bundle)
    with pytest.raises(DataError, match="dataset directory not found"):
        train(bad, run)
    assert [p.name for p in run.iterdir()] == ["config.json"]
    good = _cfg("train.epochs=1", f"data.path={tiny_release}", bundle)
    result = train(good, run, resume=resume)
    assert result.epochs_run == 1 and (run / "best" / "model.safetensors").is_file()
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["path"] == str(tiny_release)
    # real progress stays protected, as before
    with pytest.raises(ConfigError, match="already holds a run"):
        train(bad, run)


def test_progress_bar_inside_the_epoch_named_like_the_log(tmp_path, tiny_store, capsys):
    train(_cfg("train.progress=true", "train.epochs=2"), tmp_path / "r", store=tiny_store)
    err = capsys.readouterr().err
    assert "epoch 1:" in err and "step" in err  # a bar over the steps of each epoch
    assert "total=" in err and "loss=" not in err  # "total" as in metrics.jsonl
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    train_rec = [r for r in records if r["type"] == "train"][-1]
    assert f"total={train_rec['total']:.3f}" in err


@pytest.mark.parametrize("method", ["dense", "joint"])
def test_feature_sizes_are_checked_against_the_bundle(tmp_path, tiny_store, method):
    """Stage 0 (dense) refuses features of another backbone, as the sparse runs do."""
    import dataclasses

    from mmsparse.data import write_release

    write_release(tiny_store, tmp_path / "data", "synth")
    extraction = {"backend": "other", "d_img": 30, "d_txt": 16}
    dataclasses.replace(tiny_store.bundle, extraction=extraction).save(tmp_path / "bundle")
    cfg = _cfg(
        f"objective.method={method}",
        f"data.path={tmp_path / 'data'}",
        f"data.bundle={tmp_path / 'bundle'}",
    )
    with pytest.raises(DataError, match=r"makes image features of size 30 but the data has 24"):
        train(cfg, tmp_path / "r")


class _Killed(Exception):
    pass


@pytest.mark.parametrize("kill_after", [5, 11])  # mid-epoch 2, and right after an epoch's steps
def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_store, monkeypatch, kill_after):
    cfg = _cfg("train.epochs=4", "objective.expansion_control=true", "objective.expansion_p0=0.5")
    ref = train(cfg, tmp_path / "ref", store=tiny_store)

    calls = {"n": 0}
    original = Trainer.train_step

    def dying_step(self, rows, gen):
        calls["n"] += 1
        if calls["n"] > kill_after:
            raise _Killed
        return original(self, rows, gen)

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    with pytest.raises(_Killed):
        train(cfg, tmp_path / "run", store=tiny_store)
    monkeypatch.setattr(Trainer, "train_step", original)
    res = train(cfg, tmp_path / "run", store=tiny_store, resume=True)
    assert _untimed(res.val) == _untimed(ref.val) and res.best_epoch == ref.best_epoch
    for (k, a), (_, b) in zip(
        _weights(tmp_path / "ref").items(), _weights(tmp_path / "run").items()
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    log = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ref_log = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    assert [_untimed(json.loads(x)) for x in log] == [_untimed(json.loads(x)) for x in ref_log]


def _untimed(record):
    """A result or log record without its wall-clock timings."""
    return {k: v for k, v in record.items() if k not in ("seconds", "rank_seconds")}


def test_sigkill_then_resume_from_the_command_line(tmp_path, tiny_release):
    cfg = write_train_config(tmp_path / "cfg.json", tiny_release, epochs=6)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mmsparse", "train", "--config", str(cfg), "--json"]
    subprocess.run([*cmd, "--out", str(tmp_path / "ref")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(
        [*cmd, "--out", str(tmp_path / "run")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pointer = tmp_path / "run" / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        pointer.exists() and json.loads(pointer.read_text())["epoch"] >= 2
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    final = tmp_path / "run" / "final.json"
    assert not final.exists(), "the run finished before it could be killed"
    out = subprocess.run(
        [*cmd[:4], "--out", str(tmp_path / "run"), "--resume", "--json"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    resumed = json.loads(out.stdout)
    ref = json.loads((tmp_path / "ref" / "final.json").read_text())
    assert _untimed(resumed["val"]) == _untimed(ref["val"])
    assert resumed["best_epoch"] == ref["best_epoch"]


@pytest.mark.parametrize("method", ["d2s", "no_distill", "frozen_dense", "dense"])
def test_every_method_trains(tmp_path, tiny_store, method):
    res = train(
        _cfg(f"objective.method={method}", "train.epochs=2"), tmp_path / method, store=tiny_store
    )
    assert res.epochs_run == 2
    if method in ("d2s", "frozen_dense"):
        init = SparseDenseModel(
            d_img=24, d_txt=16, dense_dim=16, d_word=16, vocab_size=len(tiny_store.bundle.vocab)
        )
        init.init_weights(42, word_embeddings=tiny_store.bundle.word_embeddings)
        trained = SparseDenseModel.from_pretrained(tmp_path / method / "best")
        torch.testing.assert_close(trained.text_proj.weight, init.text_proj.weight)


def test_early_stopping(tmp_path, tiny_store):
    res = train(
        _cfg("train.epochs=30", "train.patience=1", "train.lr=1e-6"),
        tmp_path / "r",
        store=tiny_store,
    )
    assert res.stopped_early and res.epochs_run < 30


def test_init_from_a_run_with_another_vocabulary(tmp_path, tiny_store):
    train(
        _cfg("train.epochs=1", "objective.method=dense", "data.bundle=null"),
        tmp_path / "a",
        store=_without_bundle(tiny_store),
    )
    from mmsparse.errors import CheckpointError

    with pytest.raises(CheckpointError, match="vocabulary of 30522 terms but the data's is"):
        train(
            _cfg("train.epochs=1", f"model.init_from={tmp_path / 'a'}"),
            tmp_path / "b",
            store=tiny_store,
        )


def _without_bundle(store):
    import dataclasses

    return dataclasses.replace(store, bundle=None)


def test_learning_rate_scales_of_the_dense_and_sparse_heads(tmp_path, tiny_store):
    init = SparseDenseModel(
        d_img=24, d_txt=16, dense_dim=16, d_word=16, vocab_size=len(tiny_store.bundle.vocab)
    )
    init.init_weights(42, word_embeddings=tiny_store.bundle.word_embeddings)
    train(_cfg("train.epochs=1", "train.dense_lr_scale=0"), tmp_path / "frozen", store=tiny_store)
    frozen = SparseDenseModel.from_pretrained(tmp_path / "frozen" / "best")
    # rate 0: the dense heads stay where they started (weight decay scales with the rate too)
    torch.testing.assert_close(frozen.vision_proj.weight, init.vision_proj.weight)
    assert not torch.equal(frozen.sparse_head.U.weight, init.sparse_head.U.weight)
    assert not torch.equal(frozen.tau, init.tau)

    trainer = Trainer(
        _cfg("train.dense_lr_scale=0.5", "train.sparse_lr_scale=2"), tiny_store, tmp_path / "g"
    )
    scales = {id(p): g["lr_scale"] for g in trainer.optimizer.param_groups for p in g["params"]}
    model = trainer.model
    assert {scales[id(p)] for p in model.dense_parameters()} == {0.5}
    assert {scales[id(p)] for p in model.sparse_head.parameters()} == {2.0}
    assert scales[id(model.tau)] == 1.0
    assert len(trainer.optimizer.param_groups) == 3  # tau in the rest: older optimizers load

    cfg = _cfg("train.epochs=1", "train.dense_lr_scale=0", "train.tau_lr_scale=0")
    train(cfg, tmp_path / "tau", store=tiny_store)
    kept = SparseDenseModel.from_pretrained(tmp_path / "tau" / "best")
    torch.testing.assert_close(kept.tau, init.tau)  # rate 0: the temperature is kept
    torch.testing.assert_close(kept.vision_proj.weight, init.vision_proj.weight)
    assert not torch.equal(kept.sparse_head.U.weight, init.sparse_head.U.weight)


def test_a_sparse_head_on_features_trains_from_a_stage0_start(tmp_path, tiny_store):
    train(_cfg("train.epochs=1", "objective.method=dense"), tmp_path / "s0", store=tiny_store)
    res = train(
        _cfg("train.epochs=1", "model.sparse_input=features", f"model.init_from={tmp_path / 's0'}"),
        tmp_path / "f",
        store=tiny_store,
    )
    assert res.epochs_run == 1
    m = SparseDenseModel.from_pretrained(tmp_path / "f" / "best")
    assert m.sparse_input == "features" and m.sparse_head.U_img.in_features == 24
    with pytest.raises(ConfigError, match="needs model.sparse_input=dense"):
        train(
            _cfg("model.sparse_input=features", "model.sparse_init=token-lstsq"),
            tmp_path / "x",
            store=tiny_store,
        )


def test_dense_compose_starts_the_feature_maps_on_the_dense_space(tmp_path, tiny_store):
    from mmsparse.runs import build_model

    train(_cfg("train.epochs=1", "objective.method=dense"), tmp_path / "s0", store=tiny_store)
    start = ("model.sparse_input=features", f"model.init_from={tmp_path / 's0'}")

    def residual(model):
        """How far U_img h + c_img is from an affine map of the dense head's W h + b."""
        model = model.double()
        h = torch.randn(60, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        pre = model.vision_proj(h).detach()  # (60, 16)
        X = torch.cat([pre, torch.ones(60, 1, dtype=torch.float64)], dim=1)
        u = model.sparse_head.U_img(h).detach()  # (60, d_word)
        fit = X @ torch.linalg.lstsq(X, u).solution
        return float((u - fit).abs().max())

    composed = build_model(_cfg(*start, "model.sparse_init=dense-compose"), tiny_store)
    assert residual(composed) < 1e-6  # U_img h + c_img = R (W h + b) + c (float32 weights)
    assert residual(build_model(_cfg(*start), tiny_store)) > 1e-3  # a random map is not
    with pytest.raises(ConfigError, match="dense-compose .* needs model.sparse_input=features"):
        build_model(_cfg("model.sparse_init=dense-compose"), tiny_store)
