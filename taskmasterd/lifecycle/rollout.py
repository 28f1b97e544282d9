"""A rolling restart of one job: its instances replaced `max_unavailable` at a time.

The table does the replacing (states.py: ROLL, a second spawn beside the run until it is ready);
this coordinator only orders it: a ROLL to the next slot once a place is free, and stop giving
any once one fails. For each slot it waits until an old run still draining from an earlier
rollout is gone, sends ROLL (through the job's queue, like any command), and waits until the new
run is ready — its `ready` rule — or has failed to be: then the slot's `halted` says why, the
slots not yet replaced keep their old runs, and the rollout is halted. Slots in flight finish by
themselves: their rolls are the table's. The rollout ends once the old runs of the replaced slots
are gone.

A rollout is a task of the supervisor's (shut down with it), interrupted by a command that
decides otherwise for the job (stop, kill, a plain restart) or by the rollout of a newer file:
the slot being replaced finishes its own roll, no other starts. A `restart` that comes during a
rollout comes after it (`after`), as a command during a restart does in the table. Each step is published on
the event bus (`rollout`: begun, replaced, halted, done, interrupted) and counted for the metrics.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol, Sequence

from .instance import Instance
from .states import Kind, Roll, State
from ..observe import counters
from ..observe.events import Event as Published, EventBus

log = logging.getLogger("taskmasterd.rollout")
_INCOMING = (Roll.QUEUED, Roll.STARTING)


class Rolled(Protocol):
    """What a rollout reads of its job (a `Job` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def instances(self) -> Sequence[Instance]: ...


class Rollout:
    def __init__(self, job: Rolled, slots: list[Instance], at_once: int, why: str, events: EventBus,
                 after: Rollout | None = None) -> None:
        """`after`: the rollout under way, which this one waits for."""
        self.job = job
        self.after = after
        self.slots = slots
        self.at_once = max(1, at_once)
        self.why = why
        self.events = events
        self.replaced = 0
        self.halted: str | None = None  # "web:2 not ready (…)"
        self.interrupted: str | None = None
        self.finished = False
        self.task: asyncio.Task[str | None] | None = None

    # --- what it says ---------------------------------------------------------------------------

    def describe(self) -> str | None:
        """For `status`: "rolling 2/4" while under way, the halt after one, None once done."""
        if self.after is not None and self.after.task is not None and not self.after.task.done():
            return self.after.describe()
        if self.halted is not None:
            return f"rollout halted: {self.halted}"
        if not self.finished and self.interrupted is None:
            return f"rolling {self.replaced}/{len(self.slots)}"
        return None

    def outcome(self) -> str | None:
        """Why the verb that asked for it fails, or None: every slot replaced."""
        if self.halted is not None:
            return f"rollout halted: {self.halted}"
        if self.interrupted is not None:
            return f"rollout interrupted: {self.interrupted}"
        return None

    # --- its course -----------------------------------------------------------------------------

    async def run(self) -> str | None:
        """Replace every slot; the reason the verb fails, or None."""
        places = asyncio.Semaphore(self.at_once)
        try:
            if self.after is not None and self.after.task is not None:
                await asyncio.wait([self.after.task])
                self.after = None
            counters.count_rollout("begun")
            self._publish("begun", f"{self.why}: {len(self.slots)} instance(s), {self.at_once} at a time")
            async with asyncio.TaskGroup() as group:
                for inst in self.slots:
                    group.create_task(self._replace(inst, places))
            # the old runs of the replaced slots are gone before the rollout is over
            for inst in self.slots:
                await inst.wait_until(lambda i: i.machine.roll is Roll.NONE)
        except asyncio.CancelledError:
            if self.after is None:  # it had begun
                counters.count_rollout("interrupted")
                self._publish("interrupted", self.interrupted or "cancelled")
            raise
        self.finished = True
        if self.halted is not None:
            counters.count_rollout("halted")
            return self.outcome()
        counters.count_rollout("done")
        self._publish("done", f"{self.replaced} instance(s) replaced")
        return None

    async def _replace(self, inst: Instance, places: asyncio.Semaphore) -> None:
        async with places:
            if self.halted is not None:
                return
            # an old run still stopping from an earlier rollout: one second spawn at a time
            await inst.wait_until(lambda i: i.machine.roll is Roll.NONE)
            if self.halted is not None or inst.discarded or inst not in self.job.instances or inst.retired:
                return
            await inst.command(Kind.ROLL, self.why)
            await inst.wait_until(_rolled)
            failure = _failure(inst)
            if failure is not None:
                if self.halted is None:
                    self.halted = f"{self.job.name}:{inst.index} {failure}"
                    log.warning("%s: rollout halted: %s", self.job.name, self.halted)
                    self._publish("halted", self.halted)
                return
            self.replaced += 1
            self._publish("replaced", f"{self.job.name}:{inst.index} ({self.replaced}/{len(self.slots)})")

    def interrupt(self, why: str) -> None:
        """A command decided otherwise for the job: no other slot is started (the one being
        replaced finishes its own roll)."""
        if self.task is not None and not self.task.done():
            self.interrupted = why
            self.task.cancel()
        if self.after is not None:
            self.after.interrupt(why)

    def _publish(self, step: str, text: str) -> None:
        self.events.publish(Published("rollout", self.job.name, None, "", step, text, time.time()))


def _rolled(inst: Instance) -> bool:
    """Its new run is ready or gave up (a slot that served nothing was restarted: settled)."""
    return inst.discarded or (inst.machine.roll not in _INCOMING and (inst.start_settled() or inst.state is State.WAITING))


def _failure(inst: Instance) -> str | None:
    """Why the slot's new run did not come up, or None."""
    if inst.machine.halted:
        return inst.machine.halted
    if inst.state in (State.BACKOFF, State.FATAL):
        return f"not ready ({inst.description})"
    return None
