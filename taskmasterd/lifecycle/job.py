"""A loaded job: its current spec, its instances, its queue of events, and how a new version of
its file is applied.

Every event of every instance of the job — a command, a spawn made, an exit, a timer, what a run's
watcher saw — goes through the job's one queue and is handled to the end (the table's step and
all its effects) before the next: an effect that causes another event (a restart's spawn, a
deferred command replayed) queues it behind. Nothing is ever handled half-way or out of order.

`instances` holds one Instance per index below numprocs, followed by the retired ones that are
still stopping after numprocs shrank: an index is never served by two processes, and a shrink
followed by a grow brings the same Instance back rather than a twin.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Callable, NamedTuple

from .activation import SocketActivation
from .dependencies import conditions_met, waiting_text
from .instance import Answer, Instance, wait_each
from .rollout import Rollout
from .services import Services
from .states import STATE_NAMES, Event, Kind, Policy, State, summarize
from ..jobfiles.jobfile import JobSpec
from ..jobfiles.sockets_spec import SOCKET_ACTIVATION
from ..processes.heldsockets import HeldSockets, Owners
from ..processes.launch import Account
from ..processes.spawner import child_environment

log = logging.getLogger("taskmasterd.job")
EVENTS_PER_TURN = 64  # events a job handles per loop iteration (a start of 64 sleepers: ~1.5 ms)
_LIVE = (State.STARTING, State.RUNNING, State.BACKOFF)  # what new spawn settings restart


class Applied(NamedTuple):
    """What a new version of the file asks of the instances: those started (added) with their
    answers, those retiring (numprocs shrank), those that need new processes (the caller restarts
    them the job's way: all at once, or rolling)."""

    starting: list[tuple[Instance, Answer]]
    retiring: list[Instance]
    renew: list[Instance]


def policy_of(spec: JobSpec) -> Policy:
    return Policy(autorestart=spec.autorestart, exitcodes=spec.exitcodes, startretries=spec.startretries,
                  ready=spec.ready, on_unhealthy=spec.on_unhealthy, stopsignal=spec.stopsignal)


class Job:
    def __init__(self, spec: JobSpec, services: Services, account: Account | None = None,
                 sockets: HeldSockets | None = None):
        """`account`: the spec's `user` resolved (off the loop, by whoever loaded the file);
        `sockets`: the ones it holds, bound by whoever loaded it (processes/heldsockets.py)."""
        self.services = services
        self.spec = spec
        self.settings = spec.spawn_settings()  # what a run is started with (one tuple, shared by the runs)
        self.sockets = sockets if sockets is not None else HeldSockets()
        self.activation = SocketActivation(self)  # `autostart: "socket"`
        self.rollout: Rollout | None = None  # the rolling restart under way, or the last one that halted
        self.policy = policy_of(spec)
        self.error: str | None = None  # why the file on disk is not the version running
        self.pending: str | None = None  # "on-reload": "file changed" or "file removed", until a reload
        self.instances: list[Instance] = []
        self._account = account
        self._env: dict[str, str] | None = None
        self._queue: deque[tuple[Instance, Event, Answer | None]] = deque()
        self._handling = False
        self._share = EVENTS_PER_TURN  # events this loop iteration may still handle
        self.announced_serving: str | None = ""  # not_serving() as listeners last heard it ("": never)
        self._resize(spec.numprocs)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def active(self) -> list[Instance]:
        """The instances numprocs asks for (without the retired ones still stopping)."""
        return self.instances[: self.spec.numprocs]

    def account(self) -> Account | None:
        """Whom the spec's `user` runs as (looked up when the file was loaded); None without one."""
        return self._account

    def sockets_for(self, index: int) -> tuple[tuple[int, str], ...]:
        """The held sockets instance `index` is given (descriptor, LISTEN_FDNAMES name), in order."""
        return tuple((held.fd, held.spec.name or self.name) for held in self.sockets.for_instance(index))

    def on_connect(self) -> bool:
        """Started by the first connection to its sockets (and not disabled)."""
        return self.spec.autostart == SOCKET_ACTIVATION and self.services.may_autostart(self.name)

    def watch_sockets(self) -> None:
        """`autostart: "socket"`: watch the sockets while the job is down, not while it runs."""
        if self.spec.autostart == SOCKET_ACTIVATION or self.activation.armed:
            self.activation.update()

    def environment(self, index: int) -> dict[str, str]:
        if self._env is None:
            self._env = child_environment(self.spec, self.services.base_environment, self._account,
                                          {"TASKMASTER_JOB": self.name})
        return {**self._env, "TASKMASTER_INSTANCE": str(index)}

    # --- the queue ------------------------------------------------------------------------------

    def post(self, inst: Instance, event: Event, answer: Answer | None = None) -> None:
        """Queue an event for one of the job's instances; handled now unless an event is being
        handled or this loop iteration's share is spent (then after those, in order)."""
        self._queue.append((inst, event, answer))
        if not self._handling:
            self._handle_queue()

    def _handle_queue(self) -> None:
        """At most EVENTS_PER_TURN events per loop iteration, the rest in the next ones: a verb
        on a thousand instances does not hold the loop for tens of milliseconds."""
        self._handling = True
        try:
            while self._queue and self._share:
                if self._share == EVENTS_PER_TURN:  # the first of this iteration: a new share next time
                    asyncio.get_running_loop().call_soon(self._next_turn)
                self._share -= 1
                inst, event, answer = self._queue.popleft()
                try:
                    inst.handle(event, answer)
                except Exception:  # a bug: say so, and let the job's other events through
                    log.exception("%s: handling %s failed", inst.label, event.kind.value)
                    if answer is not None and not answer.done():
                        answer.set_result(False)
                if inst.retired and not inst.busy():
                    self._drop_retired()
            self.watch_sockets()
        finally:
            # share spent: what is posted meanwhile waits behind the queue for _next_turn
            self._handling = bool(self._queue)

    def _next_turn(self) -> None:
        self._share = EVENTS_PER_TURN
        if self._queue:
            self._handle_queue()

    def command(self, kind: Kind, why: str, instances: list[Instance] | None = None) -> list[tuple[Instance, Answer]]:
        """`kind` to each of `instances` (default: those numprocs asks for); each with its answer."""
        return [(inst, inst.command(kind, why)) for inst in (self.active if instances is None else instances)]

    def stop_all(self, kind: Kind = Kind.STOP) -> list[tuple[Instance, Answer]]:
        return self.command(kind, "kill command" if kind is Kind.KILL else "stop command", list(self.instances))

    async def wait_started(self, instances: list[Instance], stalled: Callable[[], str | None]) -> str | None:
        """Wait for every instance to settle after a start; the first failure's reason, or None.
        A start waiting for dependencies that are not coming is a failure too (`stalled`)."""
        def settled(inst: Instance) -> bool:
            return inst.start_settled() or (inst.state is State.WAITING and stalled() is not None)

        await wait_each(instances, settled)
        for inst in instances:
            if inst.discarded:
                return f"{inst.label}: its job was removed"
            if inst.state is State.WAITING:
                return stalled()
            if inst.state in (State.BACKOFF, State.FATAL):
                return f"{inst.label}: {inst.description}"
            if inst.state is State.STOPPED:
                return f"{inst.label}: stopped before it was running"
        return None

    async def wait_stopped(self, instances: list[Instance] | None = None) -> None:
        instances = list(self.instances) if instances is None else instances
        await wait_each(instances, Instance.stop_settled)

    async def wait_gone(self, retiring: list[Instance]) -> None:
        """Until these retired instances have left the job (or came back by a new resize)."""
        await wait_each(retiring, lambda i: not i.retired or i not in self.instances)

    def discard(self) -> None:
        self.end_rollout("the job was removed")
        self.activation.close()
        for inst in self.instances:
            inst.discard()

    # --- dependencies and serving ---------------------------------------------------------------

    def conditions_met(self) -> frozenset[str]:
        """Which of running / healthy / completed this job meets, for the jobs depending on it."""
        return conditions_met([inst.standing() for inst in self.active])

    def waiting(self) -> str | None:
        """What a start of this job still waits for ("waiting for db (healthy)"), or None."""
        if not self.spec.depends_on:
            return None
        return waiting_text(self.spec.depends_on, self.services.conditions_of)

    def coming(self) -> bool:
        """Up or on its way, by itself: a dependant waiting for it will not wait forever."""
        return any(inst.coming() for inst in self.active)

    def recheck_waiting(self) -> bool:
        """Its dependencies changed: the WAITING instances go if they are met now (else show what
        they still wait for); whether any still waits."""
        waiting = [inst for inst in self.active if inst.state is State.WAITING]
        for inst in waiting:
            self.post(inst, Event(Kind.DEPS))
        return any(inst.state is State.WAITING for inst in waiting)

    def not_serving(self) -> str | None:
        """Why the job cannot take work now (its ColonyOS executor waits), or None when it can:
        an instance is RUNNING and passes its health check (without a check, RUNNING is enough).
        A job none of whose instances is meant to run (autostart false, or stopped) takes work:
        its work is then only the one-off runs of its command."""
        active = self.active
        if not any(inst.wanted for inst in active):
            return None
        if any(inst.state is State.RUNNING and inst.health.healthy for inst in active):
            return None
        first = active[0]
        return f"no instance is {'healthy' if self.spec.healthcheck else 'RUNNING'} ({first.label}: {first.state_and_health()})"

    # --- applying a new version of the file -----------------------------------------------------

    def apply(self, new: JobSpec, account: Account | None, sockets: HeldSockets | None = None,
              owners: Owners | None = None) -> Applied:
        """Switch to `new`: settings that do not affect spawning take effect at once; numprocs adds
        or retires instances; the instances whose run needs new processes (edits.py: new spawn
        settings, a log file that moves, a cgroup limit the run's cell cannot take) are returned,
        for the caller to restart. `sockets`: what `self.sockets.prepare` made for `new` (the
        sockets it no longer lists are closed now)."""
        old, self.spec, self.policy = self.spec, new, policy_of(new)
        self._env, self._account = None, account
        if sockets is not None:
            self.activation.close()  # the descriptors it watches may close now; watched again below
            self.sockets.commit(sockets, owners)
            self.sockets = sockets
        for inst in self.instances:
            for path in self._log_paths(new, inst.index):
                if path is not None:
                    self.services.log_files.update_limits(path, new.logmaxbytes, new.logbackups)
        old_settings, settings = self.settings, new.spawn_settings()
        self.settings = settings
        spawn_changed = old_settings != settings
        renew: list[Instance] = []
        for inst in self.instances[: min(old.numprocs, new.numprocs)]:
            # what its run was started with (after a halted rollout, an older version than `old`);
            # a spawn not made yet takes the new settings when it is
            stale = inst.run.settings != settings if inst.child is not None else spawn_changed
            # numprocs crossing 1 can move an instance's log file: that needs a restart too
            moved = self._log_paths(old, inst.index) != self._log_paths(new, inst.index)
            # cgroup limits change live; one whose controller the run's cgroup lacks needs a restart
            limits_refused = inst.child is not None and not inst.child.apply_limits(new.resources)
            if (stale or moved or limits_refused) and inst.state in _LIVE:
                renew.append(inst)
            else:
                inst.health.update(old, new)  # readiness and health are never spawn settings
        starting: list[tuple[Instance, Answer]] = []
        if new.numprocs != old.numprocs:
            wanted = any(inst.wanted for inst in self.instances[: old.numprocs]) or new.starts_on_load
            wanted = wanted and new.schedule is None  # a scheduled job's instances start with its runs
            for inst in self._resize(new.numprocs):
                if wanted:
                    starting.append((inst, inst.command(Kind.START, "numprocs increased")))
        self.watch_sockets()
        return Applied(starting, self.instances[new.numprocs:], renew)

    def end_rollout(self, why: str) -> None:
        """A command decided otherwise (a stop, a plain restart, a newer rollout): the rollout
        under way starts no other instance; a halted one is no longer news."""
        if self.rollout is not None:
            self.rollout.interrupt(why)
            self.rollout = None

    def _log_paths(self, spec: JobSpec, index: int) -> tuple[str | None, str | None]:
        log_dir = self.services.log_dir
        return spec.log_path("stdout", index, log_dir), spec.log_path("stderr", index, log_dir)

    def _resize(self, count: int) -> list[Instance]:
        """Grow or shrink to `count` instances; returns the ones that (re)joined. Shrinking retires
        the tail: each stops and leaves once stopped. Growing brings back a retired instance of
        that index if it is still there, so its process and the new one never overlap."""
        joined = []
        for inst in self.instances[:count]:
            if inst.retired:
                inst.retired = False
                joined.append(inst)
        for index in range(len(self.instances), count):
            inst = Instance(self, self.services, index)
            self.instances.append(inst)
            joined.append(inst)
        for inst in self.instances[count:]:
            if not inst.retired:
                inst.retired = True
                self.post(inst, Event(Kind.STOP, "numprocs decreased"))
        self._drop_retired()
        return joined

    def _drop_retired(self) -> None:
        """Drop the tail of retired instances that have stopped."""
        while self.instances and self.instances[-1].retired and not self.instances[-1].busy():
            self.instances.pop().discard()

    # --- reporting ------------------------------------------------------------------------------

    def state(self) -> str:
        if len(self.instances) == 1:  # the common case, on the hot path of `status`
            return STATE_NAMES[self.instances[0].machine.state]
        return summarize([inst.state for inst in self.active])

    def status(self, now: float) -> dict:
        entry = {
            "name": self.spec.name,
            "state": self.state(),
            "instances": [inst.status(now) for inst in self.instances],
            "error": self.error,
        }
        if self.sockets.held:
            entry["sockets"] = self.sockets.describe()
        rollout = self.rollout.describe() if self.rollout is not None else None
        if rollout is not None:
            entry["rollout"] = rollout  # "rolling 2/4", "rollout halted: web:2 not ready (…)"
        if self.pending is not None:
            entry["pending"] = f"{self.pending}, not applied (reload applies it)"
        return entry

