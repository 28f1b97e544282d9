"""What every field converter of a job file shares: the error it raises, how it shows the value
it refused, and the converters several field modules use (a command's words, a boolean, a timer,
one of a few words). jobfile.py, readiness_spec.py, schedule_spec.py and container_spec.py build
on it, and none of them on another's private helpers.
"""
from __future__ import annotations

import json
import math
import shlex
from typing import Any, Callable

MAX_CMD = 128 * 1024  # bytes of a command line, all words together
MAX_TIMER = 86400.0  # the timers of the readiness and schedule fields: at most one day


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


def boolean(value: Any) -> bool:
    """true or false, and nothing else (not 0 or "yes")."""
    if not isinstance(value, bool):
        raise FieldError(f"must be true or false, got {got(value)}")
    return value


_NO_VALUE = object()


def refuse(reason: str, value: Any = _NO_VALUE) -> FieldError:
    """The error the parse loop turns into a line naming the file and the field: `reason`, and
    the value refused when given."""
    return FieldError(reason if value is _NO_VALUE else f"{reason}, got {got(value)}")


def timer_seconds(value: Any, zero_ok: bool = False) -> float:
    """A timer of the readiness or schedule fields, in seconds: finite, > 0 (≥ 0 when `zero_ok`),
    at most one day."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not math.isfinite(value)) or value < 0 or (value == 0 and not zero_ok)):
        raise refuse(f"must be a number {'≥' if zero_ok else '>'} 0 (seconds)", value)
    if value > MAX_TIMER:
        raise refuse(f"must be at most {MAX_TIMER:g} seconds (one day)", value)
    return float(value)


def one_of(options: tuple[str, ...]) -> Callable[[Any], str]:
    """A converter taking exactly one of `options`."""
    def convert(value: Any) -> str:
        if value not in options:
            raise refuse("must be one of " + ", ".join(f'"{o}"' for o in options), value)
        return value

    return convert
