"""The interactive shell: `COMMAND ARGS...` lines with readline editing, history and completion.

The history lives in ~/.taskmasterctl_history (or $TASKMASTERCTL_HISTORY). Job names for TAB are
asked from the daemon with `list` each time a completion starts, so they are never stale. A daemon
restart costs nothing: the client reconnects on the next command.
"""
from __future__ import annotations

import glob
import os
import readline
import shlex
import sys

from .cli import run_command
from .client import Client, ConnectionFailed
from .commands import COMMANDS
from .session import EXIT_OK

PROMPT = "taskmaster> "
SHELL_WORDS = ("exit", "quit")
HISTORY_LENGTH = 1000


def history_path() -> str:
    return os.environ.get("TASKMASTERCTL_HISTORY") or os.path.expanduser("~/.taskmasterctl_history")


class Shell:
    def __init__(self, client: Client, as_json: bool = False) -> None:
        self.client = client
        self.as_json = as_json
        self._matches: list[str] = []

    def run(self) -> int:
        path = history_path()
        try:
            readline.read_history_file(path)
        except OSError:
            pass  # no history yet
        readline.set_history_length(HISTORY_LENGTH)
        readline.set_completer_delims(" \t\n")
        readline.set_completer(self.complete)
        readline.parse_and_bind("tab: complete")
        print(f"taskmasterctl shell for taskmasterd at {self.client.address}; "
              "'help' lists the commands, Ctrl-D leaves.")
        try:
            self._loop()
        finally:
            try:
                readline.write_history_file(path)
            except OSError as exc:
                print(f"taskmasterctl: cannot save the history to {path}: {exc.strerror}", file=sys.stderr)
            self.client.close()
        return EXIT_OK

    def _loop(self) -> None:
        while True:
            try:
                line = input(PROMPT)
            except EOFError:
                print()
                return
            except KeyboardInterrupt:
                print()
                continue
            try:
                words = shlex.split(line)
            except ValueError as exc:
                print(f"taskmasterctl: {exc}", file=sys.stderr)
                continue
            if not words:
                continue
            if words[0] in SHELL_WORDS:
                return
            try:
                run_command(words, self.client, self.as_json)
            except KeyboardInterrupt:  # stop waiting; the daemon carries on
                self.client.close()
                print()
            if words == ["help"]:
                print("  exit        leave the shell (or Ctrl-D)")

    def complete(self, text: str, state: int) -> str | None:
        if state == 0:
            self._matches = self._candidates(text, readline.get_line_buffer()[:readline.get_begidx()])
        return self._matches[state] if state < len(self._matches) else None

    def _candidates(self, text: str, before: str) -> list[str]:
        words = before.split()
        if not words:
            return [word for word in (*COMMANDS, *SHELL_WORDS) if word.startswith(text)]
        command = COMMANDS.get(words[0])
        if command is None or text.startswith("-"):
            return []
        if command.name == "help":
            return [name for name in COMMANDS if name.startswith(text)]
        if command.name == "push":
            return [path + ("/" if os.path.isdir(path) else "") for path in sorted(glob.glob(glob.escape(text) + "*"))]
        if not command.takes_jobs:
            return []
        offered = ["all", *self._job_names()] if command.takes_all else self._job_names()
        return [name for name in offered if name.startswith(text)]

    def _job_names(self) -> list[str]:
        try:
            reply = self.client.request("list")
        except ConnectionFailed:
            return []
        if reply.response != "list":
            return []
        return sorted(job["name"] for job in reply.value.get("jobs", []))
