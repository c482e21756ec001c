"""The CLI's thread policy (mmsparse.threads) and the options every command takes."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmsparse
from mmsparse.cli.main import build_parser, main
from mmsparse.errors import ConfigError
from mmsparse.threads import (
    POOL_ENV,
    auto_threads,
    busy_cores,
    configure_threads,
    decide_threads,
    parse_threads,
)


@pytest.fixture
def clean_env(monkeypatch):
    for key in (*POOL_ENV, "OMP_WAIT_POLICY", "MMSPARSE_THREADS"):
        monkeypatch.delenv(key, raising=False)
    yield monkeypatch
    torch.set_num_threads(1)


def test_auto_threads_uses_the_free_cores():
    assert auto_threads(cpus=2, busy=0.05) == 2  # idle: every core
    assert auto_threads(cpus=2, busy=1.0) == 1  # one core spinning elsewhere
    assert auto_threads(cpus=2, busy=3.7) == 1  # never fewer than one
    assert auto_threads(cpus=8, busy=2.2) == 6
    assert auto_threads(cpus=1, busy=0.0) == 1


def test_busy_cores_is_measured_on_linux():
    busy = busy_cores(0.05)
    if busy is None:
        pytest.skip("no /proc/stat here")
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 0.01


def test_parse_threads():
    assert parse_threads(None) is None and parse_threads("auto") is None
    assert parse_threads("3") == 3 and parse_threads(2) == 2
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match="--threads must be a positive integer"):
            parse_threads(bad)


def test_decide_threads_order(clean_env):
    clean_env.setenv("OMP_NUM_THREADS", "3")
    assert decide_threads([]) == (3, "OMP_NUM_THREADS")
    clean_env.setenv("MMSPARSE_THREADS", "2")
    assert decide_threads([]) == (2, "MMSPARSE_THREADS")
    assert decide_threads(["demo", "--threads", "1"]) == (1, "--threads")
    assert decide_threads(["demo", "--threads=4"]) == (4, "--threads")
    clean_env.delenv("MMSPARSE_THREADS")
    clean_env.delenv("OMP_NUM_THREADS")
    n, reason = decide_threads([])
    assert reason.startswith("auto") and 1 <= n <= (os.cpu_count() or 1)


def test_configure_threads_sets_passive_waiting_and_the_pools(clean_env):
    assert configure_threads(["--threads", "2"]) == 2
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    # NUMBA_NUM_THREADS is left alone once numba is imported (its pool size is read once)
    pools = [k for k in POOL_ENV if k != "NUMBA_NUM_THREADS" or "numba" not in sys.modules]
    assert all(os.environ[key] == "2" for key in pools)
    assert torch.get_num_threads() == 2
    clean_env.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a user's own setting is kept
    configure_threads(["--threads", "1"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and torch.get_num_threads() == 1


def test_every_command_takes_threads_and_no_verify():
    def leaves(parser):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield parser
        for action in subs:
            for child in action.choices.values():
                yield from leaves(child)

    parsers = list(leaves(build_parser()))
    assert len(parsers) > 10
    for parser in parsers:
        assert "--threads" in parser._option_string_actions, parser.prog
        assert "--no-verify" in parser._option_string_actions, parser.prog


def test_cli_threads_option(clean_env, capsys):
    assert main(["demo", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert "--threads must be a positive integer" in err and len(err.strip().splitlines()) == 1
    assert main(["--threads", "2", "evaluate", "/nonexistent-run"]) == 2
    assert torch.get_num_threads() == 2
    assert main(["evaluate", "/nonexistent-run", "--threads", "1"]) == 2
    assert torch.get_num_threads() == 1
    capsys.readouterr()


def test_passive_wait_policy_reaches_a_fresh_process(tmp_path):
    """In a new process the policy is in place before torch starts its OpenMP pool."""
    env = {k: v for k, v in os.environ.items() if k not in (*POOL_ENV, "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = str(Path(mmsparse.__file__).resolve().parents[1])
    code = (
        "import os, sys\n"
        "from mmsparse.cli.main import main\n"
        "main(['--threads', '1', 'evaluate', '/nonexistent-run'])\n"
        "import torch\n"
        "print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split() == ["PASSIVE", "1"], out.stderr


def test_noisy_library_loggers_are_quiet(capsys):
    main(["evaluate", "/nonexistent-run"])
    capsys.readouterr()
    assert logging.getLogger("faiss").level == logging.WARNING
    assert logging.getLogger("milvus_lite").level == logging.WARNING


def test_configure_threads_after_numba_started_its_pool(clean_env):
    numba = pytest.importorskip("numba")

    @numba.njit(parallel=True)
    def _sum(x):
        total = 0.0
        for i in numba.prange(x.shape[0]):
            total += x[i]
        return total

    import numpy as np

    _sum(np.ones(10))  # the pool is launched
    before = os.environ.get("NUMBA_NUM_THREADS")
    configure_threads(["--threads", "1"])
    configure_threads(["--threads", "2"])  # used to make numba raise on its next use
    assert _sum(np.ones(10)) == 10.0
    assert os.environ.get("NUMBA_NUM_THREADS") == before
