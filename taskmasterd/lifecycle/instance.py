"""One supervised instance of a job: applies the state machine of `states.py` to a real process.

Everything here is a callback of the event loop: a queued spawn, the pidfd reporting an exit, a
timer (starttime, backoff), what `InstanceHealth` saw of the run (ready, unhealthy, watchdog). No
task or thread per instance, so 1000 idle instances cost nothing but memory. The process itself
belongs to the daemon's `ProcessTable`; stopping it is the table's one stop path (`Child.terminate`).
A spawn whose job's dependencies are not met waits in WAITING until the job lets it go.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Callable, Iterable

from .dependencies import Standing
from ..health.state import Health
from ..health.instance_health import InstanceHealth
from ..processes.logcapture import LogFile, open_capture
from ..processes.containment import ContainmentError
from ..processes.table import Child, SpawnRefused, SpawnTicket
from ..kernel.safepath import UnsafePath
from ..processes.spawner import launch_for, spawn_error_text
from .states import (
    ACTIVE,
    QUICK_EXIT,
    State,
    backoff_delay,
    check_transition,
    crash_loop_delay,
    describe_exit,
    exit_is_expected,
    failed_start_state,
    should_restart,
)

if TYPE_CHECKING:
    from .job import Job

log = logging.getLogger("taskmasterd.instance")
S = State
_UP = frozenset({S.STARTING, S.RUNNING, S.STOPPING})  # states in which uptime means something
_BUSY = frozenset({S.STARTING, S.RUNNING, S.STOPPING, S.BACKOFF})  # what a retired instance waits out


class Instance:
    def __init__(self, job: Job, index: int):
        self.job = job
        self.index = index
        self.state = S.STOPPED
        self.since = round(time.time(), 6)
        self.description = "not started"
        self.child: Child | None = None
        self.started_at: float | None = None  # monotonic time of the current spawn
        self.restarts = 0  # automatic restarts after an exit from RUNNING
        self.failures = 0  # failed starts in a row
        self.quick_exits = 0  # exits in a row within QUICK_EXIT of the spawn (a crash loop)
        self.exitcode: int | None = None
        self.signal: int | None = None
        self.wanted = False  # should be running: autostart or a start command, until a stop/kill
        self.retired = False  # numprocs shrank below it: it leaves the job once stopped
        self.discarded = False  # its job is gone: it never spawns again
        self.logs: tuple[LogFile, ...] = ()  # the files of the current spawn's output
        self.health = InstanceHealth(self)  # readiness, health checks and watchdog of each run
        self._ticket: SpawnTicket | None = None
        self._timer: asyncio.TimerHandle | None = None  # backoff, or a throttled autorestart
        self._changed: asyncio.Future[State] | None = None
        # Why the daemon is stopping the run by itself, and what follows once it has exited:
        self._restart_why: str | None = None  # a new run (unhealthy, watchdog)
        self._failed_readiness: str | None = None  # a failed start (not ready within its deadline)

    @property
    def label(self) -> str:
        return f"{self.job.name}[{self.index}]"

    # --- commands -------------------------------------------------------------------------------

    def start(self, reason: str = "start command") -> bool:
        """Start unless already up; resets the retry budget. False when it was already up."""
        if self.discarded:
            return False
        self.wanted = True
        self.failures = self.quick_exits = 0
        if self.state in ACTIVE:
            return False
        if self.state is S.STOPPING:
            return True  # spawned again at its exit, since it is wanted
        self._spawn(reason)
        return True

    def stop(self, kill: bool = False) -> bool:
        """Stop signal (or SIGKILL) to the process group; False when nothing was running."""
        was_wanted, self.wanted = self.wanted, False
        why = "kill command" if kill else "stop command"
        if self.state in (S.BACKOFF, S.WAITING):
            self._cancel_timer()
            self._enter(S.STOPPED, why)
            return True
        if self.state is S.STOPPING:
            if kill and self.child is not None:
                self.child.kill()
            return True
        if self.state not in ACTIVE:
            if was_wanted:  # no transition, but its job may take ColonyOS work again
                self.job.standing_changed()
            return False
        self._cancel_timer()
        if self.child is None:  # its spawn is still queued
            self._cancel_ticket()
            self._enter(S.STOPPED, why)
            return True
        if kill:
            self._enter(S.STOPPING, why)
            self.child.kill()
        else:
            self._terminate(why)
        return True

    def restart(self, why: str) -> None:
        """Replace the run under way (unhealthy, watchdog missed): stop it, then spawn again."""
        if self.state not in (S.STARTING, S.RUNNING) or self.child is None:
            return
        self.restarts += 1
        self._restart_why = why
        self._terminate(f"restart: {why}")

    def _terminate(self, why: str) -> None:
        spec = self.job.spec  # the current file's stop settings, even for an older spawn
        assert self.child is not None
        self._enter(S.STOPPING, f"{why}: {signal.Signals(spec.stopsignal).name} to {self.child.holder}")
        self.child.terminate(spec.stopsignal, spec.stoptime)

    def signal_processes(self, sig: int) -> bool:
        """`sig` to the running process group; False when nothing runs."""
        return self.child is not None and self.child.signal_group(sig)

    def repair(self) -> bool:
        """Start again if broken (FATAL, BACKOFF, crashed) or meant to run but not running."""
        broken = self.state in (S.FATAL, S.BACKOFF) or (
            self.state is S.EXITED and self.exitcode is not None and not self._last_exit_expected()
        )
        if broken or (self.wanted and self.state in (S.STOPPED, S.EXITED) and self.exitcode is None):
            self._cancel_timer()
            return self.start("repair")
        return False

    def retire(self) -> None:
        """numprocs no longer covers this index: stop, then leave the job (see Job.retired)."""
        self.retired = True
        self.stop()
        self._maybe_leave()

    def unretire(self) -> None:
        self.retired = False

    def discard(self) -> None:
        """Its job is forgotten: cancel whatever is pending; it never spawns again."""
        self.discarded = True
        self.wanted = False
        self._cancel_timer()
        self._cancel_ticket()
        self.health.ended()
        self._wake()

    def _last_exit_expected(self) -> bool:
        return self.signal is None and self.exitcode in self.job.spec.exitcodes

    # --- waiting --------------------------------------------------------------------------------

    async def wait_until(self, done: Callable[[Instance], bool]) -> State:
        while not done(self) and not self.discarded:
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._changed)
        return self.state

    def start_settled(self) -> bool:
        """A start has an answer: ready (RUNNING), or failed (BACKOFF/FATAL), or was stopped."""
        return self.state not in (S.WAITING, S.STARTING, S.STOPPING)

    def stop_settled(self) -> bool:
        return self.state is not S.STOPPING

    def busy(self) -> bool:
        return self.state in _BUSY

    # --- the machine ----------------------------------------------------------------------------

    def _enter(self, new: State, reason: str) -> None:
        old = self.state
        check_transition(old, new)
        self.state = new
        self.since = round(time.time(), 6)
        log.log(logging.WARNING if new is S.FATAL else logging.INFO,
                "%s: %s -> %s (%s)", self.label, old.value, new.value, reason)
        self.job.supervisor.events.publish_state(self.job.name, self.index, old, new, reason, self.since)
        if new is S.STOPPING:
            self.health.quiet()
        self._wake()
        self.job.standing_changed()
        if self.retired:
            self._maybe_leave()

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(self.state)

    def _maybe_leave(self) -> None:
        if not self.busy():
            self.job.retired(self)

    def _spawn(self, reason: str) -> None:
        """STARTING now, or WAITING while a dependency of the job is not met."""
        self._cancel_timer()
        waiting = self.job.unmet_dependencies()
        if waiting is not None:
            self.description = waiting
            self._enter(S.WAITING, f"{reason}; {waiting}")
            self.job.supervisor.track_waiting(self.job)
            return
        self._queue_fork(reason)

    def dependencies_changed(self, waiting: str | None) -> None:
        """From the job, while WAITING: go once nothing is awaited, else show what still is."""
        if self.state is S.WAITING:
            if waiting is None:
                self._queue_fork("every dependency met")
            else:
                self.description = waiting

    def _queue_fork(self, reason: str) -> None:
        """STARTING now; the fork itself waits its turn in the table's spawn queue."""
        self._enter(S.STARTING, reason)
        self.exitcode = self.signal = None
        self.description = "spawning"
        self._ticket = self.job.supervisor.processes.queue(self._fork)

    def _fork(self) -> None:
        self._ticket = None
        if self.discarded or self.state is not S.STARTING:
            return
        spec = self.job.spec
        supervisor = self.job.supervisor
        loop = asyncio.get_running_loop()
        child_fds: list[int] = []
        logs: list[LogFile] = []
        try:
            # "stderr": "stdout": one pipe for both, so the file has them in the order written
            for stream in ("stdout",) if spec.stderr_to_stdout else ("stdout", "stderr"):
                # A drain outlives its child and closes itself at EOF, so no byte is lost on exit.
                # Container mode: the daemon's own stdout/stderr when the job names no file.
                console = supervisor.console.stream_for(spec, stream, self.index) if supervisor.console else None
                fd, file = open_capture(spec.log_path(stream, self.index, supervisor.log_dir), spec.logmaxbytes,
                                        spec.logbackups, supervisor.log_files, loop, console)
                child_fds.append(fd)
                if file is not None:
                    logs.append(file)
            env = {**self.job.environment(self.index), **self.health.environment(spec)}
            launch = launch_for(spec, env, self.job.account(), unit=f"{spec.name}.{self.index}")
            self.child = supervisor.processes.spawn(launch, child_fds[0], child_fds[-1])
        except UnsafePath as exc:
            self._failed_start(f"unsafe log file: {exc.strerror}", final=True)
            return
        except (SpawnRefused, ContainmentError) as exc:  # the same next time: no retry
            self._failed_start(str(exc), final=True)
            return
        except Exception as exc:  # whatever the reason, the instance says it and never hangs in STARTING
            self._failed_start(spawn_error_text(exc))
            return
        finally:
            for fd in child_fds:
                if fd >= 0:
                    os.close(fd)
        self.logs = tuple(logs)
        self.started_at = time.monotonic()
        self.description = f"pid {self.child.pid}"
        self.child.exited.add_done_callback(self._on_exit)
        self.health.began(spec)

    # --- what InstanceHealth saw of the run -----------------------------------------------------

    def became_ready(self, how: str) -> None:
        if self.state is S.STARTING and self.child is not None:
            self.failures = 0
            self._enter(S.RUNNING, f"pid {self.child.pid} {how}")

    def not_ready(self, why: str) -> None:
        """The ready deadline passed: stop the run; its exit counts as a failed start."""
        if self.state is S.STARTING and self.child is not None:
            self._failed_readiness = why
            self._terminate(why)

    def health_changed(self, old: Health, new: Health, reason: str) -> None:
        """Every change of a run's health verdict comes through here (logs, events, dependants)."""
        log.log(logging.WARNING if new is Health.UNHEALTHY else logging.INFO,
                "%s: %s -> %s (%s)", self.label, old.value, new.value, reason)
        self.job.supervisor.events.publish_health(self.job.name, self.index, old, new, reason, time.time())
        self.job.standing_changed()
        if new is Health.HEALTHY and self.job.spec.ready == "healthy":
            self.became_ready(f"passed its first health check ({reason})")
        elif new is Health.UNHEALTHY and self.job.spec.on_unhealthy == "restart":
            self.restart(f"unhealthy ({reason})")

    def state_and_health(self) -> str:
        """Its state and, while checked, its health: "RUNNING, unhealthy (http 503)"."""
        verdict = self.health.verdict()
        return f"{self.state.value}, {verdict}" if verdict else self.state.value

    def standing(self) -> Standing:
        """What the job's dependants see of this instance."""
        running = self.state is S.RUNNING
        return Standing(running=running, healthy=running and self.health.healthy,
                        completed=self.state is S.EXITED and self._last_exit_expected())

    # --- failures and exits ---------------------------------------------------------------------

    def _failed_start(self, why: str, final: bool = False) -> None:
        self.health.ended()
        self.failures += 1
        spec = self.job.spec
        new = S.FATAL if final else failed_start_state(self.failures, spec.startretries)
        if new is S.BACKOFF:
            delay = backoff_delay(self.failures)
            self.description = f"{why}; retry {self.failures} in {delay:g}s"
            self._timer = asyncio.get_running_loop().call_later(delay, self._retry, "backoff delay elapsed")
        elif final:
            self.description = why
        else:
            self.description = f"{why}; gave up after {self.failures} attempts"
        self._enter(new, self.description)

    def _retry(self, reason: str) -> None:
        self._timer = None
        self._spawn(reason)

    def _on_exit(self, exited: asyncio.Future[int]) -> None:
        child, self.child = self.child, None
        if child is None:
            return
        returncode = exited.result()
        self._cancel_timer()
        self.health.ended()
        self.exitcode, self.signal = (None, -returncode) if returncode < 0 else (returncode, None)
        what = child.exit_reason or describe_exit(returncode)  # "out of memory: killed by the kernel, ..."
        lived = time.monotonic() - (self.started_at or 0.0)
        if self.state is S.STARTING:
            self._failed_start(f"exited too soon ({what})")
        elif self.state is S.RUNNING:
            expected = exit_is_expected(returncode, self.job.spec.exitcodes)
            self.description = f"{what} ({'expected' if expected else 'unexpected'})"
            self._enter(S.EXITED, self.description)
            if should_restart(self.job.spec.autorestart, expected) and not self.discarded:
                self._restart_after(lived)
        elif self.state is S.STOPPING:
            failed, restart = self._failed_readiness, self._restart_why
            self._failed_readiness = self._restart_why = None
            again = self.wanted and not self.retired and not self.discarded
            if again and failed is not None:
                self._failed_start(failed)
                return
            self.description = f"stopped ({what})"
            self._enter(S.STOPPED, what)
            if again:
                self._spawn(f"restart: {restart}" if restart else "start after stop")

    def _restart_after(self, lived: float) -> None:
        """Autorestart, throttled when the instance keeps dying young, whatever its starttime."""
        self.restarts += 1
        self.quick_exits = self.quick_exits + 1 if lived < QUICK_EXIT else 0
        delay = crash_loop_delay(self.quick_exits)
        if delay <= 0:
            self._spawn(f"autorestart={self.job.spec.autorestart}")
            return
        self.description = (f"{self.description}; exited {self.quick_exits} times in a row within "
                            f"{QUICK_EXIT:g}s of starting, restart in {delay:g}s")
        self._timer = asyncio.get_running_loop().call_later(delay, self._retry, f"autorestart={self.job.spec.autorestart}")
        self._enter(S.BACKOFF, self.description)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _cancel_ticket(self) -> None:
        if self._ticket is not None:
            self._ticket.cancel()
            self._ticket = None

    # --- reporting ------------------------------------------------------------------------------

    def status(self, now: float) -> dict:
        up = self.started_at is not None and self.state in _UP
        entry = {
            "index": self.index,
            "state": self.state,  # a str enum: serializes as its name, compares equal to it
            "pid": self.child.pid if self.child else None,
            "since": self.since,
            "uptime": now - self.started_at if up else None,  # not rounded: `status` is a hot path
            "restarts": self.restarts,
            "exitcode": self.exitcode,
            "signal": self.signal,
            "description": self.description,
            # meant to be up now (a finished run with an expected exit is not): status exits 3 otherwise
            "wanted": self.wanted and not (self.state is S.EXITED and self._last_exit_expected()),
        }
        self.health.report(entry)
        dropped = sum(file.dropped for file in self.logs)
        if dropped:
            entry["dropped"] = dropped
        return entry


async def wait_each(instances: Iterable[Instance], done: Callable[[Instance], bool]) -> None:
    """Until each of `instances` has met `done` (or left): one wait after the other, which ends
    when the slowest does, with no task per instance (10 000 of them cost a shutdown 0.5 s)."""
    for inst in instances:
        await inst.wait_until(done)
