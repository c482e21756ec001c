"""What a request may ask: the checks of its parameters, and the HTTP answer of every error.

Each check raises :class:`BadRequest` with one line naming the parameter and what is
wrong; :func:`http_error` is the one mapping from an exception to an HTTP status and a
JSON body (4xx for bad input, 503 with ``Retry-After`` when the server is busy, a one-line
500 for a bug).
"""

from __future__ import annotations

import math
import urllib.parse
from typing import Any

from mmsparse.errors import MMSparseError
from mmsparse.index.engines import SEARCH_MODES


class BadRequest(MMSparseError):
    """A request parameter is invalid; answered with a 4xx status and a one-line message.

    Attributes:
        status: The HTTP status (400 by default, 404 for an unknown image).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Overloaded(MMSparseError):
    """More requests are in flight than the service admits (answered with 503)."""


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line (whitespace collapsed), at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def http_error(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The HTTP answer to an error raised while serving a request (the one mapping).

    :class:`BadRequest` keeps its status (400, 404), :class:`Overloaded` is 503 with
    ``Retry-After: 1``, any other :class:`~mmsparse.errors.MMSparseError` is 400, anything
    else a one-line 500 (a bug; never a traceback).

    Returns:
        ``(status, {"error": one line, "status": status}, headers)``.
    """
    headers: dict[str, str] = {}
    if isinstance(exc, BadRequest):
        status, message = exc.status, str(exc)
    elif isinstance(exc, Overloaded):
        status, message, headers = 503, str(exc), {"Retry-After": "1"}
    elif isinstance(exc, MMSparseError):
        status, message = 400, str(exc)
    else:
        status, message = 500, f"internal error ({type(exc).__name__}: {exc})"
    return status, {"error": one_line(message), "status": status}, headers


def _convert(name: str, value: Any, kind: type, what: str) -> Any:
    try:
        return kind(str(value).strip())
    except ValueError:
        raise BadRequest(f"{name} must be {what}, got {str(value)[:40]!r}") from None


def positive_int(
    name: str, value: str | int | None, default: int, cap: int, minimum: int = 1
) -> int:
    """An integer parameter: ``default`` when absent, else between ``minimum`` and ``cap``.

    Raises:
        BadRequest: Naming the parameter, on a value that is not such an integer.
    """
    what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
    if value is None or value == "":
        return default
    number = _convert(name, value, int, what)
    if number < minimum:
        raise BadRequest(f"{name} must be {what}, got {number}")
    if number > cap:
        raise BadRequest(f"{name} must be at most {cap}, got {number}")
    return number


def parse_weight(name: str, value: str | float | None) -> float | None:
    """A finite weight ``>= 0`` (``None`` when absent).

    Raises:
        BadRequest: Naming the parameter, on anything else.
    """
    if value is None or value == "":
        return None
    number = _convert(name, value, float, "a number")
    if not math.isfinite(number) or number < 0:
        raise BadRequest(f"{name} must be a finite number >= 0, got {str(value)[:40]!r}")
    return number


def parse_bool(name: str, value: str | bool | None, default: bool = False) -> bool:
    """A query-string flag: ``true``/``false``/``1``/``0``/``yes``/``no`` (or absent).

    Raises:
        BadRequest: On any other value.
    """
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise BadRequest(f"{name} must be true or false, got {value[:40]!r}")


def check_utf8_query_string(raw: bytes) -> None:
    """Refuse a query string that is not UTF-8 (raw or percent-encoded bytes).

    Raises:
        BadRequest: Naming the parameter whose value is not valid UTF-8.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the query string is not valid UTF-8") from None
    for part in text.split("&"):
        name, _, value = part.partition("=")
        try:
            urllib.parse.unquote_to_bytes(value.replace("+", " ")).decode("utf-8")
        except UnicodeDecodeError:
            label = urllib.parse.unquote(name, errors="replace")[:40] or "a parameter"
            raise BadRequest(
                f"{label} is not valid UTF-8 text (percent-encoded bytes that are not UTF-8)"
            ) from None


def cut_chars(text: str, max_chars: int) -> tuple[str, bool]:
    """Cut ``text`` to at most ``max_chars`` characters at a word boundary."""
    if len(text) <= max_chars:
        return text, False
    head = text[: max_chars + 1]
    cut = head.rsplit(None, 1)[0] if " " in head.strip() else text[:max_chars]
    return cut[:max_chars].rstrip(), True


def check_mode(mode: str | None, engine: Any, inference_free: bool = False) -> str:
    """A valid search mode for an index's engine (``sparse`` when absent).

    Args:
        mode: The mode asked for.
        engine: The index's engine (it says which modes it serves).
        inference_free: Whether the run's queries are term lookups (no dense query side).

    Raises:
        BadRequest: On an unknown mode, dense/hybrid on a sparse-only engine, or dense/hybrid
            with an inference-free run.
    """
    mode = "sparse" if mode in (None, "") else str(mode)
    if mode not in SEARCH_MODES:
        raise BadRequest(f"unknown mode {mode[:40]!r} (sparse, dense or hybrid)")
    if mode != "sparse" and inference_free:
        raise BadRequest(
            f"mode={mode} needs a dense query vector, and this run's queries are "
            "inference-free (model.query_encoder=lookup: no text encoder, no dense query "
            "side); use mode=sparse"
        )
    try:
        return engine.check_mode(mode)
    except MMSparseError as exc:
        raise BadRequest(str(exc).replace(f"--mode {mode}", f"mode={mode}")) from None


def parse_weights(
    w1: str | float | None, w2: str | float | None, defaults: tuple[float, float]
) -> tuple[float, float] | None:
    """The hybrid weights ``(w1, w2)`` asked for, one absent taken from ``defaults``.

    Returns:
        ``None`` when neither is given (the index's own weights apply).

    Raises:
        BadRequest: On a weight that is not a finite number ``>= 0``, or both 0.
    """
    a, b = parse_weight("w1", w1), parse_weight("w2", w2)
    if a is None and b is None:
        return None
    pair = (defaults[0] if a is None else a, defaults[1] if b is None else b)
    if pair[0] == 0 and pair[1] == 0:
        raise BadRequest("w1 and w2 cannot both be 0")
    return (float(pair[0]), float(pair[1]))


def check_text_query(q: str, max_chars: int) -> tuple[str, list[str]]:
    """A text query's words (whitespace collapsed), cut to ``max_chars`` at a word boundary.

    Returns:
        ``(text, notes)``: a note says where the text was cut.

    Raises:
        BadRequest: On a NUL character, text that is not UTF-8, or no words.
    """
    if "\x00" in q:
        raise BadRequest("the query contains a NUL character")
    if not q.isascii():
        try:
            q.encode("utf-8")  # HTTP gives UTF-8; a library caller may not
        except UnicodeEncodeError:
            raise BadRequest("the query is not valid UTF-8 text (lone surrogates)") from None
    text = " ".join(q.split())
    if not text:
        raise BadRequest("empty query: give some words to search for")
    text, was_cut = cut_chars(text, max_chars)
    notes = []
    if was_cut:
        notes.append(
            f"query cut to its first {len(text)} characters (the server's limit is {max_chars})"
        )
    return text, notes
