from __future__ import annotations

import json

import numpy as np
import pytest

from mmsparse.cli.main import main
from mmsparse.data import BackboneBundle, Vocabulary, write_feature_parquet
from mmsparse.evaluate import metrics_from_run, read_qrels, read_run
from tests.helpers import write_train_config


def _config(tmp_path, data, **train):
    return write_train_config(tmp_path / "cfg.json", data, **{"epochs": 2, **train})


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def trained(tmp_path, tiny_release, capsys):
    cfg = _config(tmp_path, tiny_release)
    code, out, _ = _run(
        capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--json"
    )
    assert code == 0
    summary = json.loads(out)  # stdout holds exactly one JSON object
    assert summary["epochs_run"] == 2
    return tmp_path / "run"


def test_evaluate_json_and_trec_files_agree(trained, tmp_path, capsys):
    code, out, _ = _run(
        capsys,
        "evaluate",
        str(trained),
        "--split",
        "test",
        "--json",
        "--trec",
        str(tmp_path / "trec"),
    )
    assert code == 0
    result = json.loads(out)
    assert result["split"] == "test" and result["n_images"] == 40
    for direction in ("t2i", "i2t"):
        qrels = read_qrels(tmp_path / "trec" / f"{direction}.qrels")
        for st in ("dense", "sparse", "hybrid"):
            run = read_run(tmp_path / "trec" / f"{direction}.{st}.trec")
            assert metrics_from_run(run, qrels) == pytest.approx(result[direction][st])
    assert json.loads((trained / "eval_test.json").read_text())["t2i"] == result["t2i"]


def test_evaluate_table_and_pruning(trained, capsys):
    code, out, _ = _run(
        capsys, "evaluate", str(trained), "--split", "val", "--text-topk", "4", "--image-topk", "6"
    )
    assert code == 0
    assert "t2i R@1" in out and "sparse" in out and "hybrid" in out
    saved = json.loads((trained / "eval_val.json").read_text())
    assert saved["sparsity"]["text_nnz"] <= 4 and saved["sparsity"]["image_topk"] == 6
    assert "img words %" in out and "cap words %" in out
    readable = saved["readability"]
    assert readable["k"] == 10
    assert 0 <= readable["image_terms_in_captions"] <= readable["image_content_terms"] <= 100


def test_restricted_vocabulary_run_end_to_end(tmp_path, tiny_release, capsys):
    cfg = _config(tmp_path, tiny_release)
    run = tmp_path / "restricted"
    code, out, err = _run(
        capsys,
        "train",
        "--config",
        str(cfg),
        "--out",
        str(run),
        "--set",
        "model.vocab_restrict=train-captions-content",
        "--set",
        "objective.train_text_topk=5",
        "--set",
        "objective.reg=flops",
        "--set",
        "objective.sparse_scale=learned",
        "--set",
        "objective.lexical_weight=0.1",
        "--json",
    )
    assert code == 0, err
    model = json.loads((run / "best" / "model.json").read_text())
    assert model["vocab_restricted"] and model["n_terms"] < 122
    code, out, _ = _run(capsys, "evaluate", str(run), "--split", "val", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["sparsity"]["text_nnz"] <= 5  # the training cap holds at serving
    code, out, err = _run(capsys, "explain", str(run), "--caption-id", "0", "--json")
    assert code == 0, err
    terms = json.loads(out)
    assert terms


def test_training_cap_above_the_vocabulary_is_refused(tmp_path, tiny_release, capsys):
    cfg = _config(tmp_path, tiny_release)
    for k, msg in (("500", "exceeds the sparse head's 122 terms"), ("0", "at least 1")):
        code, _out, err = _run(
            capsys,
            "train",
            "--config",
            str(cfg),
            "--out",
            str(tmp_path / f"r{k}"),
            "--set",
            f"objective.train_image_topk={k}",
        )
        assert code == 2 and "objective.train_image_topk" in err and msg in err
        assert len(err.strip().splitlines()) == 1


def test_evaluate_on_other_data_of_another_vocabulary(trained, tiny_release, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    for f in tiny_release.iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    BackboneBundle(name="x", vocab=Vocabulary([f"w{i}" for i in range(7)])).save(other / "bundle")
    code, out, err = _run(capsys, "evaluate", str(trained), "--data", str(other))
    assert code == 2 and out == ""
    assert "vocabulary has 122 terms but the data's bundle" in err
    assert len(err.strip().splitlines()) == 1


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_release, capsys):
    cfg = _config(tmp_path, tiny_release)
    data = json.loads(cfg.read_text())
    data["train"]["lrr"] = 1
    cfg.write_text(json.dumps(data))
    code, _, err = _run(capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert code == 2 and "unknown config key 'train.lrr'" in err
    assert len(err.strip().splitlines()) == 1

    cfg = _config(tmp_path, tiny_release)
    path = tiny_release / "img_embs_before_proj_synth.parquet"
    emb = np.ones((240, 24), np.float32)
    emb[17, 3] = np.nan
    write_feature_parquet(path, [str(i) for i in range(240)], emb)
    code, _, err = _run(capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "r2"))
    assert code == 2 and "NaN or inf in feature at row 17, id 17" in err

    code, _, err = _run(capsys, "evaluate", str(tmp_path / "missing"))
    assert code == 2 and "run directory not found" in err

    code, _, err = _run(capsys, "train", "--out", str(tmp_path / "r3"))
    assert code == 2 and "needs --config" in err

    code, _, err = _run(capsys, "bench", "frontier", "--jobs", "0", "--out", str(tmp_path / "b"))
    assert code == 2 and err.strip() == "mmsparse: error: --jobs must be at least 1, got 0"


def test_demo_json(tmp_path, capsys):
    code, out, _ = _run(capsys, "demo", "--json", "--epochs", "2", "--out", str(tmp_path))
    assert code == 0
    report = json.loads(out)
    assert "SYNTHETIC" in report["note"]
    assert set(report["results"]) == {"dense backbone", "D2S", "joint (ours)"}
    joint = report["results"]["joint (ours)"]
    assert set(joint["t2i"]) == {"dense", "sparse", "hybrid"}
    assert joint["sparsity"]["text_nnz"] > 0
    assert all(isinstance(t, str) for ex in report["examples"] for t, _ in ex["image_terms"])
    # the kept runs evaluate with the usual command to the numbers the demo printed
    code, out, _ = _run(capsys, "evaluate", str(tmp_path / "joint"), "--split", "test", "--json")
    assert code == 0
    assert json.loads(out)["t2i"] == joint["t2i"]


def test_ctrl_c_during_train_names_resume(tmp_path, monkeypatch, capsys):
    import mmsparse.cli.core_cmds as core_cmds

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(core_cmds, "cmd_train", interrupted)
    out = tmp_path / "run"
    code, _, err = _run(capsys, "train", "--config", "x.json", "--out", str(out))
    assert code == 130
    assert f"mmsparse train --resume --out {out}" in err and len(err.strip().splitlines()) == 1


def test_evaluate_integrated_hybrid(trained, capsys):
    code, out, _ = _run(capsys, "evaluate", str(trained), "--json")
    published = json.loads(out)
    code, out, _ = _run(capsys, "evaluate", str(trained), "--hybrid", "integrated", "--json")
    assert code == 0
    integrated = json.loads(out)
    assert published["w1"] == pytest.approx(0.1)
    assert integrated["w1"] >= 0.1 / 0.5  # w1 / tau, tau <= tau_max = 0.5
    assert integrated["w2"] == pytest.approx(published["w2"])  # no learned scale: s = 1
    assert integrated["t2i"]["sparse"] == published["t2i"]["sparse"]
