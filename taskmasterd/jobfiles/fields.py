"""What every field converter of a job file shares: the error it raises, how it shows the value
it refused, and the rules of a command's words. jobfile.py and readiness_spec.py both build on it.
"""
from __future__ import annotations

import json
import shlex
from typing import Any

MAX_CMD = 128 * 1024  # bytes of a command line, all words together


class FieldError(Exception):
    """Why a field's value is refused; the parse loop adds the file and the field."""


def got(value: Any, limit: int = 80) -> str:
    """The offending value as JSON, short, and always encodable (a message goes into replies)."""
    if isinstance(value, NonFinite):
        return value.name
    text = json.dumps(value, ensure_ascii=False, default=lambda v: v.name if isinstance(v, NonFinite) else str(v))
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class NonFinite:
    """What NaN/Infinity parse to: no converter accepts it, so the message names its field."""

    def __init__(self, name: str) -> None:
        self.name = name


def command_words(value: Any) -> tuple[str, ...]:
    """A command (a job's `cmd`, a `cmd` health check) as words: a string split as a shell splits
    words, or a list of strings."""
    if isinstance(value, str):
        if len(value.encode()) > MAX_CMD:
            raise FieldError(f"is longer than {MAX_CMD} bytes")
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise FieldError(f"cannot be split into words: {exc}") from None
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        if sum(len(v.encode()) + 1 for v in value) > MAX_CMD:
            raise FieldError(f"is longer than {MAX_CMD} bytes")
        argv = value
    else:
        raise FieldError(f"must be a string or a list of strings, got {got(value)}")
    if not argv or not argv[0]:
        raise FieldError("must name a program")
    return tuple(argv)
