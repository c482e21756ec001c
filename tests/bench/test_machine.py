"""The machine record every benchmark writes: one shape, written in one place."""

from __future__ import annotations

import ast
import json
import os

import pytest

from mmsparse.bench import machine
from mmsparse.bench.machine import MACHINE_KEYS, describe_machine, load_average, machine_record
from tests.helpers import REPO

BENCH = REPO / "src" / "mmsparse" / "bench"


def test_record_has_the_documented_keys_and_is_strict_json():
    rec = machine_record([9.0, 8.0, 7.0])
    assert tuple(rec) == MACHINE_KEYS
    json.dumps(rec, allow_nan=False)
    assert rec["load_average"]["start"] == [9.0, 8.0, 7.0]
    assert rec["load_average"]["end"] == load_average()
    assert rec["cpus"] == os.cpu_count() and rec["cpus_available"] >= 1
    assert set(rec["env"]) == {"OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MMSPARSE_THREADS"}
    assert rec["numpy"] and rec["python"]


def test_record_without_a_start_takes_the_load_now():
    rec = machine_record()
    assert rec["load_average"]["start"] == rec["load_average"]["end"]


def test_threads_are_torchs_when_torch_is_loaded():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert machine_record()["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_describe_machine_names_cpu_threads_and_load():
    rec = dict(machine_record([1.0, 2.0, 3.0]), cpu="Test CPU", threads=3, gpu="Test GPU")
    text = describe_machine(rec)
    assert text.startswith("Test CPU, ") and "3 threads" in text and "GPU Test GPU" in text
    assert "load average [1.0, 2.0, 3.0] at start" in text
    assert describe_machine({}) == "unknown CPU"


def test_only_the_machine_module_asks_the_machine():
    """Every benchmark gets its machine description and load from mmsparse.bench.machine."""
    asks = {"getloadavg", "cpu_count", "platform", "python_version", "processor"}
    for path in sorted(BENCH.rglob("*.py")):  # packages' modules too (bench/retrieval/)
        if path.name == "machine.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert "platform" not in {a.name for a in node.names}, path.name
            if isinstance(node, ast.Attribute) and node.attr in asks - {"cpu_count"}:
                if isinstance(node.value, ast.Name) and node.value.id in ("os", "platform"):
                    pytest.fail(f"{path.name}:{node.lineno} asks the machine itself ({node.attr})")
        assert "/proc/cpuinfo" not in path.read_text(), path.name


def test_machine_module_is_what_the_benchmarks_import():
    users = {  # a benchmark is a module of bench/ or a package there (its first part)
        p.relative_to(BENCH).parts[0].removesuffix(".py")
        for p in BENCH.rglob("*.py")
        if "from mmsparse.bench.machine import" in p.read_text()
    }
    assert {"flickr8k", "frontier", "honest", "retrieval", "serve", "steps", "train"} <= users
    assert machine.__name__ == "mmsparse.bench.machine"
