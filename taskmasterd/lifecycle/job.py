"""A loaded job: its current spec, its instances, and how a new version of its file is applied.

`instances` holds one Instance per index below numprocs, followed by the retired ones that are
still stopping after numprocs shrank: an index is never served by two processes, and a shrink
followed by a grow brings the same Instance back rather than a twin.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .dependencies import conditions_met, waiting_text
from .instance import Instance, wait_each
from ..jobfiles.jobfile import JobSpec
from ..processes.spawner import Account, child_environment, lookup_account
from .states import State, summarize

if TYPE_CHECKING:
    from .supervisor import Supervisor


class Job:
    def __init__(self, supervisor: Supervisor, spec: JobSpec):
        self.supervisor = supervisor
        self.spec = spec
        self.error: str | None = None  # why the file on disk is not the version running
        self.instances: list[Instance] = []
        self._env: dict[str, str] | None = None
        self._account: Account | None = None
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
        """The spec's `user`, looked up once per version of the job (a name service may be slow,
        and a spawn is a hot path), as its environment is; KeyError while there is no such user."""
        if self.spec.user is None:
            return None
        if self._account is None:
            self._account = lookup_account(self.spec.user)
        return self._account

    def environment(self, index: int) -> dict[str, str]:
        if self._env is None:
            self._env = child_environment(self.spec, self.supervisor.base_environment, self.account(),
                                          {"TASKMASTER_JOB": self.name})
        return {**self._env, "TASKMASTER_INSTANCE": str(index)}

    # --- commands over every instance -----------------------------------------------------------

    def start_all(self, reason: str = "start command") -> bool:
        return any([inst.start(reason) for inst in self.active])

    def stop_all(self, kill: bool = False) -> bool:
        return any([inst.stop(kill) for inst in self.instances])

    async def wait_started(self, instances: list[Instance] | None = None) -> str | None:
        """Wait for every instance to settle after a start; the first failure's reason, or None."""
        instances = self.active if instances is None else instances
        await wait_each(instances, Instance.start_settled)
        for inst in instances:
            if inst.discarded:
                return f"{inst.label}: its job was removed"
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
        for inst in self.instances:
            inst.discard()

    # --- dependencies and serving ---------------------------------------------------------------

    def standing_changed(self) -> None:
        """An instance changed state or health: what dependants and listeners see may differ."""
        self.supervisor.standing_changed(self.name)

    def conditions_met(self) -> frozenset[str]:
        """Which of running / healthy / completed this job meets, for the jobs depending on it."""
        return conditions_met([inst.standing() for inst in self.active])

    def unmet_dependencies(self) -> str | None:
        """What a start of this job still waits for ("waiting for db (healthy)"), or None."""
        if not self.spec.depends_on:
            return None
        return waiting_text(self.spec.depends_on, self.supervisor.conditions_of)

    def recheck_waiting(self) -> bool:
        """Let the WAITING instances go if every dependency is met now; whether any still waits."""
        waiting = [inst for inst in self.active if inst.state is State.WAITING]
        if not waiting:
            return False
        text = self.unmet_dependencies()
        for inst in waiting:
            inst.dependencies_changed(text)
        return text is not None

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

    def apply(self, new: JobSpec) -> tuple[list[Instance], list[Instance], bool]:
        """Switch to `new`: settings that do not affect spawning take effect at once; instances
        whose spawn settings changed are told to stop and start again; numprocs only adds or
        retires instances. Returns the instances starting (restarted or added), the ones retiring,
        and whether any running process had to restart."""
        old, self.spec = self.spec, new
        self._env = self._account = None
        for inst in self.instances:
            for path in self._log_paths(new, inst.index):
                if path is not None:
                    self.supervisor.log_files.update_limits(path, new.logmaxbytes, new.logbackups)
        spawn_changed = old.spawn_settings() != new.spawn_settings()
        restarting: list[Instance] = []
        for inst in self.instances[: min(old.numprocs, new.numprocs)]:
            # numprocs crossing 1 can move an instance's log file: that needs a restart too
            moved = self._log_paths(old, inst.index) != self._log_paths(new, inst.index)
            # cgroup limits change live; one whose controller the run's cgroup lacks needs a restart
            limits_refused = inst.child is not None and not inst.child.apply_limits(new.resources)
            if (spawn_changed or moved or limits_refused) and inst.state in (State.STARTING, State.RUNNING, State.BACKOFF):
                inst.stop()
                inst.start("restart for new settings")
                restarting.append(inst)
            else:
                inst.health.update(old, new)  # readiness and health are never spawn settings
        starting = list(restarting)
        if new.numprocs != old.numprocs:
            wanted = any(inst.wanted for inst in self.instances[: old.numprocs]) or new.autostart
            wanted = wanted and new.schedule is None  # a scheduled job's instances start with its runs
            for inst in self._resize(new.numprocs):
                if wanted and inst.start("numprocs increased"):
                    starting.append(inst)
        return starting, self.instances[new.numprocs:], bool(restarting)

    def _log_paths(self, spec: JobSpec, index: int) -> tuple[str | None, str | None]:
        log_dir = self.supervisor.log_dir
        return spec.log_path("stdout", index, log_dir), spec.log_path("stderr", index, log_dir)

    def _resize(self, count: int) -> list[Instance]:
        """Grow or shrink to `count` instances; returns the ones that (re)joined. Shrinking retires
        the tail: each stops and leaves once stopped. Growing brings back a retired instance of
        that index if it is still there, so its process and the new one never overlap."""
        joined = []
        for inst in self.instances[:count]:
            if inst.retired:
                inst.unretire()
                joined.append(inst)
        for index in range(len(self.instances), count):
            inst = Instance(self, index)
            self.instances.append(inst)
            joined.append(inst)
        for inst in self.instances[count:]:
            if not inst.retired:
                inst.retire()
        return joined

    def retired(self, inst: Instance) -> None:
        """A retired instance stopped: drop the tail of stopped retired instances."""
        while self.instances and self.instances[-1].retired and not self.instances[-1].busy():
            self.instances.pop().discard()

    # --- reporting ------------------------------------------------------------------------------

    def state(self) -> str:
        if len(self.instances) == 1:  # the common case, on the hot path of `status`
            return self.instances[0].state
        return summarize([inst.state for inst in self.active])

    def status(self, now: float) -> dict:
        return {
            "name": self.name,
            "state": self.state(),
            "instances": [inst.status(now) for inst in self.instances],
            "error": self.error,
        }
