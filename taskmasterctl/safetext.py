"""Text that came from a job, made safe for the operator's terminal. Pure.

A job's words reach the screen through `status` (its STATUS= text, a health check's output, an
error naming its file), `top` and `logs`. A control character can move the cursor, retitle the
window or clear the screen; a bidi override (U+202E) or isolate (U+2066...) can make a line read
differently from what it holds. Each is shown escaped, as Python writes it: `\\x1b`, `\\u202e`.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re

# C0 but tab and newline, DEL, C1; the bidi embeddings, overrides, isolates and marks; the
# line and paragraph separators (a terminal may break a line there).
_UNSAFE_RANGES = ("\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069")
_pattern: re.Pattern[str] | None = None
_colour_pattern: re.Pattern[str] | None = None


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: str, newlines: bool = False) -> str:
    """`text` with every unsafe character escaped (and tab and newline too, unless `newlines`:
    a table cell or a one-line note must stay one line)."""
    global _pattern
    if text.isascii() and text.isprintable():
        return text  # the common case, without loading `re`
    if _pattern is None:
        import re

        _pattern = re.compile(f"[{_UNSAFE_RANGES}]")
    escaped = _pattern.sub(_escape, text)
    return escaped if newlines else escaped.replace("\t", "\\t").replace("\n", "\\n")


def safe_output(text: str) -> str:
    """A job's output for a terminal: lines and tabs kept, colours (SGR: ESC [ … m) kept, every
    other control escaped."""
    global _colour_pattern
    if "\x1b" not in text:
        return safe(text, newlines=True)
    if _colour_pattern is None:
        import re

        _colour_pattern = re.compile(r"(\x1b\[[0-9;]*m)")
    pieces = _colour_pattern.split(text)  # odd positions: the colour sequences themselves
    return "".join(piece if position % 2 else safe(piece, newlines=True) for position, piece in enumerate(pieces))
