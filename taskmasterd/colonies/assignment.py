"""One process the server assigned to this executor: its logs, whether it is still ours, its close.

The server never tells an executor that a process was cancelled or timed out; it only refuses
what the executor does next. So a 4xx on a log or a close means "lost", and `lost_reason` asks.
A log or a close whose reply was lost is not sent again before the server shows it did not land.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..observe import counters
from .client import ColoniesClient, ColoniesError, ColoniesOutcomeUnknown, ColoniesUnavailable, transient
from .retry import Backoff, Outage, Timing

log = logging.getLogger("taskmasterd.colonies")
RUNNING, SUCCESSFUL, FAILED, CANCELLED = 1, 2, 3, 4
_STATE_NAMES = {0: "waiting", 1: "running", 2: "successful", 3: "failed", 4: "cancelled"}
_MAX_SERVER_ERRORS = 5  # a 5xx reply to a close is retried a few times, not forever


class Lost(Exception):
    """The server no longer lets this executor act on the process."""


def exec_time_left(spec: dict[str, Any], assigned_at: float, now: float) -> float | None:
    """Seconds left of the spec's maxexectime (> 0), counted from the assignment: the server's
    deadline is its assignment time plus maxexectime on its own clock, and the assign reply left
    it at that time, so the same span from the reply's arrival ends with the server's, whatever
    the two wall clocks say. Spawning and everything after it never extend it."""
    maxexectime = spec.get("maxexectime")
    if not isinstance(maxexectime, (int, float)) or isinstance(maxexectime, bool) or maxexectime <= 0:
        return None
    return max(0.0, assigned_at + maxexectime - now)


class Assignment:
    def __init__(self, client: ColoniesClient, prvkey: str, executorid: str, process: dict[str, Any],
                 timing: Timing, outage: Outage, assigned_at: float) -> None:
        self.client = client
        self.process = process
        self.id: str = process["processid"]
        spec = process.get("spec")
        self.spec: dict[str, Any] = spec if isinstance(spec, dict) else {}
        funcname = self.spec.get("funcname")
        self.funcname = funcname if isinstance(funcname, str) else ""
        self.assigned_at = assigned_at  # the loop's clock when the assign reply arrived
        self._prvkey = prvkey
        self._executorid = executorid
        self._timing = timing
        self._outage = outage

    def exec_time_left(self) -> float | None:
        return exec_time_left(self.spec, self.assigned_at, asyncio.get_running_loop().time())

    async def add_log(self, message: str, in_doubt: bool = False) -> None:
        """Raises Lost when refused; ColoniesError when the server is away (the caller keeps the
        text, and passes `in_doubt` when its last try may have landed)."""
        try:
            if in_doubt and await self._last_log_is(message):
                return
            await self.client.add_log(self.id, message, self._prvkey)
        except ColoniesError as exc:
            if transient(exc):
                self._outage.failed(exc)
                raise
            raise Lost(exc.message) from None
        self._outage.recovered()

    async def _last_log_is(self, message: str) -> bool:
        colony = (self.spec.get("conditions") or {}).get("colonyname", "")
        last = await self.client.get_logs(colony, self._prvkey, processid=self.id, count=1, latest=True)
        return bool(last) and last[-1].get("message") == message

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
        in_doubt = False  # the last try's reply was lost: it may have closed the process
        while True:
            try:
                landed = await self._close_landed(successful) if in_doubt else None
                if landed is not None:
                    if landed:
                        counters.count_colonies_process(successful)
                    return landed
                if successful:
                    await self.client.close_successful(self.id, values, self._prvkey)
                else:
                    await self.client.close_failed(self.id, [str(v) for v in values], self._prvkey)
                self._outage.recovered()
                counters.count_colonies_process(successful)
                return True
            except ColoniesError as exc:
                in_doubt = in_doubt or isinstance(exc, ColoniesOutcomeUnknown)
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

    async def _close_landed(self, successful: bool) -> bool | None:
        """After a lost reply: True when the process is closed as we asked, None when it still runs
        for us (send the close again), False when it went elsewhere."""
        try:
            doc = await self.client.get_process(self.id, self._prvkey)
        except ColoniesError as exc:
            if transient(exc):
                raise
            return False
        if doc.get("assignedexecutorid") != self._executorid:
            return False
        if doc.get("state") == RUNNING:
            return None
        return doc.get("state") == (SUCCESSFUL if successful else FAILED)
