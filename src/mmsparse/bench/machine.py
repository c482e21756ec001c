"""Where a benchmark ran and how busy the machine was: one record for every benchmark.

Every ``mmsparse bench`` command writes :func:`machine_record` under the key ``"machine"``
of its JSON, in one shape (docs/benchmarks.md, *The machine record*)::

    {"cpu": "AMD EPYC", "cpus": 2, "cpus_available": 2, "threads": 2,
     "threads_from": "--threads", "gpu": null, "platform": "Linux-...", "python": "3.11.7",
     "numpy": "2.4.6", "torch": "2.13.0+cpu", "numba": "0.68.1",
     "env": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "MMSPARSE_THREADS": null},
     "load_average": {"start": [9.1, 9.43, 8.41], "end": [9.1, 9.43, 8.41]}}

A benchmark takes :func:`load_average` when it starts and builds the record when it writes
its results (the ``end`` load is the load at that moment): timings taken beside other work
are slower, and the load says how much other work there was.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

#: The keys of every machine record, in order.
MACHINE_KEYS = (
    "cpu",
    "cpus",
    "cpus_available",
    "threads",
    "threads_from",
    "gpu",
    "platform",
    "python",
    "numpy",
    "torch",
    "numba",
    "env",
    "load_average",
)
#: The environment variables that set the thread pools (see :mod:`mmsparse.threads`).
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MMSPARSE_THREADS")


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, rounded to 0.01 (``None`` where unknown)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover - not Unix
        return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _threads() -> tuple[int | None, str | None]:
    """The CPU threads this process computes with, and what chose them."""
    from mmsparse.threads import LAST_DECISION, available_cpus

    torch = sys.modules.get("torch")
    if torch is not None:
        n = int(torch.get_num_threads())
    elif LAST_DECISION:
        n = int(LAST_DECISION[0])
    else:
        omp = os.environ.get("OMP_NUM_THREADS", "")
        n = int(omp) if omp.isdigit() else available_cpus()
    return n, (str(LAST_DECISION[1]) if LAST_DECISION else None)


def _gpu() -> str | None:
    """The first CUDA device's name, when torch is loaded and sees one."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(0))


def machine_record(load_start: list[float] | None = None) -> dict[str, Any]:
    """Where this process runs and the machine's load: the ``"machine"`` of every benchmark.

    Args:
        load_start: :func:`load_average` when the benchmark started (default: now).

    Returns:
        A JSON-ready dict with exactly the keys of :data:`MACHINE_KEYS` (module doc).
    """
    from mmsparse.threads import available_cpus

    threads, threads_from = _threads()
    now = load_average()
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_available": available_cpus(),
        "threads": threads,
        "threads_from": threads_from,
        "gpu": _gpu(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "numba": _version("numba"),
        "env": {key: os.environ.get(key) for key in THREAD_ENV},
        "load_average": {"start": now if load_start is None else load_start, "end": now},
    }


def describe_machine(machine: dict[str, Any]) -> str:
    """A machine record in one line for people (the reports' "Hardware:" line).

    Example: ``AMD EPYC, 2 CPUs, 2 threads, torch 2.13.0+cpu; load average [0.5, 1.1,
    1.8] at start, [1.5, 1.3, 1.8] at end``.
    """
    parts = [str(machine.get("cpu") or "unknown CPU")]
    for key, unit in (("cpus", "CPU"), ("threads", "thread")):
        if machine.get(key):
            parts.append(f"{machine[key]} {unit}{'' if machine[key] == 1 else 's'}")
    if machine.get("torch"):
        parts.append(f"torch {machine['torch']}")
    if machine.get("gpu"):
        parts.append(f"GPU {machine['gpu']}")
    load = machine.get("load_average") or {}
    text = ", ".join(parts)
    if load.get("start") is not None:
        text += f"; load average {load['start']} at start, {load.get('end')} at end"
    return text
