"""One process the server assigned to this executor: its logs, whether it is still ours, its close.

The server never tells an executor that a process was cancelled, timed out or put back in its
queue; it only refuses what the executor does next. So a 4xx on a log or a close makes it ask
(`standing`) what the process is now:
- ours: RUNNING and assigned to this executor;
- adrift: WAITING and unassigned with the same `retries` — the server removed this executor (it had
  not heard from it for its stale-executor duration) and queued its processes again. The run goes
  on: its logs wait, and an outcome reached meanwhile is kept (`unclosed`) to answer the
  assignment that brings the process back (executor.py);
- lost: cancelled, closed, given to another executor, or a new attempt of it (`retries` grew: the
  server retries it after maxexectime) — this copy must stop and never close it.
A log or a close whose reply was lost is not sent again before the server shows it did not land.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from ..observe import counters
from .client import ColoniesClient, ColoniesError, ColoniesOutcomeUnknown, ColoniesUnavailable, transient
from .retry import Backoff, Outage, Timing

log = logging.getLogger("taskmasterd.colonies")
WAITING, RUNNING, SUCCESSFUL, FAILED, CANCELLED = 0, 1, 2, 3, 4
_STATE_NAMES = {0: "waiting", 1: "running", 2: "successful", 3: "failed", 4: "cancelled"}
_MAX_SERVER_ERRORS = 5  # a 5xx reply to a close is retried a few times, not forever


class Lost(Exception):
    """The server no longer lets this executor act on the process."""


class Adrift(Exception):
    """The server queued the process again under a run that goes on: try again once it is ours."""


@dataclass(frozen=True)
class Standing:
    """What the server shows of the process now: OURS, ADRIFT, UNKNOWN (no answer), or lost with why."""

    kind: str
    why: str = ""

    @property
    def lost(self) -> bool:
        return self.kind == "lost"


OURS, ADRIFT, UNKNOWN = Standing("ours"), Standing("adrift"), Standing("unknown")


def attempt_of(process: dict[str, Any]) -> int:
    """Which attempt of the process this is: the server counts `retries` up when it runs it again
    after a timeout, but not when it queues it again because it removed a stale executor."""
    retries = process.get("retries")
    return retries if isinstance(retries, int) and not isinstance(retries, bool) else 0


def not_a_member(exc: ColoniesError) -> bool:
    """The refusal of an executor the server removed (stale, or by an operator): until it is
    approved again it may not even look at its processes."""
    return exc.status == 403 and "not a member" in exc.message


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
        self.attempt = attempt_of(process)
        self.adrift = False  # the server queued it again; the run goes on (see the module's doc)
        self.ours = asyncio.Event()  # set while not adrift: logs wait on it
        self.ours.set()
        self.superseded = asyncio.Event()  # a later attempt was assigned: this copy stops, never closes
        self.unclosed: tuple[bool, list[Any]] | None = None  # an outcome reached while adrift
        self.unlogged = b""  # ... and the output not logged yet
        self.unlogged_in_doubt = False  # ... whose first message may have landed (its reply was lost)
        self.started = False  # a copy of its command was started (a run's)
        self._prvkey = prvkey
        self._executorid = executorid
        self._timing = timing
        self._outage = outage

    def exec_time_left(self) -> float | None:
        return exec_time_left(self.spec, self.assigned_at, asyncio.get_running_loop().time())

    def set_adrift(self, adrift: bool) -> None:
        self.adrift = adrift
        if adrift:
            self.ours.clear()
        else:
            self.ours.set()

    def keep(self, successful: bool, values: list[Any], unlogged: bytes = b"", in_doubt: bool = False) -> None:
        """An outcome reached while the process is adrift: it answers the process when it is back."""
        self.unclosed, self.unlogged, self.unlogged_in_doubt = (successful, values), unlogged, in_doubt
        log.info("process %s: queued again by the server: its outcome waits for it to come back", self.id)

    def supersede(self) -> None:
        """A later attempt of the same process was assigned to this executor."""
        self.superseded.set()
        self.ours.set()  # whatever waits for the process to be ours again learns it never will

    async def add_log(self, message: str, in_doubt: bool = False) -> None:
        """Raises Lost or Adrift when refused; ColoniesError when the server is away (the caller
        keeps the text, and passes `in_doubt` when its last try may have landed)."""
        if self.superseded.is_set():
            raise Lost("a later attempt of this process was assigned")
        try:
            if in_doubt and await self._last_log_is(message):
                return
            await self.client.add_log(self.id, message, self._prvkey)
        except ColoniesError as exc:
            if transient(exc):
                self._outage.failed(exc)
                raise
            standing = await self.standing()
            if standing is ADRIFT:
                raise Adrift() from None
            raise Lost(standing.why or exc.message) from None
        self._outage.recovered()

    async def _last_log_is(self, message: str) -> bool:
        colony = (self.spec.get("conditions") or {}).get("colonyname", "")
        last = await self.client.get_logs(colony, self._prvkey, processid=self.id, count=1, latest=True)
        return bool(last) and last[-1].get("message") == message

    async def standing(self) -> Standing:
        """Ask the server what the process is now (see the module's doc); `adrift` follows."""
        if self.superseded.is_set():
            return Standing("lost", "a later attempt of this process was assigned")
        try:
            doc = await self.client.get_process(self.id, self._prvkey)
        except ColoniesError as exc:
            if transient(exc):
                self._outage.failed(exc)
                return UNKNOWN
            standing = ADRIFT if not_a_member(exc) else Standing("lost", f"the server refuses it ({exc.message})")
        else:
            self._outage.recovered()
            standing = self._judge(doc)
        if not standing.lost:
            self.set_adrift(standing is ADRIFT)
        return standing

    def _judge(self, doc: dict[str, Any]) -> Standing:
        state = doc.get("state")
        if attempt_of(doc) != self.attempt:
            return Standing("lost", f"the server runs it again (attempt {attempt_of(doc) + 1})")
        if state == CANCELLED:
            return Standing("lost", "cancelled")
        if state == RUNNING and doc.get("assignedexecutorid") == self._executorid:
            return OURS
        if state == WAITING and not doc.get("assignedexecutorid"):
            return ADRIFT
        return Standing("lost", f"no longer assigned to this executor (now {_STATE_NAMES.get(state, state)})")

    async def close(self, successful: bool, values: list[Any], patience: float | None = None) -> bool:
        """Close successful (`out`) or failed (`errors`), retrying while the server is away;
        False when it refused (the process was lost, or is adrift: then the outcome is kept in
        `unclosed`) or `patience` seconds ran out."""
        if self.superseded.is_set():
            return False
        loop = asyncio.get_running_loop()
        deadline = None if patience is None else loop.time() + patience
        backoff = Backoff(self._timing)
        server_errors = 0
        in_doubt = False  # the last try's reply was lost: it may have closed the process
        refusal: str | None = None  # the server refused the last try: ask what the process is now
        while True:
            try:
                if in_doubt or refusal is not None:
                    landed = await self._close_landed(successful)
                    if landed is not None:
                        return self._closed(landed, successful, values, refusal)
                    if refusal is not None:  # still ours, and the close itself is refused
                        log.warning("process %s: close refused: %s", self.id, refusal)
                        return False
                    in_doubt = False
                if successful:
                    await self.client.close_successful(self.id, values, self._prvkey)
                else:
                    await self.client.close_failed(self.id, [str(v) for v in values], self._prvkey)
                self._outage.recovered()
                return self._closed(True, successful, values, None)
            except ColoniesError as exc:
                if not transient(exc):
                    refusal = exc.message
                    continue
                in_doubt = in_doubt or isinstance(exc, ColoniesOutcomeUnknown)
                server_errors += not isinstance(exc, ColoniesUnavailable)
                if server_errors > _MAX_SERVER_ERRORS:
                    log.info("process %s: the server keeps failing its close: %s", self.id, exc.message)
                    return False
                self._outage.failed(exc)
            delay = backoff.next_delay()
            if deadline is not None and loop.time() + delay > deadline:
                log.warning("process %s: could not be closed before giving up", self.id)
                return False
            await asyncio.sleep(delay)

    def _closed(self, landed: bool, successful: bool, values: list[Any], refusal: str | None) -> bool:
        if landed:
            counters.count_colonies_process(successful)
        elif self.adrift:
            self.keep(successful, values)
        else:
            log.info("process %s: not closed, the process was lost%s", self.id, f": {refusal}" if refusal else "")
        return landed

    async def _close_landed(self, successful: bool) -> bool | None:
        """After a lost reply or a refusal: True when the process is closed as we asked, None when
        it still runs for us (send the close again), False when it is adrift or went elsewhere."""
        try:
            doc = await self.client.get_process(self.id, self._prvkey)
        except ColoniesError as exc:
            if transient(exc):
                raise
            self.set_adrift(not_a_member(exc))
            return False
        if attempt_of(doc) != self.attempt:
            return False
        if doc.get("state") == (SUCCESSFUL if successful else FAILED):
            return doc.get("assignedexecutorid") == self._executorid
        standing = self._judge(doc)
        if standing is OURS:
            return None
        self.set_adrift(standing is ADRIFT)
        return False
