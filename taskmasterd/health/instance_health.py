"""One instance's readiness, health checks and watchdog, for each run of its process.

`Instance` owns the state machine; this module watches one run and tells the instance what it
saw: the run is ready (up for starttime, READY=1, a first passing check), it missed its ready
deadline, its health changed, its watchdog went unfed. A run holds at most one timer (starttime
or the ready deadline), one notify socket, one health checker and one watchdog; a plain job's
run costs the starttime timer, as before.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .checker import HealthChecker
from .state import Health
from .notify_message import Notification
from .notify_socket import NotifySocket
from .probes import SpawnCheck, job_check_spawner
from ..jobfiles.readiness_spec import effective_healthcheck, ready_deadline
from ..lifecycle.states import State
from .watchdog import Watchdog, watchdog_environment

if TYPE_CHECKING:
    from ..lifecycle.instance import Instance
    from ..jobfiles.jobfile import JobSpec

_LIVE = frozenset({State.STARTING, State.RUNNING})  # a run whose health still matters


class InstanceHealth:
    __slots__ = ("_instance", "_timer", "_socket", "_watchdog", "checker", "notified", "stopping_notified")

    def __init__(self, instance: Instance):
        self._instance = instance
        self._timer: asyncio.TimerHandle | None = None  # starttime, or the ready deadline
        self._socket: NotifySocket | None = None
        self._watchdog: Watchdog | None = None  # armed at READY=1
        self.checker: HealthChecker | None = None
        self.notified: str | None = None  # the run's last STATUS= text
        self.stopping_notified = False  # the run sent STOPPING=1: it is shutting down by itself

    # --- one run --------------------------------------------------------------------------------

    def environment(self, spec: JobSpec) -> dict[str, str]:
        """What a new run is told; with `ready: "notify"` this opens its socket. Raises (OSError,
        ValueError) when no socket can be made, which is a failed start."""
        self.ended()
        if spec.ready != "notify":
            return {}
        account = self._instance.job.account()
        uid = account.uid if account is not None else None
        self._socket = self._instance.job.supervisor.notify_directory().open_socket(self._notified, uid)
        env = self._socket.environment()
        if spec.watchdog is not None:
            env.update(watchdog_environment(spec.watchdog))
        return env

    def began(self, spec: JobSpec) -> None:
        """The process runs: its checks begin, and the clock of its readiness."""
        self._start_checks(spec)
        loop = asyncio.get_running_loop()
        if spec.ready == "starttime":
            if spec.starttime <= 0:
                self._instance.became_ready("up")
            else:
                self._timer = loop.call_later(spec.starttime, self._stayed_up, spec.starttime)
            return
        deadline = ready_deadline(spec)
        if deadline is not None:
            awaited = "no READY=1" if spec.ready == "notify" else "no passing health check"
            self._timer = loop.call_later(deadline, self._deadline_missed, deadline, awaited)

    def quiet(self) -> None:
        """The run is being stopped: no more verdicts (checks, readiness clock, watchdog)."""
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
        if self._instance.state not in _LIVE:
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
        if new.watchdog != old.watchdog:
            if new.watchdog is None:
                self._disarm_watchdog()
            elif self._watchdog is not None:
                self._watchdog.set_timeout(new.watchdog)
            elif self._instance.state is State.RUNNING:
                self._arm_watchdog(new.watchdog)

    # --- what the run shows ---------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """Its check passes, or it has none (dependencies and ColonyOS count it healthy then)."""
        return self.checker is None or self.checker.state is Health.HEALTHY

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

    def _check_spawner(self, spec: JobSpec) -> SpawnCheck:
        job = self._instance.job
        return job_check_spawner(job.supervisor.processes, spec, job.environment(self._instance.index), job.account())

    def _start_checks(self, spec: JobSpec) -> None:
        check = effective_healthcheck(spec)
        if check is not None:
            self.checker = HealthChecker(check, self._instance.health_changed, self._check_spawner(spec))
            self.checker.start()

    def _stayed_up(self, starttime: float) -> None:
        self._timer = None
        self._instance.became_ready(f"up for {starttime:g}s")

    def _deadline_missed(self, deadline: float, awaited: str) -> None:
        self._timer = None
        last = self.checker.last if self.checker is not None else None
        detail = f"{awaited}; last check: {last.detail}" if last is not None else awaited
        self._instance.not_ready(f"not ready within {deadline:g}s ({detail})")

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
        if message.ready and self._instance.state is State.STARTING:
            timeout = self._instance.job.spec.watchdog
            if timeout is not None and not self.stopping_notified:  # armed once the start-up is complete
                self._arm_watchdog(message.watchdog_usec / 1e6 if message.watchdog_usec else timeout)
            self._instance.became_ready("sent READY=1")

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
        self._instance.restart(reason)
