"""What keeps a process from running twice here, once the server has lost sight of this executor.

The server removes an executor it has not heard from for its stale-executor duration and queues
its RUNNING processes again, as they were (`retries` unchanged; seen on the real server). Such a
process is "adrift" (assignment.py): its run goes on here, and whatever it ends with is kept
(`KeptOutcomes`) until an assignment brings the process back; that assignment is answered from
what the daemon knows (`answer`), with no second copy. A new attempt of a process (the server
retries it after its maxexectime) starts only once every process of the old copy is gone
(`copy_gone`): every process that carries its COLONIES_PROCESS_ID, in its process group or not.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any

from ..kernel import pidfd
from ..processes.orphans import environment_of, wait_gone
from .assignment import Adrift, Assignment, Lost
from .client import ColoniesError
from .output import LogBatch
from .retry import Backoff, Timing

log = logging.getLogger("taskmasterd.colonies")
KEEP_AT_MOST = 1024  # outcomes (and old copies) remembered, the oldest forgotten first
KEEP_FOR = 3600.0  # seconds an outcome waits for its process to come back
COPY_REMEMBERED_FOR = 120.0  # seconds an ended run's copy is looked for before a new attempt starts
LOG_MESSAGE = 64 * 1024


@dataclass(frozen=True)
class Outcome:
    attempt: int
    successful: bool
    values: list[Any]
    unlogged: bytes  # the output not logged yet
    in_doubt: bool  # its first message may have landed already (the reply was lost)
    kept_at: float


class KeptOutcomes:
    """Outcomes of runs that ended while their process was adrift, and which processes had a copy
    started by a run that ended lately (a later attempt waits for what is left of it); bounded."""

    def __init__(self) -> None:
        self._outcomes: collections.OrderedDict[str, Outcome] = collections.OrderedDict()
        self._copies: collections.OrderedDict[str, float] = collections.OrderedDict()  # processid -> run's end

    def __len__(self) -> int:
        return len(self._outcomes)

    def __contains__(self, processid: object) -> bool:
        return processid in self._outcomes

    def ended(self, task: Assignment) -> None:
        """A run of `task` ended: keep its outcome if it could not be given, and that it had a copy."""
        now = asyncio.get_running_loop().time()
        if task.started:
            _remember(self._copies, task.id, now)
        if task.unclosed is not None:
            successful, values = task.unclosed
            _remember(self._outcomes, task.id, Outcome(task.attempt, successful, values, task.unlogged,
                                                       task.unlogged_in_doubt, now))

    def take(self, processid: str, attempt: int) -> Outcome | None:
        """The outcome that answers this attempt of the process, if any (forgotten either way)."""
        outcome = self._outcomes.pop(processid, None)
        if outcome is None or asyncio.get_running_loop().time() - outcome.kept_at > KEEP_FOR:
            return None
        if outcome.attempt != attempt:
            log.info("process %s: a new attempt (%d): the outcome of attempt %d is dropped",
                     processid, attempt + 1, outcome.attempt + 1)
            return None
        return outcome

    def ran_lately(self, processid: str) -> bool:
        """Whether a copy of `processid` was started by a run that ended lately (some of it may live)."""
        ended = self._copies.get(processid)
        return ended is not None and asyncio.get_running_loop().time() - ended <= COPY_REMEMBERED_FOR


def _remember(table: collections.OrderedDict[str, Any], key: str, value: Any) -> None:
    table.pop(key, None)
    table[key] = value
    while len(table) > KEEP_AT_MOST:
        table.popitem(last=False)


async def answer(task: Assignment, outcome: Outcome, timing: Timing) -> None:
    """Give a process that came back the outcome its run reached meanwhile: the rest of its
    output, then its close. Adrift again, the outcome is kept again (Assignment.keep)."""
    pending = LogBatch(LOG_MESSAGE, len(outcome.unlogged) + 1)
    pending.feed(outcome.unlogged)
    in_doubt = outcome.in_doubt
    backoff = Backoff(timing)
    deadline = asyncio.get_running_loop().time() + timing.close_patience
    log.info("process %s is back: answered with the outcome of its run, which ended meanwhile", task.id)
    while chunk := pending.peek(final=True):
        try:
            await task.add_log(chunk.decode("utf-8", "replace"), in_doubt)
        except Lost as lost:
            log.info("process %s lost before its outcome was given: %s", task.id, lost)
            return
        except Adrift:
            task.keep(outcome.successful, outcome.values, pending.take_all(), in_doubt)
            return
        except ColoniesError:
            if asyncio.get_running_loop().time() > deadline:
                log.warning("process %s: its last output could not be logged before giving up", task.id)
                break
            in_doubt = True
            await asyncio.sleep(backoff.next_delay())
            continue
        pending.consume(len(chunk))
        in_doubt = False
    await task.close(outcome.successful, outcome.values, timing.close_patience)


async def copy_gone(processid: str, timeout: float) -> bool:
    """Until no process of an ended or stopping copy of `processid` is left, in its process group
    or out of it: every process that carries its COLONIES_PROCESS_ID. They are SIGKILLed (their
    copy was told to stop, or its leader is gone already). False at `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    mark = ("COLONIES_PROCESS_ID", processid)
    while pids := await asyncio.to_thread(_copy_pids, processid):
        if loop.time() > deadline:
            log.warning("process %s: %d process(es) of its old copy still alive after %g s: starting anyway",
                        processid, len(pids), timeout)
            return False
        for pid in pids:  # through its pidfd, once it is seen to carry the id still: never a recycled pid
            with contextlib.suppress(PermissionError):
                pidfd.signal_if(pid, signal.SIGKILL, lambda now: mark in environment_of(now))
        await wait_gone(pids, max(0.0, min(1.0, deadline - loop.time())))
    return True


def _copy_pids(processid: str) -> list[int]:
    """Live processes whose environment names the process: those of its copy, in its group or not
    (a group id may have been recycled since, and an escape may have been adopted by any subreaper:
    only the marker says a process is of this copy)."""
    marker = f"COLONIES_PROCESS_ID={processid}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                if stat.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                    continue  # exited already
            with open(f"/proc/{entry.name}/environ", "rb") as environ:
                if marker in environ.read().split(b"\0"):
                    found.append(int(entry.name))
        except (OSError, IndexError):
            continue  # gone meanwhile, or not ours to read
    return found
