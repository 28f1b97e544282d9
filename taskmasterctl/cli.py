"""`taskmasterctl`: one command per run, or the interactive shell when no command is given.

The one-shot path is kept light (no orjson, no readline, no asyncio, no dataclasses): `status`
is a whole process that should take a few tens of milliseconds. Options may come anywhere on the
line: `status nginx --json` is `--json status nginx`.
"""
from __future__ import annotations

import os
import sys

from taskmasterd import __version__

from .client import Client, ConnectionFailed
from .commands import COMMANDS, commands_help, parse, unknown_command
from .options import add_global_options, command_position, formatter
from .session import EXIT_HELP, EXIT_INVALID, EXIT_OK, EXIT_UNREACHABLE, Session

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Callable


def main_parser() -> argparse.ArgumentParser:
    """The line without a command: help, version, or the options of the shell."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="taskmasterctl",
        usage="%(prog)s [--host H] [--port P | --socket PATH] [--json] [--timeout S] [COMMAND [ARGS...]]",
        description="Control taskmasterd. Without a command, start an interactive shell. "
                    "Options may come before or after the command.",
        epilog=f"{commands_help()}\n\n'taskmasterctl help COMMAND' shows a command's arguments.\n\n{EXIT_HELP}",
        formatter_class=formatter, allow_abbrev=False)
    add_global_options(parser)
    parser.add_argument("--version", action="version", version=f"taskmasterctl {__version__}")
    return parser


def run_command(words: list[str], client: Client | None = None, as_json: bool = False) -> int:
    """Run the line `words` (a command and its arguments, global options anywhere among them)
    with `client`, or a client made from the line's options; its exit status (2 for a usage
    error, after argparse's message)."""
    position = command_position(words)
    as_json = as_json or "--json" in words
    if position is None:
        return _usage_error("no command given ('help' lists them)", as_json)
    name = words[position]
    command = COMMANDS.get(name)
    if command is None:
        return _usage_error(unknown_command(name), as_json)
    try:
        if as_json:  # argparse's message goes into the one document too
            import contextlib
            import io

            caught = io.StringIO()
            with contextlib.redirect_stderr(caught):
                parsed = parse(name, words[:position] + words[position + 1:])
        else:
            parsed = parse(name, words[:position] + words[position + 1:])
    except SystemExit as exc:  # argparse has printed the usage or the help
        code = exc.code if isinstance(exc.code, int) else EXIT_INVALID
        if as_json and code:
            message = caught.getvalue()
            sys.stderr.write(message)
            _print_json({"errors": [message.strip().splitlines()[-1] if message.strip() else "usage error"]})
        return code
    session = Session(client or client_for(parsed), as_json or parsed.json)
    try:
        command.run(session, parsed)
    except ConnectionFailed as exc:
        session.complain(str(exc), EXIT_UNREACHABLE)
    session.finish()
    return session.exit


def _usage_error(message: str, as_json: bool) -> int:
    print(f"taskmasterctl: {message}", file=sys.stderr)
    if as_json:
        _print_json({"errors": [message]})
    return EXIT_INVALID


def _print_json(document: dict) -> None:
    from .render import dumps

    print(dumps(document))


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if command_position(words) is not None:
        return _quiet_broken_pipe(lambda: run_command(words))
    options = main_parser().parse_args(words)
    from .shell import Shell

    return Shell(client_for(options), options.json).run()


def client_for(options: argparse.Namespace) -> Client:
    """The client the line's options name: the unix socket when given (or $TASKMASTER_SOCKET), else TCP."""
    return Client(options.host, options.port, options.timeout, socket_path=options.socket or None)


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
