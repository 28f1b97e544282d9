"""One supervised instance of a job: the executor of the table in `states.py`.

Its job's queue hands it one event at a time (`handle`); the table says what follows and the
instance performs it: queue a spawn in the daemon's `ProcessTable`, stop the run through
`Child.terminate`, arm its retry timer, log and publish a transition, start or quiet the run's
watch (`InstanceHealth`), defer a command that came during a restart. What the outside world
tells it — the spawn made, the process gone, a timer, what the run's watcher saw — comes back as
events through the job's queue, tagged with the spawn they are about, so a late report about an
earlier run is dropped. No task or thread per instance: 1000 idle instances cost nothing but memory.

An instance is a slot of two `Run`s: the one the table's effects are about, and the second one a
rolling restart starts beside it (`Second(...)` effects; `SWAP` exchanges them once the new run
is ready). Each run has its own spawn, health watch and log files, and tags what it reports with
its own spawn id, so the table tells the two apart.
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
    Action,
    Arm,
    Effect,
    Enter,
    Event,
    Kind,
    Machine,
    Note,
    Policy,
    Roll,
    Second,
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
# Events about one run: dropped when they name a spawn that is neither of the slot's.
_RUN_EVENTS = frozenset({K.EXIT, K.READY, K.NOT_READY, K.HEALTHY, K.UNHEALTHY, K.WATCHDOG})
# Effects on the slot's run (a `Second` wraps them for the other one).
_RUN_EFFECTS = frozenset({Effect.SPAWN, Effect.CANCEL_SPAWN, Effect.TERMINATE, Effect.KILL, Effect.WATCH,
                          Effect.QUIET, Effect.END_RUN})
Answer = asyncio.Future  # of bool: whether a command acted (resolved when the job's queue handled it)


class JobView(Protocol):
    """What an instance reads of its job, and the queue it posts to (a `Job` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def spec(self) -> JobSpec: ...
    @property
    def policy(self) -> Policy: ...
    @property
    def settings(self) -> tuple:
        """`spec.spawn_settings()`, made once per version of the file."""

    def account(self) -> Account | None: ...

    def environment(self, index: int) -> dict[str, str]: ...

    def sockets_for(self, index: int) -> tuple[tuple[int, str], ...]: ...

    def waiting(self) -> str | None:
        """What a start still waits for ("waiting for db (healthy)"), or None."""

    def post(self, inst: Instance, event: Event, answer: Answer | None = None) -> None: ...


class Run:
    """One spawn of the slot: its process, its queued spawn, its health watch, its log files. It
    is the `RunObserver` of its watch: what it reports is tagged with its own spawn id."""

    __slots__ = ("instance", "child", "ticket", "started_at", "logs", "health", "settings")

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.child: Child | None = None
        self.ticket: SpawnTicket | None = None
        self.started_at: float | None = None  # monotonic time of its spawn
        self.logs: tuple[LogFile, ...] = ()  # the files of its output
        self.settings: tuple | None = None  # the spawn settings it was started with (JobSpec.spawn_settings)
        services = instance.services
        self.health = InstanceHealth(self, services.notify_directory, self._check_spawner, services.checks)

    def _check_spawner(self, spec: JobSpec) -> SpawnCheck:
        """A `cmd` check of this run is told its pid (TASKMASTER_CHECKED_PID): during a rolling
        restart two runs of the instance live, and a check may need to know which it is asked about."""
        return self.instance._check_spawner(spec, self.child.pid if self.child is not None else None)

    def cancel_spawn(self) -> None:
        if self.ticket is not None:
            self.ticket.cancel()
            self.ticket = None

    def _event(self, kind: Kind, why: str) -> None:
        if self.child is not None:
            self.instance._post(Event(kind, why, spawn=self.child.spawn_id))

    # RunObserver: what InstanceHealth saw of this run
    def run_ready(self, how: str) -> None:
        self._event(K.READY, how)

    def run_not_ready(self, why: str) -> None:
        self._event(K.NOT_READY, why)

    def run_watchdog(self, why: str) -> None:
        self._event(K.WATCHDOG, why)

    def run_health(self, old: Health, new: Health, detail: str) -> None:
        """Every change of a run's health verdict: logged and published, then the table decides."""
        inst, spawn = self.instance, self.child.spawn_id if self.child is not None else None
        log.log(logging.WARNING if new is Health.UNHEALTHY else logging.INFO, "%s: %s -> %s (%s)%s",
                inst.label, old.value, new.value, detail, f"; spawn {spawn}" if spawn is not None else "")
        inst.services.events.publish(Published("health", inst.job.name, inst.index, old.value, new.value, detail,
                                               time.time(), spawn))
        inst.services.standing_changed(inst.job.name)
        if new is Health.HEALTHY:
            self._event(K.HEALTHY, detail)
        elif new is Health.UNHEALTHY:
            self._event(K.UNHEALTHY, detail)


class Instance:
    def __init__(self, job: JobView, services: Services, index: int):
        self.job = job
        self.services = services
        self.index = index
        self.machine = Machine()
        self.since = round(time.time(), 6)
        self.retired = False  # numprocs shrank below it: it leaves the job once stopped
        self.discarded = False  # its job is gone: it never spawns again
        self.run = Run(self)  # the slot's run: what the table's effects are about
        self._second: Run | None = None  # a rolling restart's new run, or the old one while it drains
        self._timer: asyncio.TimerHandle | None = None  # the retry timer (backoff, throttled restart)
        self._waiters: list[asyncio.Future[None]] = []
        self._deferred: list[tuple[Event, Answer | None]] = []  # commands behind a restart

    @property
    def label(self) -> str:
        return f"{self.job.name}[{self.index}]"

    @property
    def second(self) -> Run:
        """The slot's second run (made when a rolling restart first needs it)."""
        if self._second is None:
            self._second = Run(self)
        return self._second

    # the slot's run, as the rest of the daemon reads it
    @property
    def child(self) -> Child | None:
        return self.run.child

    @property
    def health(self) -> InstanceHealth:
        return self.run.health

    @property
    def logs(self) -> tuple[LogFile, ...]:
        return self.run.logs

    @property
    def started_at(self) -> float | None:
        return self.run.started_at

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
        m = self.machine
        if self.discarded or (event.kind in _RUN_EVENTS and event.spawn != m.spawn
                              and (m.second is None or event.spawn != m.second)):
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

    def _perform(self, action: Action, event: Event, answer: Answer | None) -> None:
        if isinstance(action, Enter):
            self._entered(action)
        elif isinstance(action, Arm):
            self._timer = asyncio.get_running_loop().call_later(action.delay, self._post, Event(K.TIMER, action.why))
        elif isinstance(action, Second):
            self._on_run(self.second, action.effect)
        elif isinstance(action, Note):
            self._noted(action)
        elif action in _RUN_EFFECTS:
            self._on_run(self.run, action)
        elif action is Effect.SWAP:
            self.run, self._second = self.second, self.run
        elif action is Effect.DISARM:
            self._cancel_timer()
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

    def _on_run(self, run: Run, effect: Effect) -> None:
        """An effect on one of the slot's runs."""
        if effect is Effect.SPAWN:
            run.ticket = self.services.processes.queue(lambda: self._fork(run))
        elif effect is Effect.CANCEL_SPAWN:
            run.cancel_spawn()
        elif effect is Effect.TERMINATE:
            spec = self.job.spec  # the current file's stop settings, even for an older spawn
            if run.child is not None:
                run.child.terminate(spec.stopsignal, spec.stoptime)
        elif effect is Effect.KILL:
            if run.child is not None:
                run.child.kill()
        elif effect is Effect.WATCH:
            run.health.began(self.job.spec)
        elif effect is Effect.QUIET:
            run.health.quiet()
        elif effect is Effect.END_RUN:
            run.health.ended()

    def _noted(self, note: Note) -> None:
        """A step of a rolling restart: logged and published."""
        spawn = self.machine.spawn
        log.log(logging.WARNING if note.step == "halted" else logging.INFO, "%s: rollout: %s%s", self.label, note.text,
                f"; spawn {spawn}" if spawn is not None else "")
        self.services.events.publish(Published("rollout", self.job.name, self.index, "", note.step, note.text,
                                               time.time(), spawn))

    def _entered(self, enter: Enter) -> None:
        self.since = round(time.time(), 6)
        spawn = enter.spawn
        log.log(logging.WARNING if enter.new is S.FATAL else logging.INFO, "%s: %s -> %s (%s)%s", self.label,
                enter.old.value, enter.new.value, enter.reason, f"; spawn {spawn}" if spawn is not None else "")
        self.services.events.publish(Published("state", self.job.name, self.index, enter.old.value,
                                               enter.new.value, enter.reason, self.since, spawn))
        self.services.standing_changed(self.job.name)

    # --- what the outside world tells it --------------------------------------------------------

    def _fork(self, run: Run) -> None:
        """The process table's turn for this spawn: hand it over (the spawn thread makes it while
        the loop runs on, and `_forked` hears how it went), or say why not. The run's ticket stays
        until then: a stop meanwhile cancels it, and the table kills what the thread made."""
        m = self.machine
        second = run is self._second
        if self.discarded or (m.roll is not Roll.QUEUED if second else
                              m.state is not S.STARTING or m.has_process):
            run.ticket = None
            return
        spec = self.job.spec
        services = self.services
        loop = asyncio.get_running_loop()
        child_fds: list[int] = []
        logs: list[LogFile] = []
        ticket = run.ticket
        assert ticket is not None
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
                   **run.health.environment(spec, account.uid if account is not None else None)}
            launch = launch_for(spec, env, account, unit=f"{spec.name}.{self.index}",
                                sockets=self.job.sockets_for(self.index))
            services.processes.spawn_soon(launch, child_fds[0], child_fds[-1], ticket,
                                          lambda result: self._forked(run, ticket, result, tuple(logs), second))
        except Exception as exc:  # whatever the reason, the instance says it and never hangs in STARTING
            run.ticket = None
            self._post(_spawn_failure(exc, second))
        finally:
            for fd in child_fds:
                if fd >= 0:
                    os.close(fd)

    def _forked(self, run: Run, ticket: SpawnTicket, result: Child | BaseException, logs: tuple[LogFile, ...],
                second: bool) -> None:
        """How the spawn handed over by `_fork` went (never called once its ticket was cancelled)."""
        if run.ticket is ticket:
            run.ticket = None
        if isinstance(result, BaseException):
            self._post(_spawn_failure(result, second))
            return
        child = result
        run.child, run.logs, run.started_at = child, logs, time.monotonic()
        run.settings = self.job.settings
        child.exited.add_done_callback(lambda exited: self._exited(run, exited))
        self._post(Event(K.SPAWNED, child.holder, pid=child.pid, spawn=child.spawn_id, second=second))

    def _exited(self, run: Run, exited: asyncio.Future[int]) -> None:
        child = run.child
        if child is None or child.exited is not exited:
            return
        run.child = None
        lived = time.monotonic() - (run.started_at or 0.0)
        # why: "out of memory: killed by the kernel, …" when the kernel says so, else the code says it
        self._post(Event(K.EXIT, child.exit_reason or "", code=exited.result(), lived=lived, spawn=child.spawn_id))

    def _check_spawner(self, spec: JobSpec, pid: int | None) -> SpawnCheck:
        env = self.job.environment(self.index)
        if pid is not None:
            env["TASKMASTER_CHECKED_PID"] = str(pid)
        return job_check_spawner(self.services.processes, spec, env, self.job.account())

    # --- the end --------------------------------------------------------------------------------

    def discard(self) -> None:
        """Its job is forgotten: cancel whatever is pending; it never spawns again."""
        self.discarded = True
        self._cancel_timer()
        for run in (self.run, self._second):
            if run is not None:
                run.cancel_spawn()
                run.health.ended()
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
        """Stopped, and no run of a rolling restart still being stopped beside it."""
        return self.state is not S.STOPPING and self.machine.roll is not Roll.DRAINING

    def busy(self) -> bool:
        return self.state in _BUSY or self.machine.roll is not Roll.NONE

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
        m, run = self.machine, self.run  # read once: `status` of every job is a hot path
        started_at, child = run.started_at, run.child
        entry = {
            "index": self.index,
            "state": m.state,  # a str enum: serializes as its name, compares equal to it
            "pid": child.pid if child is not None else None,
            "spawn": m.spawn,  # the id of the current (or last) spawn: its events and log lines carry it
            "since": self.since,
            "uptime": now - started_at if started_at is not None and m.state in _UP else None,  # not rounded
            "restarts": m.restarts,
            "exitcode": m.exitcode,
            "signal": m.signal,
            "description": m.description,
            # meant to be up now (a finished run with an expected exit is not): status exits 3 otherwise
            "wanted": m.wanted and not (m.state is S.EXITED and m.last_exit_expected(self.job.policy)),
        }
        run.health.report(entry)
        if m.roll is not Roll.NONE:  # a rolling restart's new run beside it, or the old one still stopping
            entry["second"] = {"phase": m.roll.value, "pid": m.second_pid, "spawn": m.second}
        if run.logs:
            dropped = sum(file.dropped for file in run.logs)
            if dropped:
                entry["dropped"] = dropped
        return entry


def _spawn_failure(exc: BaseException, second: bool) -> Event:
    """Why a spawn was not made, as the event the table reads."""
    if isinstance(exc, UnsafePath):
        return Event(K.SPAWN_FAILED, f"unsafe log file: {exc.strerror}", final=True, second=second)
    if isinstance(exc, (SpawnRefused, ContainmentError)):  # the same next time: no retry
        return Event(K.SPAWN_FAILED, str(exc), final=True, second=second)
    return Event(K.SPAWN_FAILED, spawn_error_text(exc), second=second)


def _answer(answer: Answer | None, acted: bool) -> None:
    if answer is not None and not answer.done():
        answer.set_result(acted)


async def wait_each(instances: Iterable[Instance], done: Callable[[Instance], bool]) -> None:
    """Until each of `instances` has met `done` (or left): one wait after the other, which ends
    when the slowest does, with no task per instance (10 000 of them cost a shutdown 0.5 s)."""
    for inst in instances:
        await inst.wait_until(done)
