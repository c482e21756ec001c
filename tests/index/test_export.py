"""Exports against golden files of a three-image fixture (the tiny run's 'test' split).

Regenerate the golden files after an intended format change with
``MMSPARSE_UPDATE_GOLDEN=1 python -m pytest tests/index/test_export.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from mmsparse.cli.main import main
from mmsparse.errors import MMSparseError
from mmsparse.index.export import export_run, feature_name, write_bulk
from mmsparse.index.quantize import quantize

GOLDEN = Path(__file__).parent / "golden"
FILES = {
    "anserini": ["collection/part-00000.jsonl", "queries.tsv"],
    "opensearch": ["mapping.json", "bulk.ndjson", "example_query.json", "example_knn_query.json"],
    "elasticsearch": [
        "mapping.json",
        "bulk.ndjson",
        "example_query.json",
        "example_knn_query.json",
    ],
}


def parse(path: Path):
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    if path.suffix in (".jsonl", ".ndjson"):
        return [json.loads(line) for line in text.splitlines()]
    return text.splitlines()


def assert_close(got, want, where=""):
    """Equal structure, strings and integers; floats within 1e-5 (platform rounding)."""
    assert type(got) is type(want) or {type(got), type(want)} <= {int, float}, where
    if isinstance(want, dict):
        assert list(got) == list(want), where
        for key in want:
            assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-5), where
    else:
        assert got == want, where


@pytest.mark.parametrize("fmt", ["anserini", "opensearch", "elasticsearch"])
def test_export_matches_golden(tiny_run, tmp_path, fmt):
    out = tmp_path / fmt
    info = export_run(tiny_run, out, split="test", fmt=fmt, image_topk=6, text_topk=4)
    assert info["n_images"] == 3 and info["n_queries"] == 6 and info["image_topk"] == 6
    golden = GOLDEN / fmt
    if os.environ.get("MMSPARSE_UPDATE_GOLDEN"):
        for name in FILES[fmt]:
            (golden / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / name, golden / name)
    for name in FILES[fmt]:
        assert_close(parse(out / name), parse(golden / name), f"{fmt}/{name}")
    assert set(info["files"]) == {*FILES[fmt], "export.json"}


def test_anserini_impacts_are_quantized_weights(tiny_run, tmp_path):
    from mmsparse.index.encode import encode_vectors
    from mmsparse.runs import load_run, load_run_data

    export_run(tiny_run, tmp_path, split="test", fmt="anserini", image_topk=6)
    run = load_run(tiny_run)
    store = load_run_data(run)
    rows = store.split("test").image_rows
    _, sparse = encode_vectors(run.model, store.image_feats[rows], "image", topk=6)
    q, scale = quantize(sparse, "uint8")
    docs = parse(tmp_path / "collection" / "part-00000.jsonl")
    assert json.loads((tmp_path / "export.json").read_text())["doc_scale"] == pytest.approx(scale)
    for i, doc in enumerate(docs):
        assert doc["id"] == store.image_ids[rows[i]]
        assert doc["contents"] == store.image_filenames[rows[i]]
        want = {run.vocab.term(int(t)): int(v) for t, v in zip(q[i].indices, q[i].data)}
        assert doc["vector"] == want
        assert all(isinstance(v, int) and 1 <= v <= 255 for v in doc["vector"].values())
    assert max(max(d["vector"].values()) for d in docs) == 255
    # Queries: each term repeated by its integer impact.
    line = (tmp_path / "queries.tsv").read_text().splitlines()[0]
    qid, terms = line.split("\t")
    assert qid == store.caption_ids[store.split("test").caption_rows[0]]
    assert len(terms.split()) >= 1


def test_bulk_feature_names_escape_dots(tmp_path):
    assert feature_name("a.b%c") == "a%2Eb%25c"
    terms = ["dog", ".", "##.", "50%"]
    docs = sp.csr_matrix(np.array([[0.5, 0.25, 0.0, 2.0], [0.0, 1.0, 0.125, 0.0]], np.float32))
    dense = np.eye(2, 3, dtype=np.float32)
    write_bulk(
        tmp_path,
        "elasticsearch",
        docs,
        dense,
        ["a", "b"],
        ["a.jpg", ""],
        terms,
        docs[:1],
        dense[:1],
        "idx",
    )
    lines = parse(tmp_path / "bulk.ndjson")
    assert lines == [
        {"index": {"_index": "idx", "_id": "a"}},
        {
            "image_id": "a",
            "filename": "a.jpg",
            "sparse": {"dog": 0.5, "%2E": 0.25, "50%25": 2.0},
            "dense": [1.0, 0.0, 0.0],
        },
        {"index": {"_index": "idx", "_id": "b"}},
        {
            "image_id": "b",
            "filename": "",
            "sparse": {"%2E": 1.0, "##%2E": 0.125},
            "dense": [0.0, 1.0, 0.0],
        },
    ]
    query = parse(tmp_path / "example_query.json")
    assert query["query"]["sparse_vector"]["query_vector"] == {
        "dog": 0.5,
        "%2E": 0.25,
        "50%25": 2.0,
    }
    mapping = parse(tmp_path / "mapping.json")
    assert mapping["mappings"]["properties"]["sparse"]["type"] == "sparse_vector"
    assert mapping["mappings"]["properties"]["dense"]["dims"] == 3


def test_export_cli_and_errors(tiny_run, tmp_path, capsys):
    assert (
        main(
            [
                "export",
                str(tiny_run),
                "--split",
                "test",
                "--format",
                "opensearch",
                "--out",
                str(tmp_path / "os"),
                "--json",
            ]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "opensearch" and (tmp_path / "os" / "bulk.ndjson").is_file()
    with pytest.raises(MMSparseError, match="unknown export format"):
        export_run(tiny_run, tmp_path / "x", fmt="solr")


def test_exports_never_contain_special_tokens(tiny_run, tmp_path):
    """[PAD], [CLS], [SEP], [UNK], [MASK]: masked at encoding, whatever the weights say."""
    from mmsparse.runs import load_run

    specials = [t for t in load_run(tiny_run).vocab.tokens if t.startswith("[")]
    assert specials  # the tiny vocabulary has BERT's special tokens
    for fmt in ("anserini", "opensearch"):
        out = tmp_path / fmt
        export_run(tiny_run, out, split="val", fmt=fmt)
        text = "".join(p.read_text() for p in out.rglob("*") if p.is_file())
        assert not [t for t in specials if t in text], fmt


def test_export_refuses_a_non_empty_out_unless_overwrite(tiny_run, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "queries.tsv").write_text("my own queries\n")
    (out / "export.json").write_text("{}")
    args = ["export", str(tiny_run), "--split", "test", "--format", "anserini", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mmsparse: error: {out}: directory exists and is not empty")
    assert "--overwrite" in err and "\n" not in err
    assert (out / "queries.tsv").read_text() == "my own queries\n"  # untouched
    assert (out / "export.json").read_text() == "{}"
    assert not (out / "collection").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(MMSparseError, match="exists and is not a directory"):
        export_run(tiny_run, tmp_path / "file", split="test", overwrite=True)
    (out / "notes.txt").write_text("kept")
    assert main([*args, "--overwrite"]) == 0
    assert (out / "queries.tsv").read_text() != "my own queries\n"
    assert json.loads((out / "export.json").read_text())["format"] == "anserini"
    assert (out / "notes.txt").read_text() == "kept"
    # An empty folder needs no --overwrite.
    (tmp_path / "empty").mkdir()
    export_run(tiny_run, tmp_path / "empty", split="test", fmt="opensearch")
