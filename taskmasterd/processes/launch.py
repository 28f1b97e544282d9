"""What a process is started with: the `Launch` (argv, environment, directory, account, how to
stop it) and the `Account` it runs as. Built by spawner.py from a job's spec, started by table.py;
the variables every spawn carries, set by the table after everything else (orphans.py finds a
dead daemon's escapes by them).
"""
from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Mapping

from ..jobfiles.resources import NO_RESOURCES, Resources

# Set by the process table in every spawn's environment, after everything else (a job's own `env`
# cannot forge them): the daemon run that started it (orphans.py), and the spawn itself, unique in
# that run. Together they mark a spawn's descendants after they escaped its process group.
RUN_VARIABLE = "TASKMASTER_RUN"
SPAWN_VARIABLE = "TASKMASTER_SPAWN"


@dataclass(frozen=True, slots=True)
class Account:
    """Whose ids and login variables a process runs with (a job's `user`, resolved)."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    env: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything needed to start one process and to stop it."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None = None
    umask: int | None = None
    account: Account | None = None  # whose ids it runs with (None: the daemon's)
    stopsignal: int = int(signal.SIGTERM)
    stoptime: float = 10.0
    unit: str = "spawn"  # what its cgroup is named after ("web.0")
    resources: Resources = NO_RESOURCES
    # held sockets (the daemon's descriptors, with their names): given as 3, 4, … (listenfds.py)
    sockets: tuple[tuple[int, str], ...] = ()
