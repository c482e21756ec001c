"""``mmsparse serve``'s options and start (issue 19 items 8, 9): every bad option, a busy
port and a port lost between the check and the start are one ``mmsparse: error`` line,
before any ``serving at ...`` line; the server is never started with limits that would
make it refuse every request."""

from __future__ import annotations

import socket

import pytest

from mmsparse.cli.main import main
from mmsparse.errors import MMSparseError
from mmsparse.serve.app import check_port_free
from mmsparse.serve.limits import ServeLimits

uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")


@pytest.fixture
def no_server(monkeypatch):
    """uvicorn.run replaced: a test fails, rather than serves forever, if it is reached."""

    def run(*args, **kwargs):
        raise AssertionError("the server was started")

    monkeypatch.setattr(uvicorn, "run", run)


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmsparse: error: "), err
    return err[0]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--max-k", "0"),
        ("--max-k", "-5"),
        ("--max-pending", "0"),
        ("--max-pending", "-1"),
        ("--workers", "0"),
        ("--max-upload-mb", "0"),
    ],
)
def test_counts_below_one_are_refused(served_index, no_server, capsys, option, value):
    assert main(["serve", str(served_index), option, value]) == 2
    assert one_error_line(capsys) == f"mmsparse: error: {option} must be at least 1, got {value}"


def test_busy_port_is_one_error_line_before_serving(served_index, busy_port, capsys):
    assert main(["serve", str(served_index), "--port", str(busy_port)]) == 2
    line = one_error_line(capsys)  # no 'serving at ...' line, no uvicorn message
    assert line == (
        f"mmsparse: error: port {busy_port} on 127.0.0.1 is already in use (another "
        "server?); choose another --port"
    )


def test_port_taken_after_the_check_is_still_one_error_line(
    served_index, busy_port, monkeypatch, capsys
):
    monkeypatch.setattr("mmsparse.serve.app.check_port_free", lambda host, port: None)
    assert main(["serve", str(served_index), "--port", str(busy_port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"mmsparse: error: the server could not start at http://127.0.0.1:{busy_port}/ "
        "(uvicorn's message above)"
    )


def test_check_port_free(busy_port):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    check_port_free("127.0.0.1", free)  # bound but closed again: free
    with pytest.raises(MMSparseError, match=f"port {busy_port} on 127.0.0.1 is already in use"):
        check_port_free("127.0.0.1", busy_port)
    with pytest.raises(MMSparseError, match="--host no-such-host.invalid: unknown host"):
        check_port_free("no-such-host.invalid", free)
    with pytest.raises(MMSparseError, match="--host 192.0.2.1 is not an address of this machine"):
        check_port_free("192.0.2.1", free)


@pytest.mark.parametrize(
    "field", ["max_k", "max_terms_k", "max_query_chars", "max_pending", "max_batch", "threads"]
)
def test_serve_limits_below_one_are_refused(field):
    with pytest.raises(MMSparseError, match=f"serve limit {field} must be an integer of at least"):
        ServeLimits(**{field: 0})
