"""Confidence verdicts (mmsparse.index.confidence): the words of a query, the calibration's
percentiles against a float64 reference, its strict JSON round trip, and the calibration of
a tiny index through Searcher.search."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mmsparse.data.vocab import Vocabulary
from mmsparse.errors import IndexFormatError, MMSparseError
from mmsparse.index import Searcher, build_index
from mmsparse.index.confidence import (
    CALIBRATION_NAME,
    LEVELS,
    Calibration,
    assess,
    calibrate_index,
    caption_word_ids,
    load_calibration,
    query_words,
    vocabulary_word_ids,
)
from tests.serve.conftest import HashEncoder

TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "the", "on", "dog", "beach", "runs"]
TOKENS += ["red", "car", "##s", "x", "cat"]
VOCAB = Vocabulary(TOKENS)
CAPTIONS = ["A dog runs on the beach .", "The red car", "a dog"]  # 'cat' and 'x' never occur


def known() -> np.ndarray:
    return caption_word_ids(VOCAB, CAPTIONS)


def test_known_words_are_single_terms_of_the_training_captions():
    ids = known()
    assert [VOCAB.term(i) for i in ids] == ["a", "the", "on", "dog", "beach", "runs", "red", "car"]
    # A restricted head keeps only its terms.
    restricted = caption_word_ids(VOCAB, CAPTIONS, term_ids=[VOCAB.id("dog"), VOCAB.id("cat")])
    assert [VOCAB.term(i) for i in restricted] == ["dog"]
    # Without captions: every whole-word term, no '##' piece, no special token.
    assert [VOCAB.term(i) for i in vocabulary_word_ids(VOCAB)] == [
        t for t in TOKENS if not t.startswith("[") and not t.startswith("##")
    ]
    assert caption_word_ids(Vocabulary.fallback(5), CAPTIONS).size == 0


def test_query_words_split_known_unknown_and_content():
    qw = query_words("A Dog!!! xqz on the beach 🐶 42 dog", VOCAB, known())
    assert qw.words == ["a", "dog", "xqz", "on", "the", "beach", "dog"]
    assert qw.known == ["a", "dog", "on", "the", "beach"]
    assert qw.unknown == ["xqz"] and qw.content == ["dog", "beach"]
    assert qw.unknown_share == pytest.approx(1 / 7) and qw.query_class == "2"
    assert query_words("!!! 🐶 42", VOCAB, known()).words == []
    assert query_words("cat", VOCAB, known()).unknown == ["cat"]  # a term, not a caption word
    assert query_words("dogs", VOCAB, known()).unknown == ["dogs"]  # two pieces: dog ##s
    assert query_words("dog beach red car", VOCAB, known()).query_class == "3+"


@pytest.mark.parametrize(
    ("text", "score", "verdict", "reason"),
    [
        ("!!!", 3.0, "no_match", "has no word"),
        ("🐶🐶", 3.0, "no_match", "has no word"),
        ("xqz qqq", 3.0, "no_match", "no word of the query is a known word"),
        ("日本語", 3.0, "no_match", "no word of the query is a known word"),
        ("the a on", 3.0, "no_match", "only function words"),
        ("cat", 3.0, "no_match", "no word of the query is a known word"),
        ("dog", None, "no_match", "no indexed image shares a term"),
        ("dog xqz qqq", 3.0, "low_confidence", "2 of the query's words are not in"),
        ("dog", 3.0, "confident", ""),
        ("a dog runs on the beach", 3.0, "confident", ""),
        ("dog xqz", 3.0, "confident", ""),  # half unknown is not most
    ],
)
def test_verdict_from_the_words_alone(text, score, verdict, reason):
    v = assess(text, score, "sparse", VOCAB, None, known())
    assert v.verdict == verdict
    assert v.flagged == (verdict != "confident")
    assert reason in v.note()
    assert v.calibrated is False and v.percentile is None and v.threshold is None
    if verdict == "confident":
        assert v.note() == "" and v.reasons == []
    else:
        assert v.note().startswith("no good match: " if verdict == "no_match" else "low conf")


def _calibration(scores: dict[str, np.ndarray], **kw) -> Calibration:
    return Calibration(
        index_sha256="0" * 64,
        calibration_split="val",
        train_splits=["train"],
        known_word_ids=known(),
        quantiles={"sparse": {c: np.percentile(s, LEVELS).tolist() for c, s in scores.items()}},
        counts={"sparse": {c: int(s.size) for c, s in scores.items()}},
        **kw,
    )


def test_percentile_and_threshold_match_a_float64_reference():
    rng = np.random.default_rng(0)
    scores = rng.normal(20.0, 3.0, size=20001)
    cal = _calibration({"3+": scores})
    assert cal.threshold("sparse", "3+") == pytest.approx(np.percentile(scores, 2.0), rel=1e-12)
    for x in (-100.0, 12.0, 17.5, 20.0, 23.1, 29.0, 100.0):
        ref = float(np.mean(scores < x) * 100)
        assert cal.percentile("sparse", "3+", x) == pytest.approx(ref, abs=0.25)
    assert cal.percentile("sparse", "3+", -100.0) == 0.0
    assert cal.percentile("sparse", "3+", 100.0) == 100.0
    assert cal.threshold("dense", "3+") is None and cal.percentile("sparse", "1", 1.0) is None


def test_verdict_with_a_calibration_compares_with_its_own_class():
    rng = np.random.default_rng(1)
    cal = _calibration({"1": rng.uniform(10, 20, 4001), "3+": rng.uniform(30, 40, 4001)})
    low = assess("dog", 5.0, "sparse", VOCAB, cal)
    assert low.verdict == "low_confidence" and low.percentile == 0.0 and low.calibrated
    assert "below the 2nd percentile" in low.note() and "one known word" in low.note()
    mid = assess("dog", 15.0, "sparse", VOCAB, cal)
    assert mid.verdict == "confident" and mid.percentile == pytest.approx(50, abs=2)
    # The same score is low for a whole caption (class 3+), ...
    long = assess("a dog runs on the red beach", 15.0, "sparse", VOCAB, cal)
    assert long.query_class == "3+" and long.verdict == "low_confidence"
    # ... and unjudged for a class the calibration lacks (2) or a mode it lacks (dense).
    assert assess("red car", 1.0, "sparse", VOCAB, cal).verdict == "confident"
    assert assess("dog", 1.0, "dense", VOCAB, cal).verdict == "confident"
    # Its known words replace the vocabulary's: 'cat' is a term but no caption word; a query
    # without a known content word has no class to be a percentile of.
    cat = assess("cat", 15.0, "sparse", VOCAB, cal)
    assert cat.verdict == "no_match" and cat.percentile is None and cat.threshold is None
    assert cat.score == 15.0
    # Stricter percentile: flags more.
    strict = _calibration({"1": rng.uniform(10, 20, 4001)}, low_percentile=60.0)
    assert assess("dog", 15.0, "sparse", VOCAB, strict).verdict == "low_confidence"
    # JSON of a verdict: strict, finite.
    json.dumps(low.to_dict(), allow_nan=False)


def test_calibration_json_round_trip_is_strict(tmp_path):
    rng = np.random.default_rng(2)
    cal = _calibration({"1": rng.uniform(10, 20, 501), "3+": rng.normal(30, 2, 501)})
    path = cal.save(tmp_path)
    assert path.name == CALIBRATION_NAME

    def no_constants(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    data = json.loads(path.read_text(), parse_constant=no_constants)
    assert data["format"] == "mmsparse-confidence" and data["version"] == 1
    back = Calibration.load(tmp_path)
    assert back.to_dict() == cal.to_dict()
    for x in (9.0, 14.2, 31.0):
        assert back.percentile("sparse", "1", x) == pytest.approx(cal.percentile("sparse", "1", x))
    # A non-finite value is refused before anything is written.
    bad = _calibration({"1": np.array([1.0, np.nan, 3.0])})
    with pytest.raises(MMSparseError, match="not finite"):
        bad.save(tmp_path / "other")
    assert not (tmp_path / "other" / CALIBRATION_NAME).exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(format="other"), "not an mmsparse confidence calibration"),
        (lambda d: d.update(version=99), "calibration version 99"),
        (lambda d: d["quantiles"]["sparse"]["1"].reverse(), "not increasing"),
        (lambda d: d["quantiles"]["sparse"].update({"7": [1.0] * len(LEVELS)}), "bad quantile"),
        (lambda d: d.pop("known_word_ids"), "malformed calibration"),
    ],
)
def test_a_broken_calibration_file_is_a_one_line_error(tmp_path, change, match):
    rng = np.random.default_rng(3)
    path = _calibration({"1": rng.uniform(10, 20, 301)}).save(tmp_path)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match=match) as info:
        Calibration.load(tmp_path)
    assert "\n" not in str(info.value) and CALIBRATION_NAME in str(info.value)


# -- a tiny index ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(tiny_run, tmp_path_factory):
    """A tiny index built with its calibration (no text encoder: class 3+ only)."""
    out = tmp_path_factory.mktemp("confidence") / "index"
    build_index(tiny_run, out, store_dense=True, progress=False)
    return out


def test_index_build_writes_a_calibration_that_belongs_to_the_index(calibrated, tmp_path):
    cal = Calibration.load(calibrated)
    # The synthetic run has no text encoder: captions only (their stored features).
    assert set(cal.quantiles) == {"sparse", "dense", "hybrid"}
    assert all(set(per) == {"3+"} for per in cal.quantiles.values()) and cal.encoder == ""
    assert cal.counts["sparse"]["3+"] > 0 and cal.known_word_ids.size > 0
    searcher = Searcher(calibrated)
    assert searcher.calibration is not None and searcher.notes == []
    # Another build of the index (other options) does not use it.
    other = tmp_path / "other"
    shutil.copytree(calibrated, other)
    manifest = json.loads((other / "index.json").read_text())
    manifest["options"]["image_topk"] = 3
    (other / "index.json").write_text(json.dumps(manifest))
    from mmsparse.index.manifest import IndexManifest

    cal2, note = load_calibration(other, IndexManifest.load(other))
    assert cal2 is None and "belongs to another build" in note


def test_calibration_with_a_text_encoder_adds_short_queries_and_is_reproducible(calibrated):
    first = calibrate_index(calibrated, text_encoder=HashEncoder()).read_bytes()
    second = calibrate_index(calibrated, text_encoder=HashEncoder()).read_bytes()
    assert first == second
    cal = Calibration.load(calibrated)
    assert set(cal.quantiles["hybrid"]) == {"1", "2", "3+"} and cal.encoder == "HashEncoder"
    assert cal.counts["sparse"]["1"] > 5 and cal.counts["sparse"]["2"] > 5


def test_searcher_gives_every_text_query_a_verdict(calibrated):
    searcher = Searcher(calibrated)
    searcher._text_encoder = HashEncoder()
    res = searcher.search("qwxz !!! zzkv", k=5)
    assert res.confidence.verdict == "no_match" and len(res.hits) == 5  # the library keeps hits
    assert res.confidence.unknown_words == ["qwxz", "zzkv"]
    assert any(n.startswith("no good match: no word of the query") for n in res.notes)
    real = searcher.search("a dog runs on the beach", k=5, mode="hybrid")
    assert real.confidence.verdict != "no_match"
    assert {"dog", "beach"} <= set(real.confidence.known_terms)
    assert real.to_dict()["confidence"]["verdict"] == real.confidence.verdict
    cid = searcher.store().caption_ids[searcher.store().split("val").caption_rows[0]]
    assert searcher.search(caption_id=cid, k=3).confidence.known_terms


def test_an_index_without_calibration_judges_by_the_words_with_a_note(tiny_run, tmp_path):
    out = tmp_path / "index"
    build_index(tiny_run, out, progress=False, calibrate=False)
    assert not (out / CALIBRATION_NAME).exists()
    searcher = Searcher(out)
    searcher._text_encoder = HashEncoder()
    assert searcher.calibration is None
    assert any("has no confidence.json" in n for n in searcher.notes)
    res = searcher.search("qwxz", k=3)
    assert res.confidence.verdict == "no_match" and res.confidence.calibrated is False
    assert searcher.search("a dog", k=3).confidence.verdict == "confident"
