"""Training speed of configuration variants on real data, measured in one process.

``mmsparse bench steps`` builds one :class:`~mmsparse.train.Trainer` per variant (a name and
``key=value`` overrides of one config) on the same loaded features and times their
optimisation steps in alternating rounds (A, B, C, A, B, C, ...), so that a busy or
throttling machine slows every variant alike and the ratios stay meaningful where absolute
times do not. Reported per variant: median ms per step, the implied seconds per epoch, and
the ratio of the first variant's time to each one's (the speed-up).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmsparse.bench.machine import load_average, machine_record
from mmsparse.config import apply_overrides, load_config
from mmsparse.data.store import load_feature_store
from mmsparse.errors import ConfigError


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME=key=value,key=value`` (or ``NAME=`` for the config as is) to a variant.

    Raises:
        ConfigError: Without a name.
    """
    name, sep, rest = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(
            f"--variant {text!r}: expected NAME=key=value[,key=value...] (or NAME= for the "
            "config as is)"
        )
    return name.strip(), [x.strip() for x in rest.split(",") if x.strip()]


def compare_steps(
    config: str | Path,
    variants: Sequence[tuple[str, Sequence[str]]],
    *,
    steps: int = 20,
    rounds: int = 3,
    warmup: int = 3,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Time the training step of each variant of ``config`` in alternating rounds.

    Args:
        config: A run config file (its data is loaded once for every variant).
        variants: ``(name, overrides)`` pairs; the first is the baseline of the ratios.
        steps: Timed steps per variant per round.
        rounds: Rounds (every variant runs ``steps`` steps in each).
        warmup: Untimed steps per variant before the first round.
        overrides: Overrides applied to every variant (e.g. ``train.device=cpu``).

    Returns:
        ``{"variants": {name: {"ms_per_step", "seconds_per_epoch", "speedup", ...}}, ...}``.

    Raises:
        ConfigError: On no variant or a bad override.
    """
    load_start = load_average()
    if not variants:
        raise ConfigError("bench steps needs at least one --variant")
    base = load_config(config, [*overrides, "train.progress=false", "train.plot=false"])
    store = load_feature_store(base.data)
    from mmsparse.train import Trainer

    trainers = {}
    feeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ov in variants:
            cfg = apply_overrides(base, list(ov))
            trainer = Trainer(cfg, store, Path(tmp) / name)
            first = list(trainer.batches(trainer.steps_per_epoch))  # epoch 1
            trainers[name] = trainer
            feeds[name] = ([rows for rows, _ in first], first[0][1], [0])
        times: dict[str, list[float]] = {name: [] for name, _ in variants}

        def run(name: str, n: int, record: bool) -> None:
            trainer = trainers[name]
            batches, gen, pos = feeds[name]
            for _ in range(n):
                rows = batches[pos[0] % len(batches)]
                pos[0] += 1
                t0 = time.perf_counter()
                terms = trainer.train_step(rows, gen)
                float(terms["total"])  # the step is finished
                if record:
                    times[name].append(1000.0 * (time.perf_counter() - t0))

        for name, _ in variants:
            run(name, warmup, record=False)
        for _ in range(rounds):
            for name, _ in variants:
                run(name, steps, record=True)
    first = variants[0][0]
    base_ms = statistics.median(times[first])
    out = {}
    for name, ov in variants:
        ms = statistics.median(times[name])
        out[name] = {
            "overrides": list(ov),
            "ms_per_step": round(ms, 2),
            "p90_ms": round(sorted(times[name])[int(0.9 * (len(times[name]) - 1))], 2),
            "steps_per_epoch": trainers[name].steps_per_epoch,
            "seconds_per_epoch": round(ms * trainers[name].steps_per_epoch / 1000.0, 1),
            "speedup": round(base_ms / ms, 2),
            "sparse_terms": trainers[name].model.n_terms,
        }
    return {
        "config": str(config),
        "steps": steps,
        "rounds": rounds,
        "machine": machine_record(load_start),
        "variants": out,
    }


def format_steps(report: dict[str, Any]) -> str:
    """A table of :func:`compare_steps`'s report."""
    from mmsparse.evaluate.report import format_table

    rows = [
        [
            name,
            str(v["sparse_terms"]),
            f"{v['ms_per_step']:.1f}",
            f"{v['seconds_per_epoch']:.1f}",
            f"{v['speedup']:.2f}x",
        ]
        for name, v in report["variants"].items()
    ]
    header = ["variant", "sparse terms", "ms/step (median)", "s/epoch", "speed-up"]
    return format_table(rows, header=header)
