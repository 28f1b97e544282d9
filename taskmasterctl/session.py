"""One command's run: the client it talks through, where its output goes, and its exit status.

Exit statuses (docs/taskmasterctl.md): the worst outcome of the command wins.
"""
from __future__ import annotations

import os
import sys

from taskmasterd.reply import Reply

from .client import Client

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO

EXIT_OK, EXIT_FAIL, EXIT_INVALID, EXIT_NOT_AS_WANTED = 0, 1, 2, 3
EXIT_UNREACHABLE = EXIT_NOT_AS_WANTED  # like LSB's "not running": nothing is known to run as wanted

EXIT_HELP = """exit status:
  0  success (also "redundant": nothing needed doing, noted on stderr)
  1  the daemon answered fail (unknown job, bad name, spawn error, invalid job file, ...)
  2  usage error, or the daemon answered invalid
  3  not running as wanted: `status` found a job FATAL, BACKOFF, INVALID or stopped while
     it should run; or the daemon cannot be reached (no connection, no reply in --timeout)"""


class Session:
    def __init__(self, client: Client, as_json: bool, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self.client = client
        self.as_json = as_json
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.exit = EXIT_OK

    def complain(self, message: str, code: int) -> None:
        print(f"taskmasterctl: {message}", file=self.err)
        self.exit = max(self.exit, code)

    @property
    def colour(self) -> bool:
        return self.out.isatty() and "NO_COLOR" not in os.environ

    def report(self, verb: str, job: str | None, reply: Reply) -> None:
        """Tell how a request went: `success` on stdout, everything else on stderr, and the exit
        status. A selector's reply tells each target's outcome; --json prints the reply itself."""
        what = verb if job is None else f"{verb} {job}"
        if self.as_json:
            from .render import reply_json

            print(reply_json(reply), file=self.out)
        if reply.response == "invalid":
            self.complain(f"{what}: the daemon found the request invalid: {reply.error or 'no reason given'}",
                          EXIT_INVALID)
            return
        targets = reply.value.get("targets") if isinstance(reply.value, dict) else None
        if reply.response == "fail":
            # A selector's errors are "<target>: <error>" lines; a plain name's are about `what`.
            prefix = f"{verb} " if targets is not None else f"{what}: "
            for line in (reply.error or "failed").splitlines():
                self.complain(prefix + line, EXIT_FAIL)
        if self.as_json:
            return
        if targets is not None:
            for target in targets:
                if target["response"] in ("success", "redundant"):
                    self._outcome(f"{verb} {target['target']}", target["response"])
        elif reply.response in ("success", "redundant"):
            self._outcome(what, reply.response)

    def _outcome(self, what: str, response: str) -> None:
        if response == "redundant":
            self.complain(f"{what}: nothing to do (redundant)", EXIT_OK)
        else:
            print(f"{what}: success", file=self.out)
