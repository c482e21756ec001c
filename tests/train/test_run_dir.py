"""The run folder: foreign folders refused, one training at a time, disk-full errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmsparse.config import RunConfig, apply_overrides
from mmsparse.errors import ConfigError
from mmsparse.train import train
from tests.helpers import TINY_OVERRIDES


def _cfg(*extra):
    return apply_overrides(RunConfig(name="t"), [*TINY_OVERRIDES, "train.epochs=1", *extra])


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize(
    "files",
    [
        {"notes.txt": "my notes\n"},
        # the user's own config and log, named like a run's
        {"config.json": '{"train": {"epochs": 1}}\n', "metrics.jsonl": '{"mine": 1}\n'},
    ],
)
def test_a_folder_of_the_users_files_is_refused(tmp_path, tiny_store, files):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    before = _snapshot(folder)
    with pytest.raises(ConfigError, match=rf"{folder}: holds files no mmsparse run wrote"):
        train(_cfg(), folder, store=tiny_store)
    assert _snapshot(folder) == before and sorted(p.name for p in folder.iterdir()) == sorted(files)


def test_out_dot_with_the_users_files_exits_2_and_overwrites_nothing(tmp_path, tiny_release):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "data": {"path": str(tiny_release), "bundle": str(tiny_release / "bundle")},
                "model": {"dense_dim": 16},
                "train": {"epochs": 1, "batch_size": 32, "progress": False, "plot": False},
            }
        )
    )
    (tmp_path / "metrics.jsonl").write_text('{"mine": true}\n')
    before = _snapshot(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "mmsparse", "train", "--config", "config.json", "--out", "."],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("mmsparse: error: ")
    assert "holds files no mmsparse run wrote" in proc.stderr
    assert _snapshot(tmp_path) == before


def test_empty_missing_and_run_folders_are_fine(tmp_path, tiny_store):
    (tmp_path / "empty").mkdir()
    assert train(_cfg(), tmp_path / "empty", store=tiny_store).epochs_run == 1
    assert train(_cfg(), tmp_path / "new" / "run", store=tiny_store).epochs_run == 1
    # a run folder the user added files to: resuming it is fine, the files stay
    run = tmp_path / "empty"
    (run / "notes.txt").write_text("good run\n")
    (run / "trec").mkdir()
    res = train(_cfg(), run, store=tiny_store, resume=True)
    assert res.epochs_run == 1 and (run / "notes.txt").read_text() == "good run\n"
