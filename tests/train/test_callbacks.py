"""The loop's hooks, and the trainer surface the benchmarks may use."""

from __future__ import annotations

import ast
import inspect
import json
import re

import pytest

from mmsparse.config import RunConfig, apply_overrides
from mmsparse.train import Callback, RunDirectory, Trainer, train
from mmsparse.train.callbacks import strict_record
from tests.helpers import REPO, TINY_OVERRIDES


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_fit_begin(self, trainer):
        self.events.append(("fit_begin", trainer.state.epoch))

    def on_epoch_begin(self, trainer, epoch):
        self.events.append(("epoch_begin", epoch))

    def on_step_end(self, trainer, epoch, step, terms, sums):
        assert terms.shape == (len(trainer.term_names),)
        self.events.append(("step", epoch, step))

    def on_epoch_end(self, trainer, epoch, record, val):
        assert record["type"] == "train" and record["epoch"] == epoch
        self.events.append(("epoch_end", epoch, val is not None))

    def on_fit_end(self, trainer):
        self.events.append(("fit_end",))


def test_the_loop_calls_every_hook_in_order(tmp_path, tiny_store):
    cfg = apply_overrides(RunConfig(), [*TINY_OVERRIDES, "train.epochs=3", "train.eval_every=2"])
    trainer = Trainer(cfg, tiny_store, tmp_path / "r")
    RunDirectory(tmp_path / "r").start(cfg, resume=False)
    rec = Recorder()
    trainer.callbacks.append(rec)
    trainer.fit()
    n = trainer.steps_per_epoch
    want = [("fit_begin", 0)]
    for epoch in (1, 2, 3):
        want.append(("epoch_begin", epoch))
        want += [("step", epoch, s) for s in range(n)]
        want.append(("epoch_end", epoch, epoch in (2, 3)))  # eval_every=2, and the last
    assert rec.events == [*want, ("fit_end",)]
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["type"], r["epoch"]) for r in records] == [
        ("train", 1),
        ("train", 2),
        ("val", 2),
        ("train", 3),
        ("val", 3),
    ]


def test_records_are_strict_json():
    rec = strict_record({"a": float("nan"), "b": float("inf"), "c": 1.5, "d": "x"})
    assert rec == {"a": None, "b": None, "c": 1.5, "d": "x"}
    json.dumps(rec, allow_nan=False)


def test_a_run_is_the_same_with_and_without_progress_bars(tmp_path, tiny_store):
    quiet = train(apply_overrides(RunConfig(), TINY_OVERRIDES), tmp_path / "a", store=tiny_store)
    bars = apply_overrides(RunConfig(), [*TINY_OVERRIDES, "train.progress=true"])
    shown = train(bars, tmp_path / "b", store=tiny_store)
    untimed = [{k: v for k, v in r.val.items() if k != "rank_seconds"} for r in (quiet, shown)]
    assert untimed[0] == untimed[1] and quiet.best_epoch == shown.best_epoch


def _documented_surface() -> set[str]:
    """The Trainer members its docstring lists, and its public methods and properties."""
    doc = inspect.getdoc(Trainer) or ""
    attributes = doc.split("Attributes:", 1)[1]
    names = set(re.findall(r"^    (\w+):", attributes, flags=re.M))
    names |= {n for n, _ in inspect.getmembers(Trainer) if not n.startswith("_")}
    return names


@pytest.mark.parametrize("module", ["train", "frontier", "steps", "flickr8k"])
def test_benchmarks_use_the_documented_trainer_surface_only(module):
    path = REPO / "src" / "mmsparse" / "bench" / f"{module}.py"
    tree = ast.parse(path.read_text())
    surface = _documented_surface()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            # the package's public API, not its modules' insides
            assert node.module != "mmsparse.train.trainer", f"{module} imports {node.module}"
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("trainer", "trainers")
        ):
            assert node.attr in surface, f"bench/{module}.py reads trainer.{node.attr}"
