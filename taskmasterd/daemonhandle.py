"""What the verbs may know and ask of the daemon process itself: who it is (the `daemon` object of
`status`), and `shutdown`. daemon.py makes one and hangs it on the supervisor."""
from __future__ import annotations

import asyncio
import os
import time
from typing import Awaitable, Callable

from . import __version__
from .reply import SUCCESS, Reply


class DaemonHandle:
    def __init__(self, config_file: str | None, dirs: dict[str, str],
                 stop_jobs: Callable[[], Awaitable[None]], exit: Callable[[], None],
                 containment: dict | None = None) -> None:
        self._document = {"version": __version__, "pid": os.getpid(), "started": round(time.time(), 3),
                          "config": config_file, **dirs, **(containment or {})}
        self._stop_jobs = stop_jobs
        self._exit = exit
        self.sections: dict[str, Callable[[], dict]] = {}  # name -> its document (a bridge's: "blueprints")

    def document(self) -> dict:
        """{version, pid, started (Unix time), config (the --config file or null), jobs_dir, log_dir, state_dir,
        containment ("cgroup2" or "process-group (no writable cgroup2: <reason>)"), cgroup (the
        subtree of the cells, or null), controllers ({memory, cpu, pids}: where, or why not)}, and
        each section's document under its name (a bridge's: "blueprints")"""
        if not self.sections:
            return self._document
        return {**self._document, **{name: section() for name, section in self.sections.items()}}

    async def shutdown(self) -> Reply:
        """Stop every job as SIGTERM does, then exit once this reply is on its way: the exit is
        scheduled after the request's task has written the reply (call_soon runs after it)."""
        await self._stop_jobs()
        asyncio.get_running_loop().call_soon(self._exit)
        return SUCCESS
