"""One supervised instance of a job: the executor of the table in `states.py`.

Its job's queue hands it one event at a time (`handle`); the table says what follows and the
instance performs it: queue a spawn in the daemon's `ProcessTable`, stop the run through
`Child.terminate`, arm its retry timer, log and publish a transition, start or quiet the run's
watch (`InstanceHealth`), defer a command that came during a restart. What the outside world
tells it — the spawn made, the process gone, a timer, what the run's watcher saw — comes back as
events through the job's queue, tagged with the spawn they are about, so a late report about an
earlier run is dropped. No task or thread per instance: 1000 idle instances cost nothing but memory.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

from .dependencies import Standing
from .services import Services
from .states import (
    ACTIVE,
    Arm,
    Effect,
    Enter,
    Event,
    Kind,
    Machine,
    Policy,
    State,
)
from .states import step as table_step
from ..health.instance_health import InstanceHealth
from ..health.probes import SpawnCheck, job_check_spawner
from ..health.state import Health
from ..kernel.safepath import UnsafePath
from ..observe.events import Event as Published
from ..processes.containment import ContainmentError
from ..processes.launch import Account
from ..processes.logcapture import LogFile, open_capture
from ..processes.spawner import launch_for, spawn_error_text
from ..processes.table import Child, SpawnRefused, SpawnTicket

if TYPE_CHECKING:
    from ..jobfiles.jobfile import JobSpec

log = logging.getLogger("taskmasterd.instance")
S, K = State, Kind
_UP = frozenset({S.STARTING, S.RUNNING, S.STOPPING})  # states in which uptime means something
_BUSY = frozenset({S.STARTING, S.RUNNING, S.STOPPING, S.BACKOFF})  # what a retired instance waits out
# Events about one run: dropped when they name a spawn that is not the current one.
_RUN_EVENTS = frozenset({K.EXIT, K.READY, K.NOT_READY, K.HEALTHY, K.UNHEALTHY, K.WATCHDOG})
Answer = asyncio.Future  # of bool: whether a command acted (resolved when the job's queue handled it)


class JobView(Protocol):
    """What an instance reads of its job, and the queue it posts to (a `Job` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def spec(self) -> JobSpec: ...
    @property
    def policy(self) -> Policy: ...

    def account(self) -> Account | None: ...

    def environment(self, index: int) -> dict[str, str]: ...

    def sockets_for(self, index: int) -> tuple[tuple[int, str], ...]: ...

    def waiting(self) -> str | None:
        """What a start still waits for ("waiting for db (healthy)"), or None."""

    def post(self, inst: Instance, event: Event, answer: Answer | None = None) -> None: ...


class Instance:
    def __init__(self, job: JobView, services: Services, index: int):
        self.job = job
        self.services = services
        self.index = index
        self.machine = Machine()
        self.since = round(time.time(), 6)
        self.child: Child | None = None
        self.started_at: float | None = None  # monotonic time of the current spawn
        self.retired = False  # numprocs shrank below it: it leaves the job once stopped
        self.discarded = False  # its job is gone: it never spawns again
        self.logs: tuple[LogFile, ...] = ()  # the files of the current spawn's output
        self.health = InstanceHealth(self, services.notify_directory, self._check_spawner, services.checks)
        self._ticket: SpawnTicket | None = None
        self._timer: asyncio.TimerHandle | None = None  # the retry timer (backoff, throttled restart)
        self._waiters: list[asyncio.Future[None]] = []
        self._deferred: list[tuple[Event, Answer | None]] = []  # commands behind a restart

    @property
    def label(self) -> str:
        return f"{self.job.name}[{self.index}]"

    # what the machine remembers, as the rest of the daemon reads it
    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def description(self) -> str:
        return self.machine.description

    @property
    def wanted(self) -> bool:
        return self.machine.wanted

    @property
    def restarts(self) -> int:
        return self.machine.restarts

    @property
    def failures(self) -> int:
        return self.machine.failures

    @property
    def exitcode(self) -> int | None:
        return self.machine.exitcode

    @property
    def signal(self) -> int | None:
        return self.machine.signal

    # --- events ---------------------------------------------------------------------------------

    def command(self, kind: Kind, why: str) -> Answer:
        """A command through the job's queue; the answer says whether it acted (at once, unless a
        restart under way defers it)."""
        answer: Answer = asyncio.get_running_loop().create_future()
        self.job.post(self, Event(kind, why), answer)
        return answer

    def _post(self, event: Event) -> None:
        self.job.post(self, event)

    def handle(self, event: Event, answer: Answer | None) -> None:
        """One event from the job's queue: the table's step, then its effects, in order."""
        if self.discarded or (event.kind in _RUN_EVENTS and event.spawn != self.machine.spawn):
            _answer(answer, False)
            return
        waiting = self.job.waiting() if self.job.spec.depends_on else None
        result = table_step(self.machine, event, self.job.policy, waiting)
        self.machine = result.machine
        for action in result.effects:
            self._perform(action, event, answer)
        if Effect.DEFER not in result.effects:
            _answer(answer, result.acted)
        self._wake()

    def _perform(self, action: Enter | Arm | Effect, event: Event, answer: Answer | None) -> None:
        if isinstance(action, Enter):
            self._entered(action)
        elif isinstance(action, Arm):
            self._timer = asyncio.get_running_loop().call_later(action.delay, self._post, Event(K.TIMER, action.why))
        elif action is Effect.SPAWN:
            self._ticket = self.services.processes.queue(self._fork)
        elif action is Effect.CANCEL_SPAWN:
            if self._ticket is not None:
                self._ticket.cancel()
                self._ticket = None
        elif action is Effect.TERMINATE:
            spec = self.job.spec  # the current file's stop settings, even for an older spawn
            if self.child is not None:
                self.child.terminate(spec.stopsignal, spec.stoptime)
        elif action is Effect.KILL:
            if self.child is not None:
                self.child.kill()
        elif action is Effect.DISARM:
            self._cancel_timer()
        elif action is Effect.WATCH:
            self.health.began(self.job.spec)
        elif action is Effect.QUIET:
            self.health.quiet()
        elif action is Effect.END_RUN:
            self.health.ended()
        elif action is Effect.HOLD:
            self.services.hold(self.job.name)
        elif action is Effect.DEFER:
            self._deferred.append((event, answer))
        elif action is Effect.REPLAY:
            deferred, self._deferred = self._deferred, []
            for later, its_answer in deferred:
                self.job.post(self, later, its_answer)
        elif action is Effect.STANDING:
            self.services.standing_changed(self.job.name)

    def _entered(self, enter: Enter) -> None:
        self.since = round(time.time(), 6)
        spawn = enter.spawn
        log.log(logging.WARNING if enter.new is S.FATAL else logging.INFO, "%s: %s -> %s (%s)%s", self.label,
                enter.old.value, enter.new.value, enter.reason, f"; spawn {spawn}" if spawn is not None else "")
        self.services.events.publish(Published("state", self.job.name, self.index, enter.old.value,
                                               enter.new.value, enter.reason, self.since, spawn))
        self.services.standing_changed(self.job.name)

    # --- what the outside world tells it --------------------------------------------------------

    def _fork(self) -> None:
        """The process table's turn for this spawn: make it, or say why not."""
        self._ticket = None
        if self.discarded or self.machine.state is not S.STARTING or self.machine.has_process:
            return
        spec = self.job.spec
        services = self.services
        loop = asyncio.get_running_loop()
        child_fds: list[int] = []
        logs: list[LogFile] = []
        try:
            # "stderr": "stdout": one pipe for both, so the file has them in the order written
            for stream in ("stdout",) if spec.stderr_to_stdout else ("stdout", "stderr"):
                # A drain outlives its child and closes itself at EOF, so no byte is lost on exit.
                # Container mode: the daemon's own stdout/stderr when the job names no file.
                console = services.console.stream_for(spec, stream, self.index) if services.console else None
                fd, file = open_capture(spec.log_path(stream, self.index, services.log_dir), spec.logmaxbytes,
                                        spec.logbackups, services.log_files, loop, console)
                child_fds.append(fd)
                if file is not None:
                    logs.append(file)
            account = self.job.account()
            env = {**self.job.environment(self.index),
                   **self.health.environment(spec, account.uid if account is not None else None)}
            launch = launch_for(spec, env, account, unit=f"{spec.name}.{self.index}",
                                sockets=self.job.sockets_for(self.index))
            child = services.processes.spawn(launch, child_fds[0], child_fds[-1])
        except UnsafePath as exc:
            self._post(Event(K.SPAWN_FAILED, f"unsafe log file: {exc.strerror}", final=True))
            return
        except (SpawnRefused, ContainmentError) as exc:  # the same next time: no retry
            self._post(Event(K.SPAWN_FAILED, str(exc), final=True))
            return
        except Exception as exc:  # whatever the reason, the instance says it and never hangs in STARTING
            self._post(Event(K.SPAWN_FAILED, spawn_error_text(exc)))
            return
        finally:
            for fd in child_fds:
                if fd >= 0:
                    os.close(fd)
        self.child, self.logs, self.started_at = child, tuple(logs), time.monotonic()
        child.exited.add_done_callback(self._exited)
        self._post(Event(K.SPAWNED, child.holder, pid=child.pid, spawn=child.spawn_id))

    def _exited(self, exited: asyncio.Future[int]) -> None:
        child = self.child
        if child is None or child.exited is not exited:
            return
        self.child = None
        lived = time.monotonic() - (self.started_at or 0.0)
        # why: "out of memory: killed by the kernel, …" when the kernel says so, else the code says it
        self._post(Event(K.EXIT, child.exit_reason or "", code=exited.result(), lived=lived, spawn=child.spawn_id))

    def _run_event(self, kind: Kind, why: str) -> None:
        child = self.child
        if child is not None:
            self._post(Event(kind, why, spawn=child.spawn_id))

    # RunObserver: what InstanceHealth saw of the current run
    def run_ready(self, how: str) -> None:
        self._run_event(K.READY, how)

    def run_not_ready(self, why: str) -> None:
        self._run_event(K.NOT_READY, why)

    def run_watchdog(self, why: str) -> None:
        self._run_event(K.WATCHDOG, why)

    def run_health(self, old: Health, new: Health, detail: str) -> None:
        """Every change of a run's health verdict: logged and published, then the table decides."""
        spawn = self.child.spawn_id if self.child is not None else None
        log.log(logging.WARNING if new is Health.UNHEALTHY else logging.INFO, "%s: %s -> %s (%s)%s",
                self.label, old.value, new.value, detail, f"; spawn {spawn}" if spawn is not None else "")
        self.services.events.publish(Published("health", self.job.name, self.index, old.value, new.value, detail,
                                               time.time(), spawn))
        self.services.standing_changed(self.job.name)
        if new is Health.HEALTHY:
            self._run_event(K.HEALTHY, detail)
        elif new is Health.UNHEALTHY:
            self._run_event(K.UNHEALTHY, detail)

    def _check_spawner(self, spec: JobSpec) -> SpawnCheck:
        return job_check_spawner(self.services.processes, spec, self.job.environment(self.index), self.job.account())

    # --- the end --------------------------------------------------------------------------------

    def discard(self) -> None:
        """Its job is forgotten: cancel whatever is pending; it never spawns again."""
        self.discarded = True
        self._cancel_timer()
        if self._ticket is not None:
            self._ticket.cancel()
            self._ticket = None
        self.health.ended()
        for _, answer in self._deferred:
            _answer(answer, False)
        self._deferred = []
        self._wake()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- waiting --------------------------------------------------------------------------------

    async def wait_until(self, done: Callable[[Instance], bool]) -> State:
        """Until `done(self)` holds (checked after every event it handles), or it was discarded."""
        while not done(self) and not self.discarded:
            woken = asyncio.get_running_loop().create_future()
            self._waiters.append(woken)
            try:
                await woken
            finally:
                if not woken.done():
                    self._waiters.remove(woken)
        return self.state

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for woken in waiters:
                if not woken.done():
                    woken.set_result(None)

    def start_settled(self) -> bool:
        """A start has an answer: ready (RUNNING), or failed (BACKOFF/FATAL), or was stopped."""
        return self.state not in (S.WAITING, S.STARTING, S.STOPPING)

    def stop_settled(self) -> bool:
        return self.state is not S.STOPPING

    def busy(self) -> bool:
        return self.state in _BUSY

    # --- reporting ------------------------------------------------------------------------------

    def state_and_health(self) -> str:
        """Its state and, while checked, its health: "RUNNING, unhealthy (http 503)"."""
        verdict = self.health.verdict()
        return f"{self.state.value}, {verdict}" if verdict else self.state.value

    def standing(self) -> Standing:
        """What the job's dependants see of this instance."""
        running = self.state is S.RUNNING
        return Standing(running=running, healthy=running and self.health.healthy,
                        completed=self.state is S.EXITED and self.machine.last_exit_expected(self.job.policy))

    def coming(self) -> bool:
        """Up, or on its way up by itself (a dependant waiting for it need not start it)."""
        return self.wanted and (self.state in ACTIVE or self.state in (S.BACKOFF, S.STOPPING))

    def status(self, now: float) -> dict:
        m = self.machine
        up = self.started_at is not None and m.state in _UP
        entry = {
            "index": self.index,
            "state": m.state,  # a str enum: serializes as its name, compares equal to it
            "pid": self.child.pid if self.child else None,
            "spawn": m.spawn,  # the id of the current (or last) spawn: its events and log lines carry it
            "since": self.since,
            "uptime": now - self.started_at if up else None,  # not rounded: `status` is a hot path
            "restarts": m.restarts,
            "exitcode": m.exitcode,
            "signal": m.signal,
            "description": m.description,
            # meant to be up now (a finished run with an expected exit is not): status exits 3 otherwise
            "wanted": m.wanted and not (m.state is S.EXITED and m.last_exit_expected(self.job.policy)),
        }
        self.health.report(entry)
        dropped = sum(file.dropped for file in self.logs)
        if dropped:
            entry["dropped"] = dropped
        return entry


def _answer(answer: Answer | None, acted: bool) -> None:
    if answer is not None and not answer.done():
        answer.set_result(acted)


async def wait_each(instances: Iterable[Instance], done: Callable[[Instance], bool]) -> None:
    """Until each of `instances` has met `done` (or left): one wait after the other, which ends
    when the slowest does, with no task per instance (10 000 of them cost a shutdown 0.5 s)."""
    for inst in instances:
        await inst.wait_until(done)
