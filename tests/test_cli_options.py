"""The command line's vocabulary and layout (issue 17, parts 4 and 5).

Every option has help text; ``--threads`` means one thing everywhere; every bench command is
one module named as the command, registered in one place; old spellings still work, with a
deprecation message.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import sys
import warnings
from collections.abc import Iterator

import pytest
import torch

from mmsparse.cli import common
from mmsparse.cli.bench import BENCH_COMMANDS
from mmsparse.cli.main import build_parser, main
from mmsparse.errors import MMSparseError
from mmsparse.threads import POOL_ENV
from tests.helpers import REPO

SRC = REPO / "src" / "mmsparse"


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ("mmsparse",)
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, argparse.Action]]:
    """Every action of the whole tree, with the command that has it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, (*path, name))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, parser, action


@pytest.fixture
def keep_threads(monkeypatch):
    """What main() changes for --threads (the pools' environment, torch's pool) is restored."""
    for key in (*POOL_ENV, "OMP_WAIT_POLICY", "MMSPARSE_THREADS"):
        monkeypatch.delenv(key, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_every_option_has_help_text():
    missing, hidden = [], []
    for path, parser, action in walk(build_parser()):
        name = " ".join(path) + " " + (action.option_strings or [action.dest])[0]
        if isinstance(action, common.DeprecatedAlias):
            # hidden, and its new spelling is an option of the same command
            assert action.new in parser._option_string_actions, name
            hidden.append(name)
        elif not action.help or action.help == argparse.SUPPRESS:
            missing.append(name)
    assert not missing, f"options without help text: {missing}"
    assert "mmsparse explain --caption" in hidden


def test_threads_means_one_thing_everywhere():
    """--threads is the process's CPU threads in every command (no command redefines it)."""
    parser = build_parser()
    helps = {a.help for _, _, a in walk(parser) if "--threads" in a.option_strings}
    assert len(helps) == 1, helps
    (text,) = helps
    assert "CPU threads this process computes with" in text
    for path, _, action in walk(parser):
        if "--threads" in action.option_strings:
            assert action.type is None and action.default == argparse.SUPPRESS, path


def test_bench_commands_are_one_module_each_named_as_the_command():
    parser = build_parser()
    bench = next(
        a.choices["bench"] for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    (sub,) = [a for a in bench._actions if isinstance(a, argparse._SubParsersAction)]
    assert tuple(sub.choices) == BENCH_COMMANDS
    for name in BENCH_COMMANDS:
        library = SRC / "bench" / name  # its library module: a file or a package
        assert library.with_suffix(".py").is_file() or (library / "__init__.py").is_file(), name
        module = importlib.import_module(f"mmsparse.cli.bench.{name}")
        assert sub.choices[name].get_default("func").__module__ == module.__name__
    # no other command module adds bench commands
    for path in (SRC / "cli").glob("*.py"):
        assert "register_bench" not in path.read_text(), path
        assert "bench_sub" not in path.read_text(), path


@pytest.mark.parametrize("package", ["bench", "cli", "serve"])
def test_modules_import_only_public_names_of_each_other(package):
    for path in sorted((SRC / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmsparse"):
                private = [
                    a.name for a in node.names if a.name.startswith("_") and a.name[1] != "_"
                ]
                assert not private, f"{path.relative_to(SRC)} imports {private} of {node.module}"


# -- old spellings: they still work, and say what replaces them ---------------------------


def test_serve_threads_as_the_encoder_pool_still_works(keep_threads, monkeypatch, capsys):
    from mmsparse.serve import app, service

    seen = {}

    class Stop(MMSparseError):
        pass

    def fake_service(*, limits, **kwargs):
        seen["limits"] = limits
        raise Stop("stopped before opening the index")

    monkeypatch.setattr(app, "check_port_free", lambda host, port: None)
    monkeypatch.setattr(service, "SearchService", fake_service)
    pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
    assert main(["serve", "idx", "--encoder", "threads", "--threads", "3"]) == 2
    err = capsys.readouterr().err
    assert (
        "mmsparse: warning: --threads 3 as the size of the --encoder threads pool is "
        "deprecated; use --encoder-threads 3" in err
    )
    assert seen["limits"].threads == 3 and torch.get_num_threads() == 3
    # the new spellings: no warning; --threads alone leaves the pool at its default
    assert main(["serve", "idx", "--encoder", "threads", "--encoder-threads", "4"]) == 2
    assert "warning" not in capsys.readouterr().err and seen["limits"].threads == 4
    assert main(["serve", "idx", "--threads", "1"]) == 2
    assert "warning" not in capsys.readouterr().err
    assert seen["limits"].threads == common.ENCODER_THREADS and torch.get_num_threads() == 1
    assert main(["serve", "idx", "--encoder", "threads", "--encoder-threads", "0"]) == 2
    assert "--encoder-threads must be at least 1, got 0" in capsys.readouterr().err


def test_bench_serve_threads_as_the_encoder_pool_still_works(keep_threads, monkeypatch, capsys):
    from mmsparse.bench import serve

    seen = {}

    def fake_bench_serve(index, **kwargs):
        seen.update(kwargs)
        return {"runs": []}

    monkeypatch.setattr(serve, "bench_serve", fake_bench_serve)
    assert main(["bench", "serve", "idx", "--threads", "2", "--out", "x.json"]) == 0
    assert "use --encoder-threads 2" in capsys.readouterr().err
    assert seen["encoder_threads"] == 2
    assert main(["bench", "serve", "idx", "--encoders", "batch", "--threads", "1"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert seen["encoder_threads"] == common.ENCODER_THREADS
    assert main(["bench", "serve", "idx", "--encoder-threads", "5"]) == 0
    assert seen["encoder_threads"] == 5 and "warning" not in capsys.readouterr().err


def test_bench_train_workers_is_reference_workers(monkeypatch, capsys):
    from mmsparse.bench import train

    seen = {}

    def fake_bench_train(scale, **kwargs):
        seen.update(kwargs)
        return {}  # what a non-zero rank returns: nothing printed

    monkeypatch.setattr(train, "bench_train", fake_bench_train)
    assert main(["bench", "train", "--workers", "0"]) == 0
    assert "--workers is deprecated; use --reference-workers" in capsys.readouterr().err
    assert seen["reference_workers"] == 0
    assert main(["bench", "train", "--reference-workers", "3"]) == 0
    assert seen["reference_workers"] == 3 and "warning" not in capsys.readouterr().err


def test_bench_train_takes_the_common_threads(keep_threads, monkeypatch, capsys):
    from mmsparse.bench import train

    monkeypatch.setattr(
        train, "bench_train", lambda scale, **kw: {"threads": torch.get_num_threads()}
    )
    monkeypatch.setattr(train, "format_report", lambda report: "")
    assert main(["bench", "train", "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threads"] == 1 and report["command"].endswith("--threads 1")


def test_old_module_path_of_bench_train(monkeypatch):
    monkeypatch.delitem(sys.modules, "mmsparse.bench.train_speed", raising=False)
    with pytest.warns(DeprecationWarning, match="mmsparse.bench.train_speed is deprecated"):
        from mmsparse.bench.train_speed import bench_train  # noqa: F401 - the old path
    from mmsparse.bench import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = importlib.import_module("mmsparse.bench.train_speed")
    assert old.bench_train is train.bench_train and old.format_report is train.format_report
