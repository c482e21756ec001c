"""What the contract promises for every engine alike: one-line errors on bad parameters
and bad queries (checked in one place), the ``live`` mask, and the same construction.

Engines whose optional package is missing are skipped with the reason.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.sparse as sp

from mmsparse.cli.main import main
from mmsparse.errors import IndexFormatError, MMSparseError, QueryError
from mmsparse.index.build import build_index
from mmsparse.index.engines import engine_names, get_engine

NEEDS = {"seismic": "seismic", "milvus": "milvus_lite", "bmp": "bmp", "kannolo": "kannolo"}
N, V = 120, 60


def _skip_missing(name: str) -> None:
    module = NEEDS.get(name)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed (pip install 'mmsparse[index]')")


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(11)
    docs = sp.random(N, V, density=0.12, random_state=rng, format="csr", dtype=np.float32)
    queries = sp.random(8, V, density=0.15, random_state=rng, format="csr", dtype=np.float32)
    dense = rng.standard_normal((N, 6)).astype(np.float32)
    return docs, queries, dense


@pytest.fixture(scope="module")
def opened(corpus, tmp_path_factory):
    """Every installed engine built on the same vectors through the registry, opened."""
    docs, _, dense = corpus
    out = {}
    for name in engine_names():
        module = NEEDS.get(name)
        if module and importlib.util.find_spec(module) is None:
            continue
        cls = get_engine(name)
        directory = tmp_path_factory.mktemp(name)
        params = cls.build(directory, docs, dense if cls.always_dense else None)
        out[name] = cls.open(directory, params, n_docs=N, vocab_size=V, dense_dim=6)
    yield out
    for engine in out.values():
        engine.close()


@pytest.mark.parametrize("name", ["inverted", "seismic", "milvus", "bmp", "kannolo"])
def test_bad_queries_get_the_same_one_line_errors_on_every_engine(name, opened, corpus):
    _skip_missing(name)
    engine, (_, queries, _) = opened[name], corpus
    with pytest.raises(QueryError, match="k must be at least 1, got 0"):
        engine.search_batch(queries, 0)
    with pytest.raises(QueryError, match="unknown search mode 'fancy'"):
        engine.search_batch(queries, 5, mode="fancy")
    with pytest.raises(IndexFormatError, match=f"have 59 dimensions but the {name} index"):
        engine.search_batch(sp.csr_matrix((1, V - 1), dtype=np.float32), 5)
    bad = queries.copy()
    bad.data[0] = -1.0
    with pytest.raises(QueryError, match="finite and non-negative"):
        engine.search_batch(bad, 5)
    bad.data[0] = np.nan
    with pytest.raises(QueryError, match="finite and non-negative"):
        engine.search_batch(bad, 5)
    with pytest.raises(QueryError, match="threads must be at least 1"):
        engine.search_batch(queries, 5, threads=0)
    if "dense" in engine.modes:
        with pytest.raises(QueryError, match="needs the queries' dense vectors"):
            engine.search_batch(queries, 5, mode="dense")
        with pytest.raises(IndexFormatError, match="dense vectors have 5 dimensions"):
            engine.search_batch(queries, 5, mode="dense", dense=np.ones((8, 5), np.float32))
    else:
        with pytest.raises(
            QueryError, match="holds sparse vectors only.*--engine inverted --dense"
        ):
            engine.search_batch(queries, 5, mode="hybrid")
    with pytest.raises(QueryError, match=rf"unknown {name} parameter\(s\) \['bogus'\] for search"):
        engine.search_batch(queries, 5, bogus=1)


@pytest.mark.parametrize(
    ("name", "key", "value", "rule"),
    [
        ("seismic", "query_cut", "ten", "int >= 1"),
        ("seismic", "heap_factor", 0, "float > 0"),
        ("kannolo", "ef_search", 2.5, "an integer"),
        ("milvus", "candidates", -3, "int >= 1"),
    ],
)
def test_bad_search_parameter_values_are_one_line_errors(name, key, value, rule, opened, corpus):
    _skip_missing(name)
    with pytest.raises(QueryError, match=rf"bad {name} parameter {key}=.*{rule}") as err:
        opened[name].search_batch(corpus[1], 5, **{key: value})
    assert "\n" not in str(err.value) and f"the {name} engine takes" in str(err.value)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("inverted", {"n_postings": 5}, r"unknown inverted parameter\(s\) \['n_postings'\]"),
        ("bmp", {"bsize": 0}, r"bad bmp parameter bsize=0: expected int in 1\.\.4096"),
        ("bmp", {"bsize": True}, r"bad bmp parameter bsize=True"),
        ("kannolo", {"m": "many"}, r"bad kannolo parameter m='many'"),
        ("seismic", {"summary_energy": float("nan")}, r"bad seismic parameter summary_energy"),
        ("milvus", {"batch_size": 0}, r"bad milvus parameter batch_size=0"),
    ],
)
def test_bad_build_parameters_are_refused_before_any_work(name, params, match, tmp_path):
    # Checked before the optional package is needed (no skip) and before writing anything.
    with pytest.raises(QueryError, match=match) as err:
        get_engine(name).build(
            tmp_path / "x", sp.csr_matrix((3, 4), dtype=np.float32), params=params
        )
    assert f"the {name} engine takes build:" in str(err.value)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["inverted", "seismic", "milvus", "bmp", "kannolo"])
def test_dead_rows_are_never_returned_and_exact_engines_stay_exact(name, opened, corpus):
    _skip_missing(name)
    engine, (docs, queries, _) = opened[name], corpus
    ref = (queries.astype(np.float64) @ docs.T.astype(np.float64)).toarray()
    live = np.ones(N, dtype=bool)
    live[np.argsort(-ref, axis=1)[:, :3].ravel()] = False  # each query's 3 best are deleted
    live[::7] = False
    hits = engine.search_batch(queries, 10, live=live)
    assert hits.rows.shape == (8, 10)
    for i in range(queries.shape[0]):
        rows, scores = hits.query(i)
        assert live[rows].all()
        if name in ("inverted", "milvus"):  # exact in float: brute force over live rows
            cand = np.flatnonzero(live & (ref[i] > 0))
            want = cand[np.lexsort((cand, -ref[i][cand]))][:10]
            np.testing.assert_allclose(scores, ref[i][want], rtol=1e-5, atol=1e-6)
    if name == "bmp":  # exact at its quantisation: the unmasked ranking without dead rows
        every = engine.search_batch(queries, 10 + int((~live).sum()))
        for i in range(queries.shape[0]):
            rows, _ = every.query(i)
            np.testing.assert_array_equal(hits.query(i)[0], rows[live[rows]][:10])


def test_every_engine_is_opened_the_same_way(opened, corpus):
    for name, engine in opened.items():
        assert type(engine).__init__ is get_engine("inverted").__init__  # one constructor
        assert (engine.n_docs, engine.vocab_size, engine.name) == (N, V, name)
        assert engine.nbytes > 0
        assert set(engine.modes) <= {"sparse", "dense", "hybrid"}
        terms, weights = engine.doc_vector(3)
        np.testing.assert_allclose(
            weights, corpus[0][3].toarray()[0][terms], rtol=2e-2 if name == "bmp" else 2e-3
        )


def test_cli_search_param_errors_are_one_line_on_the_default_engine(tiny_run, tmp_path, capsys):
    out = tmp_path / "idx"
    build_index(tiny_run, out, progress=False)
    # The example of 'search --help' on an index of the default engine: one line, no traceback.
    assert main(["search", str(out), "--caption-id", "80", "--param", "query_cut=10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmsparse: error: unknown inverted parameter(s) ['query_cut'] for search")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    argv = ["index", "build", str(tiny_run), "--out", str(tmp_path / "b")]
    assert main([*argv, "--param", "bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown inverted parameter(s) ['bogus'] for build" in err
    assert not (tmp_path / "b").exists()
    assert main([*argv, "--uri", "http://localhost:1"]) == 2
    assert "--uri applies to --engine milvus only, not inverted" in capsys.readouterr().err


def test_search_help_examples_are_real_parameters(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "e.g. --param query_cut=10 on a seismic index" in text
    assert "query_cut" in {p.name for p in get_engine("seismic").search_params}
    for name in engine_names():
        assert name in text  # every engine's search parameters (or none) are listed


def test_unknown_engine_in_a_manifest_is_a_clear_error(tiny_run, tmp_path):
    import json

    from mmsparse.index.search import Searcher

    out = tmp_path / "idx"
    build_index(tiny_run, out, progress=False)
    manifest = json.loads((out / "index.json").read_text())
    manifest["engine"] = "lucene"
    (out / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match=r"unknown engine 'lucene' \(one of inverted"):
        Searcher(out)
    with pytest.raises(MMSparseError, match="unknown engine 'lucene'"):
        build_index(tiny_run, out, engine="lucene", progress=False)


@pytest.mark.parametrize("name", ["inverted", "seismic", "bmp", "kannolo"])
def test_incremental_engines_build_any_subset_into_a_directory_of_its_own(name, corpus, tmp_path):
    """Segments: each built alone over some rows (numbered from 0), searched alone; for an
    exact engine in float, merging the segments' top-k gives the whole collection's."""
    _skip_missing(name)
    cls = get_engine(name)
    assert "incremental" in cls.capabilities
    docs, queries, _ = corpus
    bounds = [(0, 45), (45, 100), (100, N)]
    merged: list[list[tuple[float, int]]] = [[] for _ in range(queries.shape[0])]
    for s, e in bounds:
        directory = tmp_path / f"seg{s}"
        params = cls.build(directory, docs[s:e], image_ids=[f"img{r}" for r in range(s, e)])
        with cls.open(directory, params, n_docs=e - s, vocab_size=V) as segment:
            hits = segment.search_batch(queries, 10)
            assert hits.rows.max() < e - s
            for i in range(queries.shape[0]):
                rows, scores = hits.query(i)
                merged[i] += [(-float(sc), int(r) + s) for r, sc in zip(rows, scores)]
    if name == "inverted":
        ref = (queries.astype(np.float64) @ docs.T.astype(np.float64)).toarray()
        for i, hits in enumerate(merged):
            got = [r for _, r in sorted(hits)[:10]]
            cand = np.flatnonzero(ref[i] > 0)
            want = cand[np.lexsort((cand, -ref[i][cand]))][:10]
            np.testing.assert_allclose(ref[i][got], ref[i][want], rtol=1e-5)
    assert not get_engine("milvus").capabilities & {"incremental"}  # a collection, not files
