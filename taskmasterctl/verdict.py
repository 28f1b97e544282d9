"""Whether jobs are in their wanted state, from a status document (the exit status 3 of `status`,
like `systemctl is-active`). Pure."""
from __future__ import annotations

BROKEN = frozenset({"FATAL", "BACKOFF", "WAITING"})  # WAITING: held back by its dependencies
DOWN = frozenset({"STOPPED", "EXITED"})


def not_as_wanted(jobs: list[dict]) -> list[str]:
    """`job[index]: STATE` for each instance (or `job: INVALID`) not in its wanted state: FATAL,
    BACKOFF, WAITING for a dependency, running but unhealthy, an invalid file (that never loaded,
    or that a loaded job's file has become), a rollout halted (the old version still runs), or
    down (STOPPED, EXITED) while the daemon means it to run (`wanted`, which a finished run with an
    expected exit code is not)."""
    astray = []
    for job in jobs:
        if job.get("error"):
            astray.append(f"{job['name']}: INVALID")
        if (job.get("rollout") or "").startswith("rollout halted"):
            astray.append(f"{job['name']}: {job['rollout']}")
        for inst in job.get("instances") or ():
            state = inst.get("state")
            if state in BROKEN or (state in DOWN and inst.get("wanted")):
                astray.append(f"{job['name']}[{inst.get('index')}]: {state}")
            elif inst.get("health") == "unhealthy":
                astray.append(f"{job['name']}[{inst.get('index')}]: {state}, unhealthy")
    return astray
