"""Data-parallel training on CPU (gloo, two processes) equals one process on the global batch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mmsparse.bench.local_server import free_port
from mmsparse.config import RunConfig, apply_overrides
from mmsparse.data import SyntheticSpec, make_synthetic
from mmsparse.errors import ConfigError
from mmsparse.train import Trainer, train
from mmsparse.train.distributed import DistContext, setup, teardown

SPEC = SyntheticSpec(
    n_train=120,
    n_val=20,
    n_test=20,
    captions_per_image=3,
    d_img=24,
    d_txt=16,
    d_latent=12,
    d_word=16,
    seed=5,
)
OVERRIDES = [
    "model.dense_dim=16",
    "train.lr=3e-3",
    "train.progress=false",
    "train.plot=false",
    "train.patience=0",
    "train.device=cpu",
    "objective.q_reg=1e-3",
    "objective.d_reg=1e-3",
    "objective.distill_teacher=official",
]
# The global-batch loss check: 256 pairs, 128 per process.
LOSS_CFG = [*OVERRIDES, "train.batch_size=256", "train.epochs=1"]
# Training check: 360 captions, global batch 64 -> 5 steps an epoch, with expansion control
# (its random draws must be the single process's draws too).
TRAIN_CFG = [
    *OVERRIDES,
    "train.batch_size=64",
    "train.epochs=2",
    "objective.expansion_control=true",
    "objective.expansion_p0=0.5",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(overrides):
    return apply_overrides(RunConfig(name="dist"), overrides)


def _loss_and_grads(trainer: Trainer):
    rows = trainer.train_captions[:256]
    total, terms = trainer.forward_terms(rows)
    trainer.optimizer.zero_grad(set_to_none=True)
    total.backward()
    trainer.dist.all_reduce_gradients(trainer.params)
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return total.detach(), terms, grads


class _Killed(Exception):
    pass


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    out_dir = Path(out)
    ctx, created = setup("cpu")
    try:
        store = make_synthetic(SPEC)
        trainer = Trainer(_cfg(LOSS_CFG), store, out_dir / f"scratch{rank}", dist_ctx=ctx)
        total, terms, grads = _loss_and_grads(trainer)
        torch.save({"total": total, "terms": terms, "grads": grads}, out_dir / f"loss{rank}.pt")
        # Killed in epoch 2 on both ranks, then resumed: must end like one uninterrupted process.
        calls, original = {"n": 0}, Trainer.train_step

        def dying_step(self, rows, gen):
            calls["n"] += 1
            if calls["n"] > 7:
                raise _Killed
            return original(self, rows, gen)

        Trainer.train_step = dying_step
        try:
            train(_cfg(TRAIN_CFG), out_dir / "run", store=store)  # uses the group
        except _Killed:
            (out_dir / f"killed{rank}").touch()
        finally:
            Trainer.train_step = original
        result = train(_cfg(TRAIN_CFG), out_dir / "run", store=store, resume=True)
        torch.save({"best_epoch": result.best_epoch}, out_dir / f"result{rank}.pt")
        try:  # an error on rank 0 reaches every rank instead of leaving them waiting
            train(_cfg(TRAIN_CFG), out_dir / "run", store=store)
        except ConfigError as exc:
            (out_dir / f"error{rank}.txt").write_text(str(exc))
    finally:
        teardown(created)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out


def test_global_batch_loss_and_gradients_equal_one_process(two_process_run, tmp_path):
    single = Trainer(_cfg(LOSS_CFG), make_synthetic(SPEC), tmp_path)
    assert not single.dist.enabled
    total, terms, grads = _loss_and_grads(single)
    for rank in (0, 1):
        got = torch.load(two_process_run / f"loss{rank}.pt")
        torch.testing.assert_close(got["total"], total, rtol=1e-5, atol=0)
        torch.testing.assert_close(got["terms"], terms, rtol=1e-5, atol=1e-7)
        assert set(got["grads"]) == set(grads)
        for name, g in grads.items():
            torch.testing.assert_close(got["grads"][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_two_process_training_killed_and_resumed_matches_one_process(two_process_run, tmp_path):
    ref = train(_cfg(TRAIN_CFG), tmp_path / "ref", store=make_synthetic(SPEC))
    run = two_process_run / "run"
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    ref_log = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in log] == [r["type"] for r in ref_log] == ["train", "val"] * 2
    for a, b in zip(log, ref_log):
        assert a["step"] == b["step"]
        for key in ("total", "loss", "reg", "l1_txt", "tau", "t2i/sparse/R@1", "i2t/hybrid/R@5"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    assert (two_process_run / "killed0").exists() and (two_process_run / "killed1").exists()
    final = json.loads((run / "final.json").read_text())
    assert final["world_size"] == 2 and final["best_epoch"] == ref.best_epoch
    for rank in (0, 1):
        assert torch.load(two_process_run / f"result{rank}.pt")["best_epoch"] == ref.best_epoch
    from safetensors.torch import load_file

    a = load_file(run / "best" / "model.safetensors")
    b = load_file(tmp_path / "ref" / "best" / "model.safetensors")
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_errors_on_rank_0_reach_every_rank(two_process_run):
    for rank in (0, 1):
        assert "already holds a run" in (two_process_run / f"error{rank}.txt").read_text()


def test_global_batch_must_split_evenly():
    ctx = DistContext(rank=1, world_size=4)
    assert ctx.local_slice(256) == slice(64, 128)
    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        ctx.local_slice(258)
