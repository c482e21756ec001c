"""``mmsparse bench serve``: a bounded load test of ``mmsparse serve`` on 127.0.0.1.

For every encoder mode asked for, the benchmark starts ``mmsparse serve INDEX`` as a child
process on a free local port (the servers side by side), waits for ``/healthz`` and warms
them up, then sends ``requests`` searches (``/api/search?q=CAPTION&k=K&explain=true``, what
the web page asks) to each from ``clients`` concurrent clients, each on its own keep-alive
connection, in blocks that alternate between the modes. The queries are real captions of the
index's split (sampled with a seed). It reports latency percentiles, requests per second,
errors (any status but 200, or a failed connection), the servers' resident memory before and
after the load and the load average, then stops the servers.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

from mmsparse.bench.local_server import free_port, latency_ms, start_server, wait_healthy
from mmsparse.bench.machine import load_average, machine_record
from mmsparse.errors import MMSparseError
from mmsparse.io_utils import atomic_write_json


def split_captions(index_dir: str | Path) -> list[str]:
    """Caption texts of the split an index holds (from the index's data)."""
    from mmsparse.index.manifest import IndexManifest
    from mmsparse.runs import load_run, load_run_data

    manifest = IndexManifest.load(index_dir)
    if not manifest.split:
        raise MMSparseError(
            f"{index_dir}: an index of a folder of photos has no captions to send as "
            "queries; benchmark an index of a split ('mmsparse index build RUN --split val')"
        )
    run = load_run(manifest.run_dir)
    store = load_run_data(run, manifest.data_dir or None)
    rows = store.split(manifest.split).caption_rows
    return [store.caption_texts[int(r)] for r in rows]


def _rss_mb(pid: int) -> dict[str, float]:
    """Resident memory (VmRSS) and its peak (VmHWM) of a process, in MB (Linux)."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def run_load(
    port: int, queries: list[str], clients: int, k: int, timeout: float = 60.0
) -> dict[str, Any]:
    """Send every query once from ``clients`` threads; latencies, errors and wall time."""
    lock = threading.Lock()
    nxt = iter(range(len(queries)))
    latencies: list[float] = []
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                break
            path = "/api/search?" + urllib.parse.urlencode(
                {"q": queries[i], "k": k, "explain": "true"}
            )
            t0 = time.perf_counter()
            try:
                status, body = _get(conn, path)
                ok = status == 200 and "hits" in json.loads(body)
                msg = "" if ok else f"HTTP {status}: {body[:200]!r}"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                ok, msg = False, f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                if not ok:
                    errors.append(msg)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "wall_s": wall}


def _start_server(
    stack: contextlib.ExitStack,
    index_dir: str | Path,
    enc: str,
    encoder_threads: int,
    clients: int,
    k: int = 10,
) -> tuple[subprocess.Popen, int, Path]:
    """Start ``mmsparse serve`` with one encoder mode; the stack stops it."""
    port = free_port()
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    log_path = tmp / "server.log"
    cmd = [
        sys.executable, "-m", "mmsparse", "serve", str(index_dir),
        "--port", str(port), "--encoder", enc, "--encoder-threads", str(encoder_threads),
        "--max-pending", str(max(64, 4 * clients)), "--max-k", str(max(100, k)),
    ]  # fmt: skip
    proc = start_server(stack, cmd, log_path, stop_timeout=20)
    return proc, port, log_path


def bench_serve(
    index_dir: str | Path,
    *,
    clients: int = 8,
    requests: int = 2000,
    k: int = 10,
    encoders: list[str] | tuple[str, ...] = ("batch", "threads"),
    encoder_threads: int = 2,
    rounds: int = 4,
    seed: int = 0,
    warmup: int = 16,
    out: str | Path | None = "benchmarks/serve.json",
    startup_timeout: float = 600.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Load-test ``mmsparse serve INDEX`` once per encoder mode, the modes interleaved.

    One server per encoder mode runs for the whole benchmark; the ``requests`` queries are
    cut into ``rounds`` blocks, and each block is sent to every server in turn (the order
    alternating from round to round), so a change of machine load during the run falls on
    every mode alike. Each mode answers the same queries.

    Args:
        index_dir: Index directory (its split's captions are the queries).
        clients: Concurrent clients.
        requests: Searches in all (per encoder mode).
        k: ``k`` of every search.
        encoders: Encoder modes to measure (``batch``, ``threads``).
        encoder_threads: Workers of the ``threads`` encoder (``--encoder-threads``). The
            servers compute with this process's CPU threads (``--threads``; they inherit
            its ``OMP_NUM_THREADS``).
        rounds: Blocks of queries, each sent to every mode in turn.
        seed: Seed of the caption sample.
        warmup: Untimed requests sent first.
        out: Write the report here (``None``: do not write).
        startup_timeout: Seconds to wait for the server to answer.
        progress: Print progress to stderr.

    Returns:
        The report: one entry per encoder mode under ``runs``.

    Raises:
        MMSparseError: On bad arguments, or if the server does not start.
    """
    for option, value in (
        ("--clients", clients),
        ("--requests", requests),
        ("--rounds", rounds),
        ("--k", k),
        ("--encoder-threads", encoder_threads),
    ):
        if value < 1:
            raise MMSparseError(f"{option} must be at least 1, got {value}")
    if warmup < 0:
        raise MMSparseError(f"warmup must be non-negative, got {warmup}")
    for enc in encoders:
        if enc not in ("batch", "threads"):
            raise MMSparseError(f"unknown encoder mode {enc!r} (batch or threads)")
    captions = split_captions(index_dir)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(captions), size=requests, replace=requests > len(captions))
    queries = [captions[int(i)] for i in picks]
    warm = [captions[int(i)] for i in rng.choice(len(captions), size=warmup)]
    blocks = [list(b) for b in np.array_split(np.arange(requests), min(rounds, requests))]
    report: dict[str, Any] = {
        "index": str(Path(index_dir).resolve()),
        "queries": f"{requests} captions of the index's split, sampled with seed {seed}",
        "endpoint": f"GET /api/search?q=CAPTION&k={k}&explain=true",
        "design": f"one server per encoder mode, side by side; the queries in {len(blocks)} "
        "blocks, each block sent to every mode in turn (order alternating per round)",
        "machine": machine_record(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": [],
    }
    acc: dict[str, dict[str, Any]] = {
        enc: {"latencies": [], "errors": [], "wall_s": 0.0, "load": []} for enc in encoders
    }
    with contextlib.ExitStack() as stack:
        servers = {}
        for enc in encoders:
            proc, port, log_path = _start_server(stack, index_dir, enc, encoder_threads, clients, k)
            if progress:
                print(f"starting the server (encoder={enc}) on port {port}", file=sys.stderr)
            wait_healthy(proc, port, log_path, startup_timeout)
            servers[enc] = (proc, port)
        mem_before = {}
        for enc, (proc, port) in servers.items():
            run_load(port, warm, clients, k)
            mem_before[enc] = _rss_mb(proc.pid)
        for r, block in enumerate(blocks):
            order = list(encoders) if r % 2 == 0 else list(reversed(encoders))
            for enc in order:
                if progress:
                    print(
                        f"round {r + 1}/{len(blocks)}: {len(block)} requests from {clients} "
                        f"clients to encoder={enc}",
                        file=sys.stderr,
                    )
                acc[enc]["load"].append((load_average() or [None])[0])
                res = run_load(servers[enc][1], [queries[i] for i in block], clients, k)
                acc[enc]["latencies"] += res["latencies"]
                acc[enc]["errors"] += res["errors"]
                acc[enc]["wall_s"] += res["wall_s"]
        for enc, (proc, port) in servers.items():
            mem_after = _rss_mb(proc.pid)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            health = json.loads(_get(conn, "/healthz")[1])
            conn.close()
            a = acc[enc]
            n = len(a["latencies"])
            report["runs"].append(
                {
                    "encoder": enc,
                    "encoder_threads": encoder_threads if enc == "threads" else 1,
                    "clients": clients,
                    "requests": n,
                    "errors": len(a["errors"]),
                    "error_examples": sorted(set(a["errors"]))[:5],
                    "wall_s": round(a["wall_s"], 3),
                    "requests_per_s": round(n / a["wall_s"], 2),
                    "latency_ms": latency_ms(a["latencies"]),
                    "memory_mb": {
                        "before": round(mem_before[enc].get("VmRSS", float("nan")), 1),
                        "after": round(mem_after.get("VmRSS", float("nan")), 1),
                        "peak": round(mem_after.get("VmHWM", float("nan")), 1),
                    },
                    "load_average_1min_at_block_starts": a["load"],
                    "server": health,
                }
            )
    report["machine"] = machine_record(report["machine"]["load_average"]["start"])
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out), report)
    return report
