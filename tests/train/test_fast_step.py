"""Every speed option of the step keeps the plain step's loss trajectory (float noise)."""

from __future__ import annotations

import json

import pytest
import torch

from mmsparse.config import RunConfig, apply_overrides
from mmsparse.data import make_synthetic
from mmsparse.losses import SparsityRegularizer
from mmsparse.train import StepTerms, Trainer, train
from mmsparse.train.step import AsyncTermLog, make_optimizer, use_fused_adamw
from tests.helpers import TINY, TINY_OVERRIDES

SPEC = TINY
BASE = [
    *TINY_OVERRIDES,
    "train.device=cpu",
    "objective.expansion_control=true",
    "objective.expansion_p0=0.5",
]
PLAIN = ["train.compile=off", "train.fused_optimizer=off", "train.amp=off"]
STEPS = 30


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store():
    return make_synthetic(SPEC)


def _trajectory(store, tmp_path, *overrides, steps=STEPS):
    """Totals of the first ``steps`` steps (over epochs) and the final weights."""
    cfg = apply_overrides(RunConfig(), [*BASE, *PLAIN, *overrides])
    trainer = Trainer(cfg, store, tmp_path)
    totals, epoch = [], 0
    while len(totals) < steps:
        epoch += 1
        perm, gen = trainer.epoch_order(epoch)
        for s in range(trainer.steps_per_epoch):
            if len(totals) == steps:
                break
            terms = trainer.train_step(trainer.batch_rows(perm, s), gen)
            assert isinstance(terms, StepTerms) and terms.vector.dtype == torch.float32
            totals.append(float(terms["total"]))
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return torch.tensor(totals, dtype=torch.float64), weights


@pytest.fixture(scope="module")
def plain(store, tmp_path_factory):
    return _trajectory(store, tmp_path_factory.mktemp("plain"))


def _assert_same_trajectory(a, b, rtol):
    torch.testing.assert_close(a[0], b[0], rtol=rtol, atol=0)
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=rtol * 10, atol=1e-6, msg=name)


def test_fused_adamw_keeps_the_trajectory(store, tmp_path, plain):
    fused = _trajectory(store, tmp_path, "train.fused_optimizer=on")
    _assert_same_trajectory(fused, plain, rtol=1e-5)


def test_compiled_step_keeps_the_trajectory(store, tmp_path, plain):
    torch._dynamo.reset()
    compiled = _trajectory(store, tmp_path, "train.compile=default")
    _assert_same_trajectory(compiled, plain, rtol=1e-5)


def test_compiled_step_with_the_objective_options_keeps_the_trajectory(store, tmp_path):
    """The option terms (table rows with lambdas) compile to the eager values."""
    options = (
        "objective.lexical_weight=0.3",
        "objective.sparse_scale=learned",
        "objective.reg=flops",
        "objective.train_text_topk=20",
    )
    eager = _trajectory(store, tmp_path / "eager", *options, steps=8)
    torch._dynamo.reset()
    compiled = _trajectory(store, tmp_path / "compiled", *options, "train.compile=default", steps=8)
    _assert_same_trajectory(compiled, eager, rtol=1e-5)


def test_bf16_forward_stays_close_and_the_loss_is_float32(store, tmp_path, plain):
    bf16 = _trajectory(store, tmp_path, "train.amp=bf16")
    # bf16 rounds the forward pass (8 bits of mantissa): close, not equal.
    torch.testing.assert_close(bf16[0], plain[0], rtol=3e-2, atol=0)
    assert not torch.equal(bf16[0], plain[0])


def test_the_plain_step_is_the_published_objective(store, tmp_path):
    """One step's terms against the objective recomputed by hand from the same outputs."""
    from mmsparse.losses import joint_objective

    cfg = apply_overrides(RunConfig(), [*BASE, *PLAIN, "objective.expansion_control=false"])
    trainer = Trainer(cfg, store, tmp_path)
    trainer.state.global_step = 40  # mid regulariser warm-up
    rows = trainer.train_captions[:32]
    total, vector = trainer.forward_terms(rows)
    out = trainer.model(
        trainer.image_feats[trainer.caption_image[rows]], trainer.caption_feats[rows]
    )
    obj = cfg.objective
    ref = joint_objective(
        out.img_dense,
        out.txt_dense,
        out.img_sparse,
        out.txt_sparse,
        tau=out.tau,
        w1=obj.w1,
        w2=obj.w2,
        lam1=obj.lam1,
        lam2=obj.lam2,
        distill_teacher=obj.distill_teacher,
    )
    reg = SparsityRegularizer(obj.q_reg, obj.d_reg, trainer.total_steps, obj.reg_warmup_frac)
    reg.step = 40
    ref.update(reg(out.txt_sparse, out.img_sparse))
    ref["total"] = ref["loss"] + ref["reg"]
    assert reg.eta_t(40) > 0
    got = StepTerms(trainer.term_names, vector)
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k].detach(), rtol=1e-6, atol=1e-7, msg=k)
    torch.testing.assert_close(total.detach(), ref["total"].detach(), rtol=1e-6, atol=0)


def test_step_logs_average_to_the_epoch_record(store, tmp_path):
    cfg = apply_overrides(RunConfig(), [*BASE, "train.log_every=3", "train.batch_size=40"])
    train(cfg, tmp_path / "r", store=store)
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "train"]
    assert [r["step"] for r in steps] == list(range(3, 37, 3))  # 12 steps an epoch, 3 epochs
    for e in epochs:
        mine = [r for r in steps if r["epoch"] == e["epoch"]]
        assert len(mine) == 4
        for key in ("total", "nce_sparse", "l1_img"):
            mean = sum(r[key] for r in mine) / len(mine)
            assert mean == pytest.approx(e[key], rel=1e-5), key


def test_async_log_writes_in_order():
    written = []
    log = AsyncTermLog(("a", "b"), torch.device("cpu"), written.append)
    log.push(torch.tensor([1.0, 2.0]), {"step": 1})
    log.push(torch.tensor([3.0, 4.0]), {"step": 2})
    log.flush()
    assert written == [{"step": 1, "a": 1.0, "b": 2.0}, {"step": 2, "a": 3.0, "b": 4.0}]


def test_fused_optimizer_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_fused_adamw("auto", cuda) and use_fused_adamw("auto", cpu)
    assert not use_fused_adamw("off", cuda) and use_fused_adamw("on", cpu)
    cfg = apply_overrides(RunConfig(), ["train.fused_optimizer=off"]).train
    p = torch.nn.Parameter(torch.zeros(3))
    assert not make_optimizer([p], cfg, cpu).defaults.get("fused")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_cuda_step_never_synchronises(store, tmp_path, amp):
    cfg = apply_overrides(
        RunConfig(), [*BASE, "train.device=cuda", f"train.amp={amp}", "train.log_every=2"]
    )
    trainer = Trainer(cfg, store, tmp_path)
    perm, gen = trainer.epoch_order(1)
    sums = torch.zeros(len(trainer.term_names), device=trainer.device)
    sums += trainer.train_step(trainer.batch_rows(perm, 0), gen).vector  # first step: set-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for s in range(1, 6):
            sums += trainer.train_step(trainer.batch_rows(perm, s), gen).vector
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(sums).all()
