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


def _word(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def command_words(args: Any, kwargs: Any) -> tuple[str, ...]:
    return _positional(args) + _options(kwargs)


def _positional(args: Any) -> tuple[str, ...]:
    if args is None:
        return ()
    if not isinstance(args, list):
        raise BadArguments(f"args must be a list, got {json.dumps(args)}")
    words = []
    for arg in args:
        word = _word(arg)
        if word is None:
            raise BadArguments(f"argument {json.dumps(arg)} is neither a string nor a number")
        words.append(word)
    return tuple(words)


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
        values = value if isinstance(value, list) else [value]
        for item in values:
            word = _word(item)
            if word is None:
                raise BadArguments(f"kwarg {key!r}: {json.dumps(item)} is not a string or a number "
                                   "(nor a list of them)")
            words.append(f"--{key}={word}")
    return tuple(words)
