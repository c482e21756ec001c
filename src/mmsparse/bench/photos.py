"""``mmsparse bench photos``: photos added to a served index while clients search it.

The user's path, timed: a folder of photos (no captions) is indexed with
``mmsparse index build RUN --images``, served with ``mmsparse serve``, and while
``clients`` concurrent clients search it without pause, new photos are copied into a
subfolder and added with ``mmsparse index add`` (each command a child process, as a user
runs them). The photos and their captions default to the Flickr8k val JPEGs and
``dataset_meta.json`` (``MMSPARSE_FLICKR8K``): the folder is split at random (``seed``)
into ``n_base`` photos indexed first and ``n_add`` added. The captions are never indexed:
they are the queries (captions of the indexed photos) and the check afterwards.

Reported (JSON, and a table by the command):

* requests, failed requests (any status but 200, or a failed connection) and latency
  percentiles **before** the add, **during** it (from the copy of the photos to the end of
  ``index add``) and **after** (once the server answers from the new generation), with
  requests per second;
* the add itself: wall time and the command's own stages, the generation published, and
  when the server first answered from it;
* whether the added photos are **found by their own captions** afterwards: every caption
  of every added photo sent as a query (``k``, ``force=1``), its photo's rank; R@1, R@5,
  R@10 over those captions, against the same for as many photos of the first folder (the
  reference: an added photo should be found as well as one indexed from the start);
* the server's memory before and after, the machine and its load average at each phase.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
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

PHASES = ("before", "during", "after")


def default_photos() -> tuple[Path, Path]:
    """The Flickr8k val JPEGs and their captions (``MMSPARSE_FLICKR8K`` or ../shared)."""
    root = Path(os.environ.get("MMSPARSE_FLICKR8K", Path.cwd().parent / "shared" / "flickr8k"))
    return root / "images", root / "dataset_meta.json"


def photo_captions(images: Path, captions: Path) -> dict[str, list[str]]:
    """``{photo file name: its captions}`` for the photos of ``images`` that have captions.

    Raises:
        MMSparseError: If the folder or the caption file is missing, or no photo matches.
    """
    from mmsparse.extract import list_image_folder
    from mmsparse.extract.inputs import read_captions

    listing = list_image_folder(images)
    by_name = {e.filename: [s["raw"] for s in e.sentences] for e in read_captions(captions).images}
    out = {f: by_name[f] for f in listing.files if by_name.get(f)}
    if not out:
        raise MMSparseError(f"{images}: no photo there has a caption in {captions}")
    return out


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _get(port: int, path: str, timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


class Load:
    """``clients`` threads searching without pause until stopped; every answer recorded.

    Each record: ``(start time, seconds, ok, generation or None, error text)``.
    """

    def __init__(self, port: int, clients: int, queries: list[str], k: int) -> None:
        self.port, self.queries, self.k = port, queries, k
        self.records: list[tuple[float, float, bool, int | None, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, client: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        i = client
        while not self._stop.is_set():
            q = self.queries[i % len(self.queries)]
            i += len(self._threads)
            path = "/api/search?" + urllib.parse.urlencode({"q": q, "k": self.k, "explain": "true"})
            t0 = time.time()
            p0 = time.perf_counter()
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200
                gen = json.loads(body).get("generation") if ok else None
                err = "" if ok else f"HTTP {resp.status}: {body[:160]!r}"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                ok, gen, err = False, None, f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            with self._lock:
                self.records.append((t0, time.perf_counter() - p0, ok, gen, err))
        conn.close()

    def first_answer_from(self, generation: int) -> float | None:
        """When a request that started first got an answer from ``generation`` or later."""
        with self._lock:
            times = [
                t for t, _, ok, g, _ in self.records if ok and g is not None and g >= generation
            ]
        return min(times) if times else None

    def start(self) -> None:
        """Start the clients."""
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop the clients (each ends its request first)."""
        self._stop.set()
        for t in self._threads:
            t.join(120)

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def answers(self) -> int:
        """Requests answered so far (failed ones too)."""
        with self._lock:
            return len(self.records)

    @property
    def failures(self) -> list[str]:
        """What went wrong with each failed request so far."""
        with self._lock:
            return [err for _, _, ok, _, err in self.records if not ok]

    @property
    def generations(self) -> set[int]:
        """The generations that answered so far."""
        with self._lock:
            return {g for _, _, ok, g, _ in self.records if ok and g is not None}


def _phase(records: list[tuple[float, float, bool, int | None, str]], t0: float, t1: float):
    picked = [r for r in records if t0 <= r[0] < t1]
    failed = [r[4] for r in picked if not r[2]]
    wall = max(t1 - t0, 1e-9)
    return {
        "seconds": round(t1 - t0, 2),
        "requests": len(picked),
        "failed": len(failed),
        "failed_examples": sorted(set(failed))[:5],
        "requests_per_s": round(len(picked) / wall, 2),
        "latency_ms": latency_ms([r[1] for r in picked]),
        "generations": sorted({r[3] for r in picked if r[3] is not None}),
    }


def _run_cmd(cmd: list[str], what: str) -> tuple[dict[str, Any], float]:
    """Run an mmsparse command with ``--json``; its JSON and wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise MMSparseError(f"{what} failed: {lines[-1] if lines else proc.returncode}")
    return json.loads(proc.stdout), wall


def _place(src: Path, dst: Path) -> None:
    """A hard link (the same file, no copy), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _found(port: int, photos: list[str], captions: dict[str, list[str]], prefix: str, k: int):
    """Each caption of each photo as a query: the rank of its own photo (0: not in top k)."""
    ranks = []
    for name in photos:
        for caption in captions[name]:
            query = urllib.parse.urlencode({"q": caption, "k": k, "force": 1, "explain": "false"})
            status, body = _get(port, "/api/search?" + query)
            if status != 200:
                raise MMSparseError(f"a search for {caption!r} failed: HTTP {status} {body}")
            ids = [h["image_id"] for h in body["hits"]]
            ranks.append(ids.index(prefix + name) + 1 if prefix + name in ids else 0)
    r = np.asarray(ranks)
    out = {f"R@{n}": round(100 * float(np.mean((r > 0) & (r <= n))), 1) for n in (1, 5, 10)}
    out["captions"] = len(ranks)
    out["photos"] = len(photos)
    per_photo = np.asarray(ranks).reshape(len(photos), -1) if photos else np.zeros((0, 1))
    out["photos_found_in_top_k"] = int(((per_photo > 0).any(axis=1)).sum())
    return out


def bench_photos(
    run_dir: str | Path,
    *,
    images: str | Path | None = None,
    captions: str | Path | None = None,
    n_base: int = 900,
    n_add: int = 100,
    clients: int = 8,
    k: int = 10,
    phase_s: float = 20.0,
    engine: str = "inverted",
    device: str = "cpu",
    batch_size: int = 64,
    seed: int = 0,
    work: str | Path | None = None,
    out: str | Path | None = "benchmarks/photos.json",
    startup_timeout: float = 600.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Add photos to a served folder index under load (see the module docstring).

    Args:
        run_dir: A trained run whose backbone encodes photos (``configs/flickr8k.json``).
        images: The folder of photos (default: the Flickr8k val JPEGs).
        captions: Their captions, any format ``mmsparse extract`` reads (default: the
            Flickr8k ``dataset_meta.json``).
        n_base: Photos indexed first.
        n_add: Photos added while the server is under load.
        clients: Concurrent clients.
        k: ``k`` of every search, and of the found-by-caption check.
        phase_s: Seconds of load before the add, and after the switch.
        engine: The index engine.
        device: Device of the encoders.
        batch_size: Photos per forward pass.
        seed: Seed of the split of the folder and of the queries' order.
        work: Folder for the photos, the index and the server's log (default: a temporary
            one, deleted at the end).
        out: Write the report here (``None``: do not).
        startup_timeout: Seconds to wait for the server.
        progress: Print each step to stderr.

    Returns:
        The report (see the module docstring).

    Raises:
        MMSparseError: On bad arguments, too few photos, or a command that fails.
    """
    for option, value in (("--n-base", n_base), ("--n-add", n_add), ("--clients", clients)):
        if value < 1:
            raise MMSparseError(f"{option} must be at least 1, got {value}")
    if k < 1 or phase_s <= 0:
        raise MMSparseError(f"--k must be >= 1 and --phase-seconds > 0, got {k} and {phase_s}")
    d_images, d_captions = default_photos()
    images = Path(images) if images is not None else d_images
    captions = Path(captions) if captions is not None else d_captions
    caps = photo_captions(images, captions)
    names = sorted(caps)
    if len(names) < n_base + n_add:
        raise MMSparseError(
            f"{images}: {len(names)} photos with captions, fewer than --n-base {n_base} + "
            f"--n-add {n_add}"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    base = sorted(names[i] for i in order[:n_base])
    added = sorted(names[i] for i in order[n_base : n_base + n_add])

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    mm = [sys.executable, "-m", "mmsparse"]
    with contextlib.ExitStack() as stack:
        root = Path(work) if work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        photos, index = root / "photos", root / "index"
        if photos.exists() or index.exists():
            raise MMSparseError(f"{root}: holds photos/ or index/ already; give another --work")
        for name in base:
            _place(images / name, photos / name)
        say(f"indexing {len(base)} photos of {images} ({engine}, {device})")
        build, build_wall = _run_cmd(
            [*mm, "index", "build", str(run_dir), "--images", str(photos), "--out", str(index),
             "--engine", engine, "--device", device, "--batch-size", str(batch_size), "--json"],
            "index build",
        )  # fmt: skip
        port = free_port()
        log_path = root / "serve.log"
        server = start_server(
            stack,
            [*mm, "serve", str(index), "--port", str(port),
             "--max-pending", str(max(64, 4 * clients)), "--max-k", str(max(100, k))],
            log_path,
            stop_timeout=30,
        )  # fmt: skip
        wait_healthy(server, port, log_path, startup_timeout)
        gen0 = _get(port, "/healthz")[1]["generation"]
        queries = [c for name in base for c in caps[name]]
        queries = [queries[i] for i in rng.permutation(len(queries))]
        for q in queries[: 2 * clients]:  # warm-up, untimed
            _get(port, "/api/search?" + urllib.parse.urlencode({"q": q, "k": k}))
        mem_before = _rss_mb(server.pid)
        load_avg = {"start": load_average()}
        load = Load(port, clients, queries, k)
        say(f"{clients} clients searching; {phase_s:.0f} s before the add")
        t_start = time.time()
        load.start()
        try:
            time.sleep(phase_s)
            load_avg["before"] = load_average()
            t_add0 = time.time()
            say(f"copying {len(added)} photos into {photos / 'added'} and adding them")
            for name in added:
                _place(images / name, photos / "added" / name)
            add, add_wall = _run_cmd(
                [*mm, "index", "add", str(index), "--images", str(photos / "added"),
                 "--device", device, "--batch-size", str(batch_size), "--json"],
                "index add",
            )  # fmt: skip
            t_add1 = time.time()
            load_avg["during"] = load_average()
            new_gen = int(add["published"][0]) if add.get("published") else gen0
            t_wait = time.time()
            while load.first_answer_from(new_gen) is None and time.time() - t_wait < 60:
                time.sleep(0.05)
            t_switch = load.first_answer_from(new_gen)
            t_after = max(t_add1, t_switch or t_add1)
            say(f"added; {phase_s:.0f} s after the switch to generation {new_gen}")
            time.sleep(max(0.0, t_after + phase_s - time.time()))
            t_end = time.time()
        finally:
            load.stop()
        load_avg["after"] = load_average()
        mem_after = _rss_mb(server.pid)
        health = _get(port, "/healthz")[1]
        say(f"checking the {len(added)} added photos by their captions")
        found_added = _found(port, added, caps, "added/", k)
        reference = sorted(base[i] for i in rng.permutation(len(base))[: len(added)])
        found_base = _found(port, reference, caps, "", k)
        records = load.records
        generation_published = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            gen_file = index / "generations" / f"g{new_gen:06d}.json"
            generation_published = json.loads(gen_file.read_text())["created_unix"]
        report: dict[str, Any] = {
            "run": str(Path(run_dir).resolve()),
            "photos": {
                "folder": str(images),
                "captions": str(captions),
                "indexed_first": len(base),
                "added": len(added),
                "split_seed": seed,
            },
            "engine": engine,
            "device": device,
            "clients": clients,
            "k": k,
            "queries": f"{len(queries)} captions of the photos indexed first, in random order "
            f"(seed {seed}), GET /api/search?q=CAPTION&k={k}&explain=true",
            "build": {"wall_s": round(build_wall, 2), "seconds": build.get("folder", {})},
            "add": {
                "wall_s": round(add_wall, 2),
                "seconds": add.get("seconds", {}),
                "generation": new_gen,
                "published": add.get("published"),
                "merged": add.get("merged"),
                "server_switched_after_publish_s": (
                    round(t_switch - generation_published, 3)
                    if t_switch and generation_published
                    else None
                ),
            },
            "phases": {
                "before": _phase(records, t_start, t_add0),
                "during": _phase(records, t_add0, t_add1),
                "after": _phase(records, t_after, t_end),
            },
            "failed_requests": sum(1 for r in records if not r[2]),
            "requests": len(records),
            "found_by_own_captions": {"added": found_added, "indexed_first": found_base},
            "server": {
                "memory_mb": {"before": mem_before, "after": mem_after},
                "health": health,
            },
            "machine": machine_record(load_avg["start"]),
            "phase_load_average": load_avg,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out), report)
    return report


def report_table(report: dict[str, Any]) -> str:
    """The report as a few lines for people."""
    lines = [
        f"{report['photos']['indexed_first']} photos indexed, {report['photos']['added']} added "
        f"while {report['clients']} clients searched ({report['engine']}, {report['device']}); "
        f"failed requests: {report['failed_requests']} of {report['requests']}",
        f"{'phase':<8} {'s':>6} {'requests':>9} {'failed':>7} {'req/s':>7} {'p50 ms':>8} "
        f"{'p90 ms':>8} {'p99 ms':>8}  generations",
    ]
    for name in PHASES:
        p = report["phases"][name]
        lat = p["latency_ms"] or {}
        lines.append(
            f"{name:<8} {p['seconds']:>6.1f} {p['requests']:>9} {p['failed']:>7} "
            f"{p['requests_per_s']:>7.1f} {lat.get('p50', 0):>8.1f} {lat.get('p90', 0):>8.1f} "
            f"{lat.get('p99', 0):>8.1f}  {p['generations']}"
        )
    a = report["add"]
    lines.append(
        f"index add: {a['wall_s']:.1f} s (generation {a['generation']}); the server answered "
        f"from it {a['server_switched_after_publish_s']} s after it was published"
    )
    for who, f in report["found_by_own_captions"].items():
        lines.append(
            f"found by their own captions, {who.replace('_', ' ')}: R@1 {f['R@1']}, R@5 "
            f"{f['R@5']}, R@10 {f['R@10']} ({f['captions']} captions of {f['photos']} photos; "
            f"{f['photos_found_in_top_k']} photos in a top {report['k']})"
        )
    la = report["phase_load_average"]
    lines.append(
        f"load average (1 min): {la['start'][0]:.2f} at start, {la['during'][0]:.2f} after the "
        f"add, {la['after'][0]:.2f} at the end, on {report['machine']['cpus']} CPUs"
    )
    return "\n".join(lines)
