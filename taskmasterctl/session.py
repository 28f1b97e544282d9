"""One command's run: the client it talks through, where its output goes, and its exit status.

Exit statuses (docs/taskmasterctl.md): the worst outcome of the command wins. With --json a
command prints exactly one JSON document on stdout, whatever happens: what it learnt is gathered
(`emit`, `report`, `complain`) and printed by `finish`. Only a following command (`-f`) prints a
stream, one document per line.
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
        self.documents: list[dict] = []  # with --json: what the command learnt, printed by finish()
        self.errors: list[str] = []  # every complaint, also in the --json document
        self.streamed = False  # a following command printed one document per line already

    def complain(self, message: str, code: int) -> None:
        from .safetext import safe  # an error may quote a job file or a job's words

        print(f"taskmasterctl: {safe(message)}", file=self.err)
        self.errors.append(message)
        self.exit = max(self.exit, code)

    def emit(self, document: dict) -> None:
        """A document of the --json output (the command's one document is made of them)."""
        self.documents.append(document)

    def finish(self) -> None:
        """With --json, print the one document: the only one emitted, or every one under
        "results"; with "errors" when anything was complained about."""
        if not self.as_json or self.streamed and not self.errors:
            return
        document = self.documents[0] if len(self.documents) == 1 else (
            {"results": self.documents} if self.documents else {})
        if self.errors:
            document = {**document, "errors": self.errors}
        from .render import dumps

        print(dumps(document), file=self.out)

    @property
    def colour(self) -> bool:
        return self.out.isatty() and "NO_COLOR" not in os.environ

    def report(self, verb: str, job: str | None, reply: Reply, quiet_json: bool = False) -> None:
        """Tell how a request went: `success` on stdout, everything else on stderr, and the exit
        status. A selector's reply tells each target's outcome; --json gathers the reply itself
        (`quiet_json`: only its complaint, for a command that makes its own document)."""
        what = verb if job is None else f"{verb} {job}"
        if self.as_json and not quiet_json:
            from .render import reply_document

            self.emit(reply_document(reply))
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
                    self._outcome(f"{verb} {target['target']}", target["response"], target.get("note"))
        elif reply.response in ("success", "redundant"):
            note = reply.value.get("note") if isinstance(reply.value, dict) else None
            self._outcome(what, reply.response, note)

    def _outcome(self, what: str, response: str, note: str | None = None) -> None:
        if response == "redundant":
            self.complain(f"{what}: nothing to do (redundant)", EXIT_OK)
            return
        from .safetext import safe

        print(f"{what}: success" + (f" ({safe(note)})" if note else ""), file=self.out)
        if note and "last valid version" in note:  # a warning an operator must not miss
            print(f"taskmasterctl: {what}: {safe(note)}", file=self.err)
