"""`"autostart": "socket"`: the job starts at the first connection to one of its held sockets
(systemd's on-demand start), and the program then accepts that very connection.

While the job is down — every instance STOPPED or EXITED — the loop watches the held sockets
for a connection waiting to be accepted (epoll; the daemon never accepts it). The first one
starts every instance (a START command each, through the job's queue) and the watch ends; it
comes back once the job is down again. An instance that gave up (FATAL) keeps the watch off
until a command starts it: a program that cannot start must not be started again and again by
the connection still waiting. A disabled job is not watched, nor one of a daemon shutting down.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, Sequence

from .instance import Instance
from .services import Services
from .states import Kind, State
from ..processes.heldsockets import HeldSockets

log = logging.getLogger("taskmasterd.job")
_DOWN = frozenset({State.STOPPED, State.EXITED})


class Activated(Protocol):
    """What the watch reads of its job, and how it starts it (a `Job` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def active(self) -> Sequence[Instance]: ...

    services: Services
    sockets: HeldSockets

    def on_connect(self) -> bool: ...

    def command(self, kind: Kind, why: str) -> Any: ...


class SocketActivation:
    __slots__ = ("_job", "_watched")

    def __init__(self, job: Activated) -> None:
        self._job = job
        self._watched: list[int] = []  # the descriptors the loop watches for us

    @property
    def armed(self) -> bool:
        return bool(self._watched)

    def update(self) -> None:
        """Watch or stop watching, as the job's settings and states now say."""
        job = self._job
        wanted = (job.on_connect() and not job.services.processes.closing
                  and all(inst.state in _DOWN for inst in job.active))
        if wanted and not self._watched:
            loop = asyncio.get_running_loop()
            for held in job.sockets.all():
                loop.add_reader(held.fd, self._connected, held.spec.listen)
                self._watched.append(held.fd)
        elif not wanted and self._watched:
            self.close()

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in self._watched:
            loop.remove_reader(fd)
        self._watched = []

    def _connected(self, listen: str) -> None:
        self.close()  # before the start: its first transition looks at the watch again
        log.info("%s: a connection to %s starts it", self._job.name, listen)
        self._job.command(Kind.START, f"socket activation: a connection to {listen}")
