"""The health of one run of an instance, as pure logic: Docker's HEALTHCHECK rules applied to a
series of check results. No I/O or clock here; `health.py` feeds it results and times."""
from __future__ import annotations

import enum

from ..jobfiles.readiness_spec import HealthCheckSpec


class Health(str, enum.Enum):
    STARTING = "starting"  # no verdict yet
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class HealthTracker:
    """One success makes an instance healthy; `retries` counted failures in a row make it
    unhealthy. A failure within `start_period` of the start does not count, until a check has
    passed once (then the program has started, and every failure counts)."""

    def __init__(self, started_at: float):
        self.started_at = started_at
        self.state = Health.STARTING
        self.failures = 0  # counted failures in a row
        self.passed = False  # a check has passed since the start

    def record(self, ok: bool, checked_at: float, check: HealthCheckSpec) -> Health | None:
        """Take the result of a check begun at `checked_at`; the new state when it changed."""
        if ok:
            self.failures = 0
            self.passed = True
            new = Health.HEALTHY
        else:
            if not self.passed and checked_at - self.started_at < check.start_period:
                return None
            self.failures += 1
            if self.failures < check.retries:
                return None
            new = Health.UNHEALTHY
        if new is self.state:
            return None
        self.state = new
        return new

    def next_delay(self, check: HealthCheckSpec) -> float:
        """Until the next check, from the end of this one: `start_interval` while there is no
        verdict yet, so a new instance is known healthy soon after it serves; then `interval`."""
        return check.start_interval if self.state is Health.STARTING else check.interval
