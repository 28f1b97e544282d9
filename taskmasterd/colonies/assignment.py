"""One process the server assigned to this executor: its logs, whether it is still ours, its close.

The server never tells an executor that a process was cancelled or timed out; it only refuses
what the executor does next. So a 4xx on a log or a close means "lost", and `lost_reason` asks.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from .client import ColoniesClient, ColoniesError, ColoniesUnavailable
from .retry import Backoff, Outage, Timing

log = logging.getLogger("taskmasterd.colonies")
RUNNING, CANCELLED = 1, 4
_STATE_NAMES = {0: "waiting", 1: "running", 2: "successful", 3: "failed", 4: "cancelled"}
_MAX_SERVER_ERRORS = 5  # a 5xx reply to a close is retried a few times, not forever


class Lost(Exception):
    """The server no longer lets this executor act on the process."""


def transient(exc: ColoniesError) -> bool:
    """Worth retrying: the server is away or failing, rather than refusing."""
    return isinstance(exc, ColoniesUnavailable) or exc.status >= 500 or exc.status == 408


class Assignment:
    def __init__(self, client: ColoniesClient, prvkey: str, executorid: str, process: dict[str, Any],
                 timing: Timing, outage: Outage) -> None:
        self.client = client
        self.process = process
        self.id: str = process["processid"]
        self.spec: dict[str, Any] = process.get("spec") or {}
        self.funcname: str = self.spec.get("funcname") or ""
        self._prvkey = prvkey
        self._executorid = executorid
        self._timing = timing
        self._outage = outage

    async def add_log(self, message: str) -> None:
        """Raises Lost when refused; ColoniesError when the server is away (the caller keeps the text)."""
        try:
            await self.client.add_log(self.id, message, self._prvkey)
        except ColoniesError as exc:
            if transient(exc):
                self._outage.failed(exc)
                raise
            raise Lost(exc.message) from None
        self._outage.recovered()

    async def lost_reason(self) -> str | None:
        """Why the process is no longer ours, or None (still ours, or the server cannot say now)."""
        try:
            doc = await self.client.get_process(self.id, self._prvkey)
        except ColoniesError as exc:
            if transient(exc):
                self._outage.failed(exc)
                return None
            return f"the server refuses it ({exc.message})"
        self._outage.recovered()
        state = doc.get("state")
        if state == CANCELLED:
            return "cancelled"
        if state != RUNNING or doc.get("assignedexecutorid") != self._executorid:
            return f"no longer assigned to this executor (now {_STATE_NAMES.get(state, state)})"
        return None

    async def close(self, successful: bool, values: list[Any], patience: float | None = None) -> bool:
        """Close successful (`out`) or failed (`errors`), retrying while the server is away;
        False when it refused (the process was lost) or `patience` seconds ran out."""
        loop = asyncio.get_running_loop()
        deadline = None if patience is None else loop.time() + patience
        backoff = Backoff(self._timing)
        server_errors = 0
        while True:
            try:
                if successful:
                    await self.client.close_successful(self.id, values, self._prvkey)
                else:
                    await self.client.close_failed(self.id, [str(v) for v in values], self._prvkey)
                self._outage.recovered()
                return True
            except ColoniesError as exc:
                server_errors += not isinstance(exc, ColoniesUnavailable)
                if not transient(exc) or server_errors > _MAX_SERVER_ERRORS:
                    log.info("process %s: close refused, the process was lost: %s", self.id, exc.message)
                    return False
                self._outage.failed(exc)
            delay = backoff.next_delay()
            if deadline is not None and loop.time() + delay > deadline:
                log.warning("process %s: could not be closed before giving up", self.id)
                return False
            await asyncio.sleep(delay)
