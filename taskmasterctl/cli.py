"""`taskmasterctl`: one command per run, or the interactive shell when no command is given.

The one-shot path is kept light (no orjson, no readline, no asyncio, no dataclasses): `status`
is a whole process that should take a few tens of milliseconds. Options may come anywhere on the
line: `status nginx --json` is `--json status nginx`.
"""
from __future__ import annotations

import argparse
import os
import sys

from taskmasterd import __version__

from .client import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT, Client, ConnectionFailed
from .commands import COMMANDS, commands_help, parser_for, unknown_command
from .session import EXIT_HELP, EXIT_INVALID, EXIT_OK, EXIT_UNREACHABLE, Session

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable


def main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskmasterctl",
        usage="%(prog)s [--host H] [--port P] [--json] [--timeout S] [COMMAND [ARGS...]]",
        description="Control taskmasterd. Without a command, start an interactive shell. "
                    "Options may come before or after the command.",
        epilog=f"{commands_help()}\n\n'taskmasterctl help COMMAND' shows a command's arguments.\n\n{EXIT_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"daemon address (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"daemon port (default {DEFAULT_PORT})")
    parser.add_argument("--json", action="store_true", help="print each decoded reply as one line of JSON")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"seconds to wait for the daemon (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--version", action="version", version=f"taskmasterctl {__version__}")
    return parser


def split_options(parser: argparse.ArgumentParser, words: list[str]) -> tuple[list[str], list[str]]:
    """(the words of `parser`'s options, found anywhere on the line; the command and its own
    words, in order). -h/--help belongs to `parser` only before the command; `--` ends options."""
    arity = {option: action.nargs != 0 for action in parser._actions for option in action.option_strings}
    mine: list[str] = []
    rest: list[str] = []
    words = iter(words)
    for word in words:
        if word == "--":
            rest += [word, *words]
            break
        option = word.split("=", 1)[0] if word.startswith("--") else word
        if option not in arity or (option in ("-h", "--help") and rest):
            rest.append(word)
            continue
        mine.append(word)
        if arity[option] and "=" not in word:
            mine += [value for value in [next(words, None)] if value is not None]
    return mine, rest


def run_command(client: Client, words: list[str], as_json: bool) -> int:
    """Run `COMMAND ARGS...`; its exit status (2 for a usage error, after argparse's message)."""
    name, args = words[0], words[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"taskmasterctl: {unknown_command(name)}", file=sys.stderr)
        return EXIT_INVALID
    try:
        parsed = parser_for(name).parse_args(args)
    except SystemExit as exc:  # argparse has printed the usage or the help
        return exc.code if isinstance(exc.code, int) else EXIT_INVALID
    session = Session(client, as_json or parsed.json)
    try:
        command.run(session, parsed)
    except ConnectionFailed as exc:
        session.complain(str(exc), EXIT_UNREACHABLE)
    return session.exit


def main(argv: list[str] | None = None) -> int:
    parser = main_parser()
    mine, words = split_options(parser, sys.argv[1:] if argv is None else argv)
    options = parser.parse_args(mine)
    client = Client(options.host, options.port, options.timeout)
    if not words:
        from .shell import Shell

        return Shell(client, options.json).run()
    return _quiet_broken_pipe(lambda: run_command(client, words, options.json))


def _quiet_broken_pipe(run: Callable[[], int]) -> int:
    """`taskmasterctl status | head` must not end in a traceback; Ctrl-C ends quietly."""
    try:
        code = run()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_OK
