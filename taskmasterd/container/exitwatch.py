"""When a container's daemon should exit, and with which code: an observer of the event bus.

- An essential job (`essential: true`) whose instances have all ended for good — EXITED with
  nothing to restart them, or FATAL — ends the daemon, at once when one of them is FATAL: every
  job is stopped and the daemon exits with that job's exit code (128+N for a signal N; 1 for an
  instance that could never be spawned). With several instances, the first failed one's code,
  else the first one's: Docker Compose's `--exit-code-from`, ECS's essential containers.
- When no job can run anymore (every instance that ran has ended for good, nothing is starting,
  running or stopping, and no job is scheduled), the daemon exits 0, or 1 if any job failed
  (an instance FATAL, or exited with a code outside `exitcodes`).

The decision is pure (`decide`, on status entries); the watch only calls it after an instance
exited or gave up, once per loop iteration, and reads the jobs through `Supervisor.status`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from ..lifecycle.supervisor import JobListener

if TYPE_CHECKING:
    from ..lifecycle.supervisor import Supervisor

log = logging.getLogger("taskmasterd.container")
ENDED = frozenset({"EXITED", "FATAL"})  # seen after the exit was handled: nothing will restart them
QUIET = frozenset({"STOPPED", "EXITED", "FATAL"})  # no process, none on its way


@dataclass(frozen=True, slots=True)
class JobView:
    """What the decision needs of one job."""

    name: str
    essential: bool
    scheduled: bool
    exitcodes: frozenset[int]
    instances: list[dict]  # status entries: state, exitcode, signal


def exit_code(inst: dict) -> int:
    if inst["signal"] is not None:
        return 128 + inst["signal"]
    return inst["exitcode"] if inst["exitcode"] is not None else 1


def _failed(inst: dict, exitcodes: frozenset[int]) -> bool:
    return inst["state"] == "FATAL" or (inst["state"] == "EXITED" and (
        inst["signal"] is not None or inst["exitcode"] not in exitcodes))


def decide(jobs: Iterable[JobView]) -> tuple[int, str] | None:
    """(exit code, why) when the daemon should exit now, else None."""
    jobs = list(jobs)
    for job in jobs:
        if not job.essential or not job.instances:
            continue
        states = [inst["state"] for inst in job.instances]
        if "FATAL" in states or all(state in ENDED for state in states):
            failed = [inst for inst in job.instances if _failed(inst, job.exitcodes)]
            code = exit_code(failed[0] if failed else job.instances[0])
            return code, f"essential job {job.name} ended ({job.instances[0]['description']})"
    if any(job.scheduled for job in jobs):
        return None
    instances = [(inst, job) for job in jobs for inst in job.instances]
    if any(inst["state"] not in QUIET for inst, _ in instances) or not any(inst["state"] in ENDED for inst, _ in instances):
        return None
    failed = sorted({job.name for inst, job in instances if _failed(inst, job.exitcodes)})
    if failed:
        return 1, f"no job can run anymore, and {', '.join(failed)} failed"
    return 0, "no job can run anymore"


class ExitWatch(JobListener):
    def __init__(self, supervisor: Supervisor, exit_with: Callable[[int, str], None]) -> None:
        self.supervisor = supervisor
        self._exit_with = exit_with
        self.decided: tuple[int, str] | None = None
        supervisor.listeners.append(self)

    def jobs_changed(self, names: set[str]) -> None:
        """Once per loop iteration with changes: looked at when an instance of one of them has ended."""
        if self.decided is not None or self.supervisor.closing:
            return
        changed = [job for name in names if (job := self.supervisor.jobs.get(name)) is not None]
        if any(inst.state.value in ENDED for job in changed for inst in job.instances):
            self._look()

    def _look(self) -> None:
        supervisor = self.supervisor
        views = []
        for entry in supervisor.status().value["jobs"]:
            job = supervisor.jobs.get(entry["name"])
            if job is not None:
                views.append(JobView(job.name, job.spec.essential, job.spec.schedule is not None, job.spec.exitcodes,
                                     entry["instances"][: job.spec.numprocs]))
        self.decided = decide(views)
        if self.decided is not None:
            code, why = self.decided
            log.warning("%s: stopping every job, then exiting with code %d", why, code)
            self._exit_with(code, why)
