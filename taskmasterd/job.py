"""A loaded job: its current spec, its instances, and how a new version of its file is applied."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .instance import Instance
from .jobfile import JobSpec
from .spawner import child_environment
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
        self._resize(spec.numprocs)

    @property
    def name(self) -> str:
        return self.spec.name

    def environment(self, index: int) -> dict[str, str]:
        if self._env is None:
            self._env = child_environment(self.spec, self.supervisor.base_environment)
        return {**self._env, "TASKMASTER_INSTANCE": str(index)}

    # --- commands over every instance -----------------------------------------------------------

    def start_all(self, reason: str = "start command") -> bool:
        return any([inst.start(reason) for inst in self.instances])

    def stop_all(self, kill: bool = False) -> bool:
        return any([inst.stop(kill) for inst in self.instances])

    async def wait_started(self, instances: list[Instance] | None = None) -> str | None:
        """Wait for every instance (or those given) to settle after a start; the first failure's
        reason, or None."""
        instances = self.instances if instances is None else instances
        await asyncio.gather(*(inst.wait_until(Instance.start_settled) for inst in instances))
        for inst in instances:
            if inst.state in (State.BACKOFF, State.FATAL):
                return f"{inst.label}: {inst.description}"
            if inst.state is State.STOPPED:
                return f"{inst.label}: stopped before it was running"
        return None

    async def wait_stopped(self, instances: list[Instance] | None = None) -> None:
        await asyncio.gather(*(inst.wait_until(Instance.stop_settled) for inst in instances or self.instances))

    # --- applying a new version of the file -----------------------------------------------------

    def apply(self, new: JobSpec) -> list[Instance]:
        """Switch to `new`: settings that do not affect spawning take effect at once; the
        instances that must restart for spawn settings are returned (already told to stop and
        to start again); numprocs only adds or removes instances."""
        old, self.spec = self.spec, new
        self._env = None
        for inst in self.instances:
            for path in self._log_paths(new, inst.index):
                if path is not None:
                    self.supervisor.log_files.update_limits(path, new.logmaxbytes, new.logbackups)
        spawn_changed = old.spawn_settings() != new.spawn_settings()
        restarting = []
        for inst in self.instances[: new.numprocs]:
            # numprocs crossing 1 can move an instance's log file: that needs a restart too
            moved = self._log_paths(old, inst.index) != self._log_paths(new, inst.index)
            if (spawn_changed or moved) and inst.state in (State.STARTING, State.RUNNING, State.BACKOFF):
                inst.stop()
                inst.start("restart for new settings")
                restarting.append(inst)
        if new.numprocs != old.numprocs:
            wanted = any(inst.wanted for inst in self.instances) or new.autostart
            added = self._resize(new.numprocs)
            if wanted:
                for inst in added:
                    inst.start("numprocs increased")
        return restarting

    def _log_paths(self, spec: JobSpec, index: int) -> tuple[str | None, str | None]:
        log_dir = self.supervisor.log_dir
        return spec.log_path("stdout", index, log_dir), spec.log_path("stderr", index, log_dir)

    def _resize(self, count: int) -> list[Instance]:
        """Grow or shrink to `count` instances; removed ones are stopped and then forgotten."""
        added = [Instance(self, i) for i in range(len(self.instances), count)]
        removed = self.instances[count:]
        self.instances = self.instances[:count] + added
        for inst in removed:
            inst.stop()
            asyncio.get_running_loop().create_task(self._forget_when_stopped(inst))
        return added

    @staticmethod
    async def _forget_when_stopped(inst: Instance) -> None:
        await inst.wait_until(Instance.stop_settled)
        inst.discard()

    # --- reporting ------------------------------------------------------------------------------

    def state(self) -> str:
        if len(self.instances) == 1:  # the common case, on the hot path of `status`
            return self.instances[0].state
        return summarize([inst.state for inst in self.instances])

    def status(self, now: float) -> dict:
        return {
            "name": self.name,
            "state": self.state(),
            "instances": [inst.status(now) for inst in self.instances],
            "error": self.error,
        }
