"""JSON for the one-shot taskmasterctl without the `json` package, which imports `re` and `enum`
and costs a third of a `taskmasterctl status` process.

`loads` drives CPython's C scanner (`_json.make_scanner`, the engine of `json.loads` itself) with
the context `json.JSONDecoder` would give it; `quote` is the C string encoder of `json.dumps`.
Where `_json` is missing (another Python), both fall back to the `json` package.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

_WHITESPACE = " \t\n\r"

try:
    import _json
except ImportError:  # not CPython
    _json = None  # type: ignore[assignment]


class _Context:
    """The attributes of json.JSONDecoder that the C scanner reads."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


_scan: Callable[[str, int], tuple[Any, int]] | None = (
    _json.make_scanner(_Context()) if _json is not None else None)  # type: ignore[arg-type]


def loads(raw: bytes | str) -> Any:
    """What json.loads(raw) gives; ValueError for anything that is not one JSON value."""
    text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    if _scan is None:
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"not JSON at character {exc.value}") from None
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"extra data after the JSON value at character {end}")
    return value


def quote(text: str) -> str:
    """`text` as a JSON string literal (ASCII, as json.dumps writes it)."""
    if _json is None:
        import json

        return json.dumps(text)
    return _json.encode_basestring_ascii(text)
