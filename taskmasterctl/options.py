"""The options every taskmasterctl command line may carry, anywhere on it, and the help layout.

One table: the main parser (`taskmasterctl --help`), every command's parser (so that
`status web --port 7778` works), the quick parse of plain job commands and the completion
scripts are made from it.

argparse is imported only when a parser is built: `quick_parse` reads the plain lines of the
commands that take jobs (`status web`, `stop a b --nowait --port 7778`) without it, which is a
quarter of a one-shot command's time. Anything else on such a line (-h, --port=N, an unknown
option, a bad value) goes to argparse, which then explains it.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

from .client import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

# (flag, takes a value, add_argument keywords)
GLOBAL_OPTIONS: tuple[tuple[str, bool, dict[str, Any]], ...] = (
    ("--host", True, {"default": DEFAULT_HOST, "metavar": "H", "help": f"daemon address (default {DEFAULT_HOST})"}),
    ("--port", True, {"type": int, "default": DEFAULT_PORT, "metavar": "P", "help": f"daemon port (default {DEFAULT_PORT})"}),
    ("--socket", True, {"default": os.environ.get("TASKMASTER_SOCKET") or None, "metavar": "PATH",
                        "help": "the daemon's unix socket instead of TCP (default: $TASKMASTER_SOCKET; '' for TCP)"}),
    ("--json", False, {"action": "store_true", "help": "print each decoded reply as one line of JSON"}),
    ("--timeout", True, {"type": float, "default": DEFAULT_TIMEOUT, "metavar": "S",
                         "help": f"seconds to wait for the daemon (default {DEFAULT_TIMEOUT:g})"}),
)
VALUE_OPTIONS = frozenset(flag for flag, takes_value, _ in GLOBAL_OPTIONS if takes_value)


def quick_parse(words: list[str], jobs_required: bool, switches: tuple[str, ...] = ()) -> SimpleNamespace | None:
    """What argparse would make of `JOB... [--SWITCH...] [global options]`, or None to ask it.
    `switches`: the command's own true-or-false options, by their names (`nowait`, `with_deps`)."""
    values: dict[str, Any] = {flag[2:]: keywords.get("default", False) for flag, _, keywords in GLOBAL_OPTIONS}
    values["job"] = []
    flags = {"--" + name.replace("_", "-"): name for name in switches}
    values.update((name, False) for name in switches)
    options = {flag: keywords for flag, _, keywords in GLOBAL_OPTIONS}
    words_left = iter(words)
    for word in words_left:
        keywords = options.get(word)
        if keywords is not None and word in VALUE_OPTIONS:
            value = next(words_left, None)
            if value is None or value.startswith("-"):
                return None
            try:
                values[word[2:]] = keywords.get("type", str)(value)
            except ValueError:
                return None
        elif keywords is not None:
            values[word[2:]] = True
        elif word in flags:
            values[flags[word]] = True
        elif word.startswith("-"):
            return None
        else:
            values["job"].append(word)
    if jobs_required and not values["job"]:
        return None
    return SimpleNamespace(**values)


def add_global_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("options of every command")
    for flag, _, keywords in GLOBAL_OPTIONS:
        group.add_argument(flag, **keywords)


def formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's layout, sized to the terminal without importing shutil (which argparse would do
    for every argument it adds: 5 ms of a one-shot command)."""
    import argparse

    try:
        width = os.get_terminal_size().columns
    except OSError:
        width = 80
    return argparse.RawDescriptionHelpFormatter(prog, width=max(width - 2, 40))


def command_position(words: list[str]) -> int | None:
    """Where the command is on the line: the first word that is neither an option nor the value
    of a global option; None when there is none (the shell, or --help/--version)."""
    skip = False
    for position, word in enumerate(words):
        if skip:
            skip = False
        elif word in VALUE_OPTIONS:
            skip = True
        elif not word.startswith("-"):
            return position
    return None
