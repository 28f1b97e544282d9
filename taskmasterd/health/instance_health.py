"""One instance's readiness, health checks and watchdog, for each run of its process.

The instance's state machine decides; this module watches one run and tells its observer (the
instance) what it saw: the run is ready (up for starttime, READY=1), it missed its ready deadline,
its health changed, its watchdog went unfed. It knows nothing of states: a report about a run the
machine no longer cares for is the machine's to ignore. A run holds at most one timer (starttime
or the ready deadline), one notify socket, one health checker and one watchdog; a plain job's run
costs the starttime timer.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .checker import HealthChecker
from .state import Health
from .notify_message import Notification
from .notify_socket import NotifyDirectory, NotifySocket
from .probes import SpawnCheck
from ..jobfiles.readiness_spec import effective_healthcheck, ready_deadline
from .watchdog import Watchdog, watchdog_environment
from ..tasks import TaskOwner

if TYPE_CHECKING:
    from ..jobfiles.jobfile import JobSpec


class RunObserver(Protocol):
    """Who hears what a run showed (an instance)."""

    def run_ready(self, how: str) -> None:
        """Up for starttime ("up for 1s", "up"), or "sent READY=1"."""

    def run_not_ready(self, why: str) -> None:
        """Its ready deadline passed."""

    def run_health(self, old: Health, new: Health, detail: str) -> None:
        """Its health verdict changed."""

    def run_watchdog(self, why: str) -> None:
        """No WATCHDOG=1 in time, or WATCHDOG=trigger."""


class InstanceHealth:
    __slots__ = ("_observer", "_notify_directory", "_check_spawner", "_tasks", "_timer", "_socket", "_watchdog", "_watching",
                 "_ready", "_watchdog_timeout", "checker", "notified", "stopping_notified")

    def __init__(self, observer: RunObserver, notify_directory: Callable[[], NotifyDirectory],
                 check_spawner: Callable[[JobSpec], SpawnCheck], tasks: TaskOwner):
        self._observer = observer
        self._notify_directory = notify_directory
        self._check_spawner = check_spawner  # how a `cmd` check of this instance runs
        self._tasks = tasks  # the owner of its checks' tasks
        self._timer: asyncio.TimerHandle | None = None  # starttime, or the ready deadline
        self._socket: NotifySocket | None = None
        self._watchdog: Watchdog | None = None  # armed at READY=1
        self._watching = False  # between began() and quiet(): the run's verdicts still matter
        self._ready = False  # the run was reported ready
        self._watchdog_timeout: float | None = None  # the job's `watchdog`, armed at READY=1
        self.checker: HealthChecker | None = None
        self.notified: str | None = None  # the run's last STATUS= text
        self.stopping_notified = False  # the run sent STOPPING=1: it is shutting down by itself

    # --- one run --------------------------------------------------------------------------------

    def environment(self, spec: JobSpec, uid: int | None) -> dict[str, str]:
        """What a new run is told; with `ready: "notify"` this opens its socket, owned by `uid`
        (the job's user; None: the daemon's). Raises (OSError, ValueError) when no socket can be
        made, which is a failed start."""
        self.ended()
        if spec.ready != "notify":
            return {}
        self._socket = self._notify_directory().open_socket(self._notified, uid)
        env = self._socket.environment()
        if spec.watchdog is not None:
            env.update(watchdog_environment(spec.watchdog))
        return env

    def began(self, spec: JobSpec) -> None:
        """The process runs: its checks begin, and the clock of its readiness."""
        self._watching, self._ready, self._watchdog_timeout = True, False, spec.watchdog
        self._start_checks(spec)
        loop = asyncio.get_running_loop()
        if spec.ready == "starttime":
            if spec.starttime <= 0:
                self._report_ready("up")
            else:
                self._timer = loop.call_later(spec.starttime, self._stayed_up, spec.starttime)
            return
        deadline = ready_deadline(spec)
        if deadline is not None:
            awaited = "no READY=1" if spec.ready == "notify" else "no passing health check"
            self._timer = loop.call_later(deadline, self._deadline_missed, deadline, awaited)

    def quiet(self) -> None:
        """The run is being stopped: no more verdicts (checks, readiness clock, watchdog)."""
        self._watching = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.checker is not None:
            self.checker.stop()
            self.checker = None
        self._disarm_watchdog()

    def ended(self) -> None:
        """The run is over (or never began): its socket goes too."""
        self.quiet()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self.notified = None
        self.stopping_notified = False

    def update(self, old: JobSpec, new: JobSpec) -> None:
        """A reload changed the job file: the run under way takes the new check and watchdog
        settings at once (a new `ready` applies from the next run: this one is past or in its start)."""
        if not self._watching:
            return
        check = effective_healthcheck(new)
        if check != effective_healthcheck(old):
            if self.checker is None:
                self._start_checks(new)
            elif check is None:
                self.checker.stop()
                self.checker = None
            else:
                self.checker.update(check, self._check_spawner(new))
        self._watchdog_timeout = new.watchdog
        if new.watchdog != old.watchdog:
            if new.watchdog is None:
                self._disarm_watchdog()
            elif self._watchdog is not None:
                self._watchdog.set_timeout(new.watchdog)
            elif self._ready:
                self._arm_watchdog(new.watchdog)

    # --- what the run shows ---------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """Its check passes, or it has none (dependencies and ColonyOS count it healthy then)."""
        return self.checker is None or self.checker.state is Health.HEALTHY

    @property
    def state(self) -> Health | None:
        """The check's verdict; None without a check under way."""
        return self.checker.state if self.checker is not None else None

    def verdict(self) -> str | None:
        """"unhealthy (http 503)", "starting"; None without a check under way."""
        checker = self.checker
        if checker is None or checker.state is None:
            return None
        return f"{checker.state.value} ({checker.last.detail})" if checker.last else checker.state.value

    def report(self, entry: dict[str, Any]) -> None:
        """Add this run's health and notifications to the instance's status entry."""
        if self.checker is not None:
            entry.update(self.checker.status())
        if self.notified is not None:
            entry["notify_status"] = self.notified
        if self.stopping_notified:
            entry["notify_stopping"] = True

    # --- inside ---------------------------------------------------------------------------------

    def _start_checks(self, spec: JobSpec) -> None:
        check = effective_healthcheck(spec)
        if check is not None:
            self.checker = HealthChecker(check, self._observer.run_health, self._check_spawner(spec), self._tasks)
            self.checker.start()

    def _report_ready(self, how: str) -> None:
        self._ready = True
        self._observer.run_ready(how)

    def _stayed_up(self, starttime: float) -> None:
        self._timer = None
        self._report_ready(f"up for {starttime:g}s")

    def _deadline_missed(self, deadline: float, awaited: str) -> None:
        self._timer = None
        last = self.checker.last if self.checker is not None else None
        detail = f"{awaited}; last check: {last.detail}" if last is not None else awaited
        self._observer.run_not_ready(f"not ready within {deadline:g}s ({detail})")

    def _notified(self, message: Notification) -> None:
        if message.status is not None:
            self.notified = message.status
        if message.stopping:
            self.stopping_notified = True
            self._disarm_watchdog()
        watchdog = self._watchdog
        if watchdog is not None:
            if message.watchdog_usec is not None:
                watchdog.set_timeout(message.watchdog_usec / 1e6)
            if message.watchdog_ping:
                watchdog.ping()
            if message.watchdog_trigger:
                watchdog.trigger()
                return
        if message.ready and self._watching and not self._ready:
            if self._watchdog_timeout is not None and not self.stopping_notified:  # armed once the start-up is complete
                self._arm_watchdog(message.watchdog_usec / 1e6 if message.watchdog_usec else self._watchdog_timeout)
            if self._timer is not None:  # the ready deadline
                self._timer.cancel()
                self._timer = None
            self._report_ready("sent READY=1")

    def _arm_watchdog(self, timeout: float) -> None:
        if self._socket is None:  # a run started without a socket cannot ping
            return
        self._watchdog = Watchdog(timeout, self._watchdog_missed)
        self._watchdog.arm()

    def _disarm_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None

    def _watchdog_missed(self, reason: str) -> None:
        self._watchdog = None
        self._observer.run_watchdog(reason)
