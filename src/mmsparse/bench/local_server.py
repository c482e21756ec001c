"""``mmsparse serve`` as a child process on 127.0.0.1, for the benchmarks that load a server.

``bench serve`` and ``bench photos`` start servers the same way: a free port, the server's
output in a log file, ``/healthz`` awaited (a server that exits first is an error naming its
last log line), SIGINT at the end (then SIGKILL if it does not stop), and their latencies
reported in the same percentiles.
"""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmsparse.errors import MMSparseError


def free_port() -> int:
    """A TCP port of 127.0.0.1 free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    stack: contextlib.ExitStack, cmd: list[str], log_path: Path, *, stop_timeout: float = 20.0
) -> subprocess.Popen:
    """Start ``cmd`` (a server) with its output in ``log_path``; ``stack`` stops it.

    At the stack's end the server gets SIGINT (a clean shutdown), and SIGKILL if it has not
    stopped within ``stop_timeout`` seconds.
    """
    with open(log_path, "wb") as log_fh:
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT)

    def stop() -> None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stack.callback(stop)
    return proc


def wait_healthy(
    proc: subprocess.Popen, port: int, log_path: Path, timeout: float, path: str = "/healthz"
) -> None:
    """Wait until the server on ``port`` answers ``path`` with 200.

    ``/healthz`` answers once the server is up; ``/readyz`` once its search path is warm.

    Raises:
        MMSparseError: If the server exits first (with its last log line), or does not
            answer within ``timeout`` seconds.
    """
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            lines = log_path.read_text(errors="replace").strip().splitlines()
            raise MMSparseError(
                f"the server exited with status {proc.returncode}: "
                f"{lines[-1] if lines else 'no output'}"
            )
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise MMSparseError(f"the server did not answer {path} within {timeout:.0f} s")


def latency_ms(seconds: list[float]) -> dict[str, float]:
    """``p50``, ``p90``, ``p99``, ``mean`` and ``max`` of latencies, in milliseconds.

    Returns:
        ``{}`` for no latencies.
    """
    a = np.asarray(seconds, dtype=np.float64) * 1000
    if a.size == 0:
        return {}
    out = {f"p{p}": round(float(np.percentile(a, p)), 2) for p in (50, 90, 99)}
    out.update(mean=round(float(a.mean()), 2), max=round(float(a.max()), 2))
    return out


def p50_p99_ms(seconds: Sequence[float], digits: int = 4) -> dict[str, float]:
    """``{"p50_ms", "p99_ms"}`` of timings given in seconds, rounded to ``digits``."""
    t = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(t, 50)), digits),
        "p99_ms": round(float(np.percentile(t, 99)), digits),
    }
