"""The engine registry: an engine is one file of ``mmsparse.index.engines``, found without
importing optional packages; build, open, search and the command line reach it through the
registry only. Plus the structure rules: no import cycle in ``mmsparse.index``, and the old
module paths that docs named still work, with a deprecation warning."""

from __future__ import annotations

import ast
import importlib
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import mmsparse
from mmsparse.cli.main import main
from mmsparse.errors import MMSparseError, QueryError
from mmsparse.index.build import index_vectors
from mmsparse.index.engines import engine_names, get_engine
from mmsparse.index.manifest import IndexManifest
from tests.helpers import TOY

SRC = Path(mmsparse.__file__).resolve().parents[1]
FIVE = {"inverted", "seismic", "milvus", "bmp", "kannolo"}


def _fields() -> dict:
    return {
        "run_dir": "/nowhere",
        "checkpoint_sha256": "0" * 64,
        "vocab_sha256": "0" * 64,
        "split": "val",
        "data_dir": "",
        "w1": 0.5,
        "w2": 0.5,
    }


def test_the_registry_lists_the_five_engines_default_first():
    names = engine_names()
    assert set(names) == FIVE and names[0] == "inverted"
    assert all(get_engine(n).name == n for n in names)
    with pytest.raises(MMSparseError, match=r"unknown engine 'faiss' \(one of inverted, bmp"):
        get_engine("faiss")


def test_a_new_engine_is_one_file_built_opened_searched_through_the_registry(toy, tmp_path):
    from mmsparse.index.search import Searcher

    assert "toy" in engine_names() and get_engine("toy").name == "toy"
    rng = np.random.default_rng(0)
    docs = sp.random(30, 20, density=0.3, random_state=rng, format="csr", dtype=np.float32)
    queries = sp.random(4, 20, density=0.3, random_state=rng, format="csr", dtype=np.float32)
    out = tmp_path / "idx"
    m = index_vectors(
        out,
        "toy",
        docs,
        np.zeros((30, 4), np.float32),
        [f"i{j}" for j in range(30)],
        [""] * 30,
        manifest_fields=_fields(),
        engine_params={"scale": 2, "boost": 3.0},
    )
    assert m.engine == "toy" and m.engine_params == {
        "file": "toy.npz",
        "scale": 2.0,
        "search": {"boost": 3.0},
    }
    searcher = Searcher(out, load_run=False)
    ref = (queries @ docs.T).toarray() * 6.0  # scale 2, stored boost 3
    for j, res in enumerate(searcher.search_vectors(queries, k=4, explain=True)):
        rows = [h.row for h in res.hits]
        np.testing.assert_allclose([h.score for h in res.hits], ref[j][rows], rtol=1e-5)
        assert rows == np.lexsort((np.arange(30), -ref[j]))[: len(rows)].tolist()
    res = searcher.search_vectors(queries[:1], k=2, boost=1.0)[0]  # search-time parameter
    np.testing.assert_allclose(res.hits[0].score, ref[0].max() / 3, rtol=1e-5)
    with pytest.raises(QueryError, match=r"unknown toy parameter\(s\) \['query_cut'\] for search"):
        searcher.search_vectors(queries, k=2, query_cut=3)
    with pytest.raises(QueryError, match=r"bad toy parameter scale=-1.*scale \(float > 0"):
        get_engine("toy").build(tmp_path / "bad", docs, params={"scale": -1})
    # The live mask works for it too (the base class asks for more and drops dead rows).
    live = np.ones(30, dtype=bool)
    live[searcher.engine.search_batch(queries, 3).rows[:, 0]] = False
    hits = searcher.engine.search_batch(queries, 3, live=live)
    assert all(live[hits.query(i)[0]].all() for i in range(4))


def test_the_command_line_lists_builds_and_searches_a_new_engine(toy, tiny_run, tmp_path, capsys):
    assert main(["index", "engines", "--json"]) == 0
    listed = {e["name"]: e for e in json.loads(capsys.readouterr().out)["engines"]}
    assert set(listed) == FIVE | {"toy"}
    assert listed["toy"]["build_params"][0]["name"] == "scale"
    assert listed["toy"]["capabilities"] == ["exact", "explain", "incremental"]
    with pytest.raises(SystemExit):
        main(["index", "build", "--help"])
    help_text = capsys.readouterr().out
    assert "toy" in help_text and "scale (float > 0, default 1.0)" in help_text
    out = tmp_path / "toy-index"
    argv = ["index", "build", str(tiny_run), "--engine", "toy", "--out", str(out)]
    assert main([*argv, "--param", "scale=2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["engine_params"]["scale"] == 2.0
    assert main(["search", str(out), "--caption-id", "80", "--param", "boost=2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == "toy"
    assert main(["search", str(out), "--caption-id", "80", "--param", "ef_search=5"]) == 2
    err = capsys.readouterr().err
    assert "unknown toy parameter(s) ['ef_search'] for search" in err
    assert len(err.strip().splitlines()) == 1


def test_a_new_engine_file_in_a_copy_of_the_package_is_listed(tmp_path):
    """The one-file rule as a user meets it: a copy of mmsparse plus one engine module."""
    copy = tmp_path / "src"
    shutil.copytree(
        SRC / "mmsparse", copy / "mmsparse", ignore=shutil.ignore_patterns("__pycache__")
    )
    (copy / "mmsparse" / "index" / "engines" / "toy.py").write_text(TOY)
    code = (
        "import json, sys\n"
        "from mmsparse.cli.main import main\n"
        "main(['index', 'engines', '--json'])\n"
        "heavy = [m for m in ('seismic', 'pymilvus', 'milvus_lite', 'bmp', 'kannolo', 'faiss', "
        "'numba', 'torch') if m in sys.modules]\n"
        "print(json.dumps(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    listing, heavy = done.stdout.strip().rsplit("\n", 1)
    names = [e["name"] for e in json.loads(listing)["engines"]]
    assert names == ["inverted", "bmp", "kannolo", "milvus", "seismic", "toy"]
    # Listing the engines imports none of their optional packages, nor the model code.
    assert json.loads(heavy) == []


def test_registering_a_broken_engine_is_refused():
    from mmsparse.index.engines import Engine, register_engine

    class NoSearch(Engine):
        name = "nosearch"

        @classmethod
        def _build(cls, directory, request):
            return {}

        def _load(self):
            pass

    with pytest.raises(TypeError, match="does not implement"):
        register_engine(NoSearch)

    class BadCapability(NoSearch):
        name = "badcap"
        capabilities = frozenset({"teleport"})

        def _search(self, query):
            raise AssertionError

    with pytest.raises(TypeError, match="unknown capabilities"):
        register_engine(BadCapability)
    BadCapability.capabilities = frozenset()
    BadCapability.name = "inverted"
    with pytest.raises(TypeError, match="taken by"):
        register_engine(BadCapability)


def _imports(path: Path, modules: set[str], name: str) -> set[str]:
    """Modules of ``modules`` that ``path`` imports anywhere (functions included)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(package: str = "mmsparse.index") -> dict[str, set[str]]:
    """Module -> modules of ``package`` it imports (every import statement, function-level
    ones too; imports by name at run time, such as the registry's discovery, are not seen)."""
    root = SRC / package.replace(".", "/")
    files = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {m: _imports(p, set(files), m) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_index_package():
    graph = import_graph()
    assert "mmsparse.index.engines._base" in graph["mmsparse.index.engines.bmp"]
    assert cycles(graph) == []
    # The check can fail: a cycle made on purpose is found.
    graph["mmsparse.index.hits"].add("mmsparse.index.engines.inverted")
    assert cycles(graph)


def test_engine_modules_import_no_optional_package_at_import_time():
    optional = {"seismic", "pymilvus", "milvus_lite", "bmp", "kannolo", "faiss", "numba", "torch"}
    for path in (SRC / "mmsparse" / "index" / "engines").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: methods import lazily
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not names & optional, f"{path.name} imports {names & optional} at load"


def test_old_module_paths_work_with_a_deprecation_warning(tmp_path):
    for old, name in (("bmp_engine", "BmpEngine"), ("kannolo_engine", "KannoloEngine")):
        sys.modules.pop(f"mmsparse.index.{old}", None)
        with pytest.warns(DeprecationWarning, match=f"mmsparse.index.{old} is deprecated"):
            module = importlib.import_module(f"mmsparse.index.{old}")
        assert getattr(module, name) is get_engine(name[:-6].lower())
    docs = sp.random(20, 30, density=0.3, random_state=1, format="csr", dtype=np.float32)
    params = module.build_kannolo(tmp_path, docs)
    assert params["build"]["m"] == 32
    from mmsparse.index.bmp_engine import quantize_query, write_bmp  # noqa: F401 - documented


def test_search_is_the_module_and_calling_it_is_deprecated(tiny_run, tmp_path):
    import mmsparse.index
    from mmsparse.index import build_index, search, search_index

    assert mmsparse.index.search.Searcher is mmsparse.index.Searcher  # was AttributeError
    assert search is importlib.import_module("mmsparse.index.search")
    out = tmp_path / "idx"
    build_index(tiny_run, out, progress=False)
    want = search_index(out, caption_id="80", k=3)
    with pytest.warns(DeprecationWarning, match=r"use mmsparse.index.search_index\(\.\.\.\)"):
        got = mmsparse.index.search(out, caption_id="80", k=3)
    assert [h.row for h in got.hits] == [h.row for h in want.hits]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mmsparse.index.search.search_index is search_index
    assert IndexManifest.load(out).engine == "inverted"
