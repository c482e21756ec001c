"""The CLI's thread policy: fast on an idle machine, never collapsing on a busy one.

Measured on a 2-core machine (``docs/benchmarks.md``, *Threads on a busy machine*): with
torch's defaults (one intra-op thread per core, OpenMP threads spin-waiting between
parallel regions) ``mmsparse demo`` takes many times longer beside one busy core than on an
idle machine: each parallel region waits for the thread whose core is taken, and the
waiting threads burn CPU the other work needs. The policy of the command line is therefore:

* ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of spinning while they wait), set
  before torch, numpy's BLAS or numba start their pools, unless the environment sets it;
* as many threads as there are *free* cores when the command starts (cores of this
  process's CPU affinity minus the cores other processes keep busy, sampled from
  ``/proc/stat`` over 0.1 s), at least one.

``--threads N`` (every command) or ``MMSPARSE_THREADS=N`` fixes the number instead; so does
an ``OMP_NUM_THREADS`` already in the environment (as torch itself honours it).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence

from mmsparse.errors import ConfigError

ENV_THREADS = "MMSPARSE_THREADS"
# Thread-pool sizes of the libraries mmsparse uses (torch/OpenMP, OpenBLAS, MKL, numba).
POOL_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
# The last choice of configure_threads: [threads, reason] (logged by the CLI with -v).
LAST_DECISION: list = []


def available_cpus() -> int:
    """Cores this process may run on (its CPU affinity, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[float, float] | None:
    """``(busy, total)`` jiffies summed over all cores, from ``/proc/stat``."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [float(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 4:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


def busy_cores(sample_seconds: float = 0.1) -> float | None:
    """Cores kept busy by other processes, sampled over ``sample_seconds`` (Linux only).

    This process sleeps during the sample, so its own work is not counted.

    Returns:
        The number of busy cores (a float), or ``None`` where it cannot be measured.
    """
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(sample_seconds)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (os.cpu_count() or 1)


def auto_threads(cpus: int | None = None, busy: float | None = None) -> int:
    """The default number of threads: the free cores, at least 1.

    Args:
        cpus: Cores available to this process (default: :func:`available_cpus`).
        busy: Cores busy with other work (default: sampled with :func:`busy_cores`).
    """
    cpus = available_cpus() if cpus is None else cpus
    if busy is None:
        busy = busy_cores() or 0.0
    # A core counts as taken when another process keeps it more than ~half busy.
    return max(1, min(cpus, int(cpus - busy + 0.5)))


def parse_threads(value: str | int | None, where: str = "--threads") -> int | None:
    """``None``/``"auto"`` → ``None``; else a positive integer.

    Raises:
        ConfigError: Naming ``where`` for anything else.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"{where} must be a positive integer or 'auto', got {value!r}")
    return n


def _argv_threads(argv: Sequence[str]) -> str | None:
    """The value of ``--threads`` in a command line, before argparse sees it."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return None


def decide_threads(argv: Sequence[str] = ()) -> tuple[int, str]:
    """The number of threads for a command line, and why.

    Order: ``--threads``, ``MMSPARSE_THREADS``, ``OMP_NUM_THREADS`` from the environment,
    then :func:`auto_threads`.

    Returns:
        ``(threads, reason)``.

    Raises:
        ConfigError: On a malformed ``--threads`` or ``MMSPARSE_THREADS``.
    """
    n = parse_threads(_argv_threads(argv))
    if n is not None:
        return n, "--threads"
    n = parse_threads(os.environ.get(ENV_THREADS), ENV_THREADS)
    if n is not None:
        return n, ENV_THREADS
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp), "OMP_NUM_THREADS"
    return auto_threads(), "auto (free cores)"


def configure_threads(argv: Sequence[str] = ()) -> int:
    """Apply the thread policy of the module docstring to this process.

    Call it before torch, numba or a BLAS library start their thread pools (the CLI calls
    it first thing); when torch is already imported its intra-op threads are set directly.

    Returns:
        The number of threads chosen.

    Raises:
        ConfigError: On a malformed ``--threads`` or ``MMSPARSE_THREADS``.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    n, reason = decide_threads(argv)
    explicit = reason in ("--threads", ENV_THREADS)
    numba = sys.modules.get("numba")
    for key in POOL_ENV:
        if key == "NUMBA_NUM_THREADS" and numba is not None:
            # numba reads its pool size once; changing the variable after its import makes
            # its next config reload raise. Its thread count is set below instead.
            continue
        if explicit or key not in os.environ:
            os.environ[key] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    if numba is not None:
        try:
            numba.set_num_threads(max(1, min(n, int(numba.config.NUMBA_NUM_THREADS))))
        except (AttributeError, ValueError):  # pragma: no cover - numba without a pool
            pass
    LAST_DECISION[:] = [n, reason]
    logging.getLogger(__name__).debug("%d threads (%s)", n, reason)
    return n
