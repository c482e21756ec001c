"""Checkpoints that can't silently rot (checksums on load) and the usual file permissions."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from mmsparse.cli.main import main
from mmsparse.data import write_release
from mmsparse.errors import CheckpointError, DataError
from mmsparse.io_utils import (
    CHECKSUMS_NAME,
    save_tensors,
    set_verify,
    verify_checksums,
    write_checksums,
)
from mmsparse.model import SparseDenseModel
from mmsparse.train import train
from mmsparse.train.trainer import resume_config
from tests.train.test_trainer import _cfg


def _flip(path, offset=None, n=64):
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if offset is None else offset
    for i in range(start, start + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_store):
    root = tmp_path_factory.mktemp("ck")
    old = os.umask(0o022)
    try:
        write_release(tiny_store, root / "data", "synth")
        tiny_store.bundle.save(root / "data" / "bundle")
        cfg = _cfg(
            "train.epochs=2", f"data.path={root / 'data'}", f"data.bundle={root / 'data/bundle'}"
        )
        run = root / "run"
        train(cfg, run)
    finally:
        os.umask(old)
    return run


def test_checksums_record_and_detect_a_change(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    write_checksums(tmp_path, ["a.bin"])
    record = json.loads((tmp_path / CHECKSUMS_NAME).read_text())
    assert record["algorithm"] == "sha256" and len(record["files"]["a.bin"]) == 64
    verify_checksums(tmp_path)
    _flip(tmp_path / "a.bin", 10, 1)
    with pytest.raises(CheckpointError, match=r"a\.bin: checksum mismatch.*--no-verify"):
        verify_checksums(tmp_path)
    set_verify(False)
    try:
        verify_checksums(tmp_path)  # the explicit way to skip the check
    finally:
        set_verify(True)
    (tmp_path / "a.bin").unlink()
    with pytest.raises(CheckpointError, match="a.bin: file not found"):
        verify_checksums(tmp_path)


def test_env_switches_verification_off(tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(b"x")
    write_checksums(tmp_path, ["a.bin"])
    (tmp_path / "a.bin").write_bytes(b"y")
    monkeypatch.setenv("MMSPARSE_NO_VERIFY", "1")
    verify_checksums(tmp_path)


def test_damaged_best_model_is_refused_on_load(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    assert (copy / "best" / CHECKSUMS_NAME).is_file()
    SparseDenseModel.from_pretrained(copy / "best")
    _flip(copy / "best" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"best/model\.safetensors: checksum mismatch"):
        SparseDenseModel.from_pretrained(copy / "best")


def test_damaged_checkpoint_on_the_command_line(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    _flip(copy / "best" / "model.safetensors")
    for argv in (
        ["evaluate", str(copy)],
        ["index", "build", str(copy), "--out", str(tmp_path / "idx")],
        ["explain", str(copy), "--image", "0"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "model.safetensors: checksum mismatch" in err and "--no-verify" in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "idx").exists()  # no index stamped with the damaged file's hash
    assert main(["evaluate", str(copy), "--no-verify", "--json"]) == 0
    capsys.readouterr()


def test_damaged_resume_state_is_refused(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    pointer = json.loads((copy / "checkpoints" / "latest.json").read_text())
    state = copy / "checkpoints" / pointer["dir"] / "trainer_state.safetensors"
    _flip(state)
    cfg = resume_config(copy)
    with pytest.raises(CheckpointError, match="trainer_state.safetensors: checksum mismatch"):
        train(cfg, copy, resume=True)


def test_damaged_bundle_is_refused(tiny_release):
    from mmsparse.data import BackboneBundle

    _flip(tiny_release / "bundle" / "bundle.safetensors", n=8)
    with pytest.raises(DataError, match="bundle.safetensors: checksum mismatch"):
        BackboneBundle.load(tiny_release / "bundle")


def test_written_files_have_the_usual_permissions(run_dir, tmp_path, umask_022):
    save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)})
    assert _mode(tmp_path / "t.safetensors") == 0o644
    assert _mode(run_dir / "best") == 0o755
    for path in [*run_dir.rglob("*"), *(run_dir.parent / "data").rglob("*")]:
        if path.is_dir():
            assert _mode(path) == 0o755, path
        else:
            assert _mode(path) == 0o644, path


def test_bundle_files_have_the_usual_permissions(tiny_store, tmp_path, umask_022):
    tiny_store.bundle.save(tmp_path / "bundle")
    for path in (tmp_path / "bundle").iterdir():
        assert _mode(path) == 0o644, path


def test_a_deleted_checksum_record_warns_and_can_be_recorded_again(tmp_path, caplog):
    from mmsparse.io_utils import record_checksums

    model = SparseDenseModel(d_img=6, d_txt=5, dense_dim=4, d_word=3, vocab_size=12)
    directory = model.save_pretrained(tmp_path / "m")
    (directory / CHECKSUMS_NAME).unlink()
    with caplog.at_level("WARNING", logger="mmsparse"):
        SparseDenseModel.from_pretrained(directory)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and str(directory) in warned[0]
    assert "unverified" in warned[0] and "--no-verify" in warned[0]
    assert "record_checksums" in warned[0]
    caplog.clear()
    set_verify(False)
    try:  # switched off on purpose: nothing to warn about
        with caplog.at_level("WARNING", logger="mmsparse"):
            SparseDenseModel.from_pretrained(directory)
        assert not caplog.records
    finally:
        set_verify(True)
    record_checksums(directory)  # the way the warning gives
    assert set(json.loads((directory / CHECKSUMS_NAME).read_text())["files"]) == {
        "model.json",
        "model.safetensors",
    }
    _flip(directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        SparseDenseModel.from_pretrained(directory)
