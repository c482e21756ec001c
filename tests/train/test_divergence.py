"""A diverged run (non-finite loss) stops with a one-line error and saves nothing poisoned."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mmsparse.config import RunConfig, apply_overrides
from mmsparse.errors import NonFiniteError
from mmsparse.train import StepTerms, Trainer, train
from tests.helpers import TINY_OVERRIDES


def _strict_records(path):
    def refuse(name):
        raise AssertionError(f"{path} holds {name} (not JSON)")

    return [json.loads(x, parse_constant=refuse) for x in path.read_text().splitlines()]


def test_a_huge_learning_rate_stops_training_with_the_step_and_the_cause(tmp_path, tiny_store):
    cfg = apply_overrides(RunConfig(), [*TINY_OVERRIDES, "train.lr=1e4", "train.log_every=1"])
    run = tmp_path / "r"
    with pytest.raises(NonFiniteError) as err:
        train(cfg, run, store=tiny_store)
    message = str(err.value)
    assert "\n" not in message
    assert "step 9 (epoch 1)" in message and "train.lr=10000" in message
    # nothing of the diverged epoch is kept as a model, a checkpoint or a summary
    assert not (run / "best").exists() and not (run / "final.json").exists()
    assert not (run / "checkpoints" / "latest.json").exists()
    records = _strict_records(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))  # the finite steps only
    assert all(r["type"] == "step" for r in records)


def test_divergence_after_a_finite_epoch_keeps_that_epoch(tmp_path, tiny_store, monkeypatch):
    original = Trainer.train_step

    def poisoned(self, rows, gen):
        terms = original(self, rows, gen)
        if self.state.global_step >= 20:  # epoch 2 of 15-step epochs
            return StepTerms(terms.names, terms.vector * float("nan"))
        return terms

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    run = tmp_path / "r"
    with pytest.raises(NonFiniteError, match=r"step 20 \(epoch 2\).*epoch 1 is kept"):
        train(apply_overrides(RunConfig(), TINY_OVERRIDES), run, store=tiny_store)
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["epoch"] == 1
    assert json.loads((run / "best" / "selection.json").read_text())["epoch"] == 1
    assert not (run / "final.json").exists()
    records = _strict_records(run / "metrics.jsonl")
    assert [(r["type"], r["epoch"]) for r in records] == [("train", 1), ("val", 1)]
    # the kept checkpoint resumes (here it diverges again, at the same step)
    with pytest.raises(NonFiniteError, match="step 20"):
        train(apply_overrides(RunConfig(), TINY_OVERRIDES), run, store=tiny_store, resume=True)


def test_the_step_loop_does_not_read_the_device_for_the_check(tmp_path, tiny_store, monkeypatch):
    """The finiteness check stays on the device until the epoch ends (one read per epoch)."""
    cfg = apply_overrides(RunConfig(), [*TINY_OVERRIDES, "train.epochs=1"])
    trainer = Trainer(cfg, tiny_store, tmp_path / "r", callbacks=[])
    reads = {"n": 0}
    original = torch.Tensor.tolist

    def counting(self):
        reads["n"] += 1
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda self: pytest.fail("bool() in the loop"))
    trainer._train_epoch(1)
    assert reads["n"] <= 2


def test_the_command_exits_non_zero_with_one_line(tmp_path, tiny_release):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "data": {"path": str(tiny_release), "bundle": str(tiny_release / "bundle")},
                "model": {"dense_dim": 16},
                "train": {"epochs": 2, "batch_size": 32, "lr": 1e4, "progress": False},
            }
        )
    )
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "mmsparse", "train", "--config", str(cfg), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mmsparse: error: ") and "train.lr" in last
    assert "R@1" not in proc.stdout and not (out / "best").exists()
