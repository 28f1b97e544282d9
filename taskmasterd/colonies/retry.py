"""Retrying against the Colonies server: capped exponential backoff with jitter, and outage logging."""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

log = logging.getLogger("taskmasterd.colonies")


@dataclass(frozen=True)
class Timing:
    """The bridge's clocks; tests shrink them, production keeps the defaults."""

    assign_timeout: int = 10  # seconds the server holds an assign long-poll
    keepalive_interval: float = 10.0  # while every slot is busy, how often the server hears from us
    check_interval: float = 2.0  # how often a run asks whether its process was cancelled
    log_interval: float = 0.5  # how often a run's output goes out as one log message
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    close_patience: float = 5.0  # how long a stopping executor keeps trying to close a process
    request_timeout: float = 15.0  # HTTP timeout of short calls (the long-poll adds its own)
    resync_interval: float = 30.0  # how often every daemon reads its blueprints again, whatever it heard
    status_interval: float = 0.5  # at most one round of blueprint status writes per this many seconds

    @classmethod
    def with_keepalive(cls, seconds: float) -> Timing:
        """The server hears from each executor every `seconds` (colonies.keepalive): its long-poll
        lasts that long (whole seconds: the server takes an integer), and so does a busy one's pause."""
        return cls(assign_timeout=max(1, int(seconds)), keepalive_interval=seconds)


class Backoff:
    def __init__(self, timing: Timing) -> None:
        self._base = timing.backoff_base
        self._cap = timing.backoff_cap
        self._failures = 0

    def next_delay(self) -> float:
        """The pause before the next attempt; doubles with every failure in a row, up to the cap."""
        delay = min(self._cap, self._base * 2 ** min(self._failures, 32))
        self._failures += 1
        # Jitter spreads many jobs' retries so that a server coming back is not hit all at once.
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._failures = 0


class Outage:
    """Whether the server is away: an outage is logged once, not once per job and per retry."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._since: float | None = None
        self.why: str | None = None  # the last failure while the outage lasts

    def failed(self, why: object) -> None:
        self.why = f"server unreachable: {why}"
        if self._since is None:
            self._since = time.monotonic()
            log.warning("Colonies server %s unreachable (%s); retrying with backoff", self._where, why)

    def recovered(self) -> None:
        if self._since is not None:
            log.info("Colonies server %s reachable again after %.1f s", self._where, time.monotonic() - self._since)
            self._since = self.why = None
