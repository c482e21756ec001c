"""The run folder: foreign folders refused, one training at a time, disk-full errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmsparse.config import RunConfig, apply_overrides
from mmsparse.errors import ConfigError
from mmsparse.train import train
from tests.helpers import TINY_OVERRIDES, write_train_config


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


_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_folder_another_training_holds_is_refused(tmp_path, tiny_store):
    run = tmp_path / "r"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run / ".train.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"{run}: another training is writing this run"):
            train(_cfg(), run, store=tiny_store)
        assert not (run / "config.json").exists()
    finally:
        holder.stdin.close()
        holder.wait()
    # the holder has exited (as after a crash or kill -9): the folder is free again
    assert train(_cfg(), run, store=tiny_store).epochs_run == 1
    assert not (run / ".train.lock").exists()  # removed when the training ends


_FIRST = """
import pathlib, sys, time
import mmsparse.train.trainer as T
from mmsparse.config import load_config
from mmsparse.train.callbacks import Callback, default_callbacks

gate = pathlib.Path(sys.argv[3])


class Wait(Callback):
    def on_epoch_end(self, trainer, epoch, record, val):
        if epoch == 2:  # epoch 1 is checkpointed: the folder holds a run in progress
            print("waiting", flush=True)
            while not gate.exists():
                time.sleep(0.01)


T.default_callbacks = lambda trainer: [*default_callbacks(trainer), Wait()]
T.train(load_config(sys.argv[1]), sys.argv[2])
"""


def test_two_trainings_into_one_folder_at_once(tmp_path, tiny_release):
    """The second (here a --resume) gets a one-line error; the first's records agree."""
    cfg = write_train_config(tmp_path / "cfg.json", tiny_release, epochs=4)
    run, gate = tmp_path / "run", tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-c", _FIRST, str(cfg), str(run), str(gate)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout.readline().strip() == "waiting", first.stderr.read()
        resume = ["train", "--config", str(cfg), "--out", str(run), "--resume"]
        second = subprocess.run(
            [sys.executable, "-m", "mmsparse", *resume], capture_output=True, text=True
        )
    finally:
        gate.touch()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2, second.stderr
    assert (
        second.stderr.strip()
        .splitlines()[-1]
        .startswith(f"mmsparse: error: {run}: another training is writing this run folder")
    )
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["type"], r["epoch"]) for r in records] == [
        (kind, e) for e in range(1, 5) for kind in ("train", "val")
    ]
    final = json.loads((run / "final.json").read_text())
    best = [r for r in records if r["type"] == "val" and r["epoch"] == final["best_epoch"]]
    assert best[0]["t2i/sparse/R@1"] == final["best_metric"]


def test_a_lock_file_left_by_kill_9_does_not_block_a_moved_run(tmp_path, tiny_store):
    run = tmp_path / "r"
    train(_cfg(), run, store=tiny_store)
    (run / ".train.lock").write_text("pid 999999 on elsewhere\n")  # what kill -9 leaves
    moved = tmp_path / "moved"
    run.rename(moved)
    cfg = _cfg("train.epochs=2")
    with pytest.raises(ConfigError, match=r"different config \(keys train.epochs\)"):
        train(cfg, moved, store=tiny_store, resume=True)  # reached the resume checks
    assert train(_cfg(), moved, store=tiny_store, resume=True).epochs_run == 1
    assert not (moved / ".train.lock").exists()


def _disk_full(kind):
    if kind == "oserror":
        import errno
        import os

        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    from safetensors import SafetensorError

    return SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
        'space left on device" })'
    )


@pytest.mark.parametrize("kind", ["oserror", "safetensors"])
@pytest.mark.parametrize("fail_at", [1, 2])  # best/ of epoch 1, its checkpoint
def test_disk_full_while_saving_is_one_line_and_the_run_resumes(
    tmp_path, tiny_store, monkeypatch, kind, fail_at
):
    import safetensors.torch

    from mmsparse.errors import CheckpointError

    real, calls = safetensors.torch.save_file, {"n": 0}

    def full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise _disk_full(kind)
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    run = tmp_path / "r"
    cfg = _cfg("train.epochs=2")
    with pytest.raises(CheckpointError) as err:
        train(cfg, run, store=tiny_store)
    message = str(err.value)
    assert "\n" not in message and "no space left on device" in message.lower()
    assert str(run) in message and "--resume" in message
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    res = train(cfg, run, store=tiny_store, resume=True)
    assert res.epochs_run == 2 and (run / "best" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "path,names",
    [
        ("{tmp}/no-such-data", ["--set data.path="]),
        ("${{MMSPARSE_FLICKR8K:-{tmp}/no-such-data}}", ["MMSPARSE_FLICKR8K", "--set data.path="]),
        ("", ["--set data.path="]),
    ],
)
def test_a_missing_data_folder_names_the_fix(tmp_path, monkeypatch, capsys, path, names):
    from mmsparse.cli.main import main

    monkeypatch.delenv("MMSPARSE_FLICKR8K", raising=False)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"data": {"path": path.format(tmp=tmp_path)}}))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("mmsparse: error: ")
    for name in names:
        assert name in lines[-1], lines[-1]
    # resuming the failed start: the same fix
    assert main(["train", "--out", str(tmp_path / "r"), "--resume"]) == 2
    assert "--set data.path=" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_resumed_run_whose_data_moved_says_to_put_it_back(tmp_path, tiny_release, capsys):
    from mmsparse.cli.main import main

    cfg = tmp_path / "cfg.json"
    data = {"path": str(tiny_release), "bundle": str(tiny_release / "bundle")}
    cfg.write_text(json.dumps({"data": data, "model": {"dense_dim": 16}, "train": {"epochs": 1}}))
    out = str(tmp_path / "r")
    assert main(["train", "--config", str(cfg), "--out", out, "--set", "train.progress=false"]) == 0
    tiny_release.rename(tmp_path / "elsewhere")
    assert main(["train", "--out", out, "--resume"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "dataset directory not found" in last and "put the features back" in last
