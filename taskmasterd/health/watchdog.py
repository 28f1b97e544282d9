"""systemd's WatchdogSec for one instance: a program that sends no `WATCHDOG=1` for `timeout`
seconds is reported to the owner, which restarts it.

One timer per instance. A ping only records the time: the timer, when it fires, re-arms itself for
the last ping's deadline, so a program pinging a thousand times a second costs a float store per
ping, not a timer. Armed at READY=1, as systemd does ("activated when the start-up is completed"):
before that, the ready deadline is what guards the start.
"""
from __future__ import annotations

import asyncio
from typing import Callable

_EARLY = 0.001  # the loop may run a timer this much before its time: that is not a ping


def watchdog_environment(timeout: float) -> dict[str, str]:
    """What the child is told, as systemd tells it. WATCHDOG_PID is not set: the pid is not known
    before the exec; sd_watchdog_enabled() then takes the watchdog as meant for any process that
    inherits the variable, so a program that forks workers should unset it in them."""
    return {"WATCHDOG_USEC": str(max(1, round(timeout * 1_000_000)))}


class Watchdog:
    def __init__(self, timeout: float, on_miss: Callable[[str], None], loop: asyncio.AbstractEventLoop | None = None):
        self.timeout = timeout
        self._on_miss = on_miss
        self._loop = loop or asyncio.get_running_loop()
        self._last_ping = 0.0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self) -> None:
        """Start watching, as if a ping came now."""
        self._last_ping = self._loop.time()
        self._reschedule()

    def ping(self) -> None:
        self._last_ping = self._loop.time()

    def set_timeout(self, timeout: float) -> None:
        """A new timeout (WATCHDOG_USEC= from the program, or a reload), counted from the last ping."""
        self.timeout = timeout
        if self.armed:
            self._reschedule()

    def trigger(self, reason: str = "the program sent WATCHDOG=trigger") -> None:
        """A miss now."""
        self.close()
        self._on_miss(reason)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _reschedule(self) -> None:
        self.close()
        self._timer = self._loop.call_at(self._last_ping + self.timeout, self._due)

    def _due(self) -> None:
        self._timer = None
        if self._last_ping + self.timeout - self._loop.time() > _EARLY:
            self._reschedule()  # pinged since the timer was set
        else:
            self._on_miss(f"no WATCHDOG=1 for {self.timeout:g}s")
