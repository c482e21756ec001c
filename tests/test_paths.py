"""Runs that travel: absolute paths recorded, --data/--bundle/--run for moved runs, env paths."""

from __future__ import annotations

import json
import shutil

import pytest

from mmsparse.cli.main import build_parser, main
from mmsparse.config import RunConfig, apply_overrides
from mmsparse.errors import ConfigError
from mmsparse.paths import expand_path, resolve_run_paths
from tests.helpers import write_train_config


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _write_config(path, data_path, bundle_path):
    return write_train_config(path, data_path, bundle_path)


@pytest.fixture
def relative_run(tmp_path, tiny_release, monkeypatch, capsys):
    """A run trained in ``tmp_path`` with relative ``data.path`` and ``data.bundle``."""
    monkeypatch.chdir(tmp_path)
    _write_config(tmp_path / "cfg.json", "data", "data/bundle")
    code, _, err = _run(capsys, "train", "--config", "cfg.json", "--out", "runs/r", "--json")
    assert code == 0, err
    return tmp_path / "runs" / "r"


def test_expand_path_environment_and_defaults(monkeypatch):
    monkeypatch.delenv("MMSPARSE_TEST_DIR", raising=False)
    assert expand_path("${MMSPARSE_TEST_DIR:-../shared/x}") == "../shared/x"
    monkeypatch.setenv("MMSPARSE_TEST_DIR", "/data/f8k")
    assert expand_path("${MMSPARSE_TEST_DIR:-../shared/x}/sub") == "/data/f8k/sub"
    assert expand_path("$MMSPARSE_TEST_DIR") == "/data/f8k"
    monkeypatch.delenv("MMSPARSE_TEST_DIR")
    with pytest.raises(ConfigError, match="data.path=.*MMSPARSE_TEST_DIR is not set"):
        expand_path("${MMSPARSE_TEST_DIR}", "data.path")


def test_resolve_run_paths_makes_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = apply_overrides(
        RunConfig(), ["data.path=data", "data.bundle=b", "model.init_from=runs/s0"]
    )
    cfg = resolve_run_paths(cfg)
    assert cfg.data.path == str(tmp_path / "data") and cfg.data.bundle == str(tmp_path / "b")
    assert cfg.model.init_from == str(tmp_path / "runs" / "s0")


def test_run_records_absolute_paths_and_works_from_another_folder(
    relative_run, tmp_path, monkeypatch, capsys
):
    saved = json.loads((relative_run / "config.json").read_text())
    assert saved["data"]["path"] == str(tmp_path / "data")
    assert saved["data"]["bundle"] == str(tmp_path / "data" / "bundle")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = "../runs/r"
    assert _run(capsys, "evaluate", run, "--json")[0] == 0
    assert _run(capsys, "explain", run, "--caption-id", "0", "--json")[0] == 0
    assert _run(capsys, "index", "build", run, "--out", "idx", "--json")[0] == 0
    code, out, err = _run(capsys, "search", "idx", "--caption-id", "0", "--json")
    assert code == 0, err
    assert json.loads(out)["hits"]


def test_moved_run_and_data_with_data_and_bundle_options(relative_run, tmp_path, capsys):
    moved = tmp_path / "new-place"
    moved.mkdir()
    shutil.move(relative_run, moved / "r")
    shutil.move(tmp_path / "data", moved / "data")
    run = moved / "r"
    code, _, err = _run(capsys, "evaluate", run)
    assert code == 2 and "--data" in err and "data.path" in err
    assert len(err.strip().splitlines()) == 1
    # --data finds the bundle in its bundle/ subfolder
    assert _run(capsys, "evaluate", run, "--data", moved / "data", "--json")[0] == 0
    shutil.move(moved / "data" / "bundle", moved / "bundle")
    code, _, err = _run(capsys, "evaluate", run, "--data", moved / "data")
    assert code == 2 and "--bundle" in err and "data.bundle" in err
    args = ("--data", moved / "data", "--bundle", moved / "bundle")
    assert _run(capsys, "evaluate", run, *args, "--json")[0] == 0
    assert _run(capsys, "explain", run, "--caption-id", "0", *args, "--json")[0] == 0
    assert _run(capsys, "index", "build", run, "--out", tmp_path / "idx", *args)[0] == 0
    assert (
        _run(capsys, "export", run, "--format", "anserini", "--out", tmp_path / "ex", *args)[0] == 0
    )
    code, _, err = _run(capsys, "search", tmp_path / "idx", "--caption-id", "0", *args)
    assert code == 0, err


def test_index_whose_run_is_gone_names_the_run_option(relative_run, tmp_path, capsys):
    assert _run(capsys, "index", "build", relative_run, "--out", tmp_path / "idx")[0] == 0
    shutil.move(relative_run, tmp_path / "moved-run")
    code, _, err = _run(capsys, "search", tmp_path / "idx", "--caption-id", "0")
    assert code == 2 and "--run" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(
        capsys, "search", tmp_path / "idx", "--caption-id", "0", "--run", tmp_path / "moved-run"
    )
    assert code == 0, err


def test_config_paths_from_the_environment(tmp_path, tiny_release, monkeypatch, capsys):
    cfg = _write_config(
        tmp_path / "cfg.json",
        "${MMSPARSE_FLICKR8K:-/nowhere}",
        "${MMSPARSE_FLICKR8K:-/nowhere}/bundle",
    )
    monkeypatch.setenv("MMSPARSE_FLICKR8K", str(tiny_release))
    code, _, err = _run(capsys, "train", "--config", cfg, "--out", tmp_path / "r", "--json")
    assert code == 0, err
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["data"]["path"] == str(tiny_release)
    assert saved["data"]["bundle"] == str(tiny_release / "bundle")


def test_bench_flickr8k_reads_the_data_folder_from_the_environment(monkeypatch):
    monkeypatch.setenv("MMSPARSE_FLICKR8K", "/data/flickr8k")
    args = build_parser().parse_args(["bench", "flickr8k"])
    assert args.data == "/data/flickr8k"


def test_shipped_flickr8k_configs_honour_the_environment(monkeypatch):
    from mmsparse.config import load_config
    from tests.helpers import REPO

    monkeypatch.setenv("MMSPARSE_FLICKR8K", "/data/flickr8k")
    for name in ("flickr8k.json", "flickr8k-stage0.json"):
        cfg = resolve_run_paths(load_config(REPO / "configs" / name))
        assert cfg.data.path == "/data/flickr8k"
