"""A process's `args` and `kwargs` as the words appended to the job's command.

`args` are positional words, in order. `kwargs` follow as `--key=value` options, sorted by key
(the server keeps them in a Go map, which has no order); a list value repeats its option. Only
what one word can carry exactly is accepted: strings and numbers (and lists of them), keys that
can be option names. Anything else is refused with the reason, never dropped.
"""
from __future__ import annotations

import json
import re
from typing import Any

_OPTION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")


class BadArguments(ValueError):
    """Why a process's args or kwargs cannot become command-line words."""


def _word(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise BadArguments(f"{where} {json.dumps(value)} is neither a string nor a number")


def command_words(args: Any, kwargs: Any) -> tuple[str, ...]:
    return _positional(args) + _options(kwargs)


def _positional(args: Any) -> tuple[str, ...]:
    if args is None:
        return ()
    if not isinstance(args, list):
        raise BadArguments(f"args must be a list, got {json.dumps(args)}")
    return tuple(_word(arg, "argument") for arg in args)


def _options(kwargs: Any) -> tuple[str, ...]:
    if kwargs is None:
        return ()
    if not isinstance(kwargs, dict):
        raise BadArguments(f"kwargs must be an object, got {json.dumps(kwargs)}")
    words = []
    for key in sorted(kwargs):
        if not _OPTION_NAME.fullmatch(key):
            raise BadArguments(f"kwarg {key!r} cannot be an option name (letters, digits, _ . : - only)")
        value = kwargs[key]
        for item in value if isinstance(value, list) else [value]:
            words.append(f"--{key}={_word(item, f'kwarg {key!r}:')}")
    return tuple(words)
