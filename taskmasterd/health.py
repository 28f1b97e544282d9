"""One instance's health checker: a timer between checks, a short task during one.

Between two checks nothing of it runs but a TimerHandle, so a thousand instances with a check
every 10 s cost the loop a hundred short probes a second and nothing else. The checker knows
nothing of instances or jobs: it is given the check, a way to spawn a command, and a callback.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from .health_state import Health, HealthTracker
from .probes import Probe, ProbeResult, SpawnCheck, make_probe
from .readiness_spec import HealthCheckSpec

log = logging.getLogger("taskmasterd.health")

# (old, new, reason): "healthy", "unhealthy", "http 503"
HealthChange = Callable[[Health, Health, str], None]


class HealthChecker:
    def __init__(self, check: HealthCheckSpec, on_change: HealthChange, spawn_check: SpawnCheck | None = None,
                 loop: asyncio.AbstractEventLoop | None = None):
        self._loop = loop or asyncio.get_running_loop()
        self._on_change = on_change
        self._spawn_check = spawn_check
        self.check = check
        self._probe: Probe = make_probe(check.probe, spawn_check)
        self._tracker: HealthTracker | None = None  # None: not started
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.last: ProbeResult | None = None
        self.last_check: float | None = None  # wall-clock time the last check ended

    @property
    def state(self) -> Health | None:
        """None while stopped."""
        return self._tracker.state if self._tracker is not None else None

    def start(self) -> None:
        """Begin checking a new run of the program: no verdict yet, the start period counts from
        now, the first check comes after `start_interval`."""
        self.stop()
        self._tracker = HealthTracker(self._loop.time())
        self.last = self.last_check = None
        self._timer = self._loop.call_later(self.check.start_interval, self._begin)

    def stop(self) -> None:
        """No more checks nor callbacks; a command being run is killed with its group."""
        self._tracker = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def update(self, check: HealthCheckSpec, spawn_check: SpawnCheck | None = None) -> None:
        """New settings (a reload): they apply from the next check; the verdict so far stays."""
        self._spawn_check = spawn_check or self._spawn_check
        self._probe = make_probe(check.probe, self._spawn_check)
        self.check = check

    def _begin(self) -> None:
        self._timer = None
        self._task = self._loop.create_task(self._run(self._tracker))

    async def _run(self, tracker: HealthTracker | None) -> None:
        began = self._loop.time()
        check = self.check
        try:
            result = await asyncio.wait_for(self._probe(), check.timeout)
        except asyncio.TimeoutError:
            result = ProbeResult(False, f"timed out after {check.timeout:g}s")
        except Exception as exc:  # a probe's bug must not end the checking
            log.exception("health check %s failed unexpectedly", check.probe.describe())
            result = ProbeResult(False, f"check error: {exc}")
        if tracker is not self._tracker:  # stopped or restarted meanwhile
            return
        self._task = None
        self.last, self.last_check = result, time.time()
        old = tracker.state
        new = tracker.record(result.ok, began, check)
        self._timer = self._loop.call_later(tracker.next_delay(check), self._begin)
        if new is not None:
            self._on_change(old, new, result.detail)

    def status(self) -> dict[str, Any]:
        """For `status`: the verdict, what is checked, and the last result."""
        return {
            "health": self.state,
            "check": self.check.probe.describe(),
            "last_check": self.last_check,
            "last_result": self.last.detail if self.last else None,
            "output": self.last.output if self.last else None,
            "failures": self._tracker.failures if self._tracker else 0,
        }
