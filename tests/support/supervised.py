"""An in-process Supervisor on real files and real processes, for tests that need its internals."""
from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from taskmasterd.lifecycle.instance import Instance
from taskmasterd.lifecycle.states import State
from taskmasterd.lifecycle.supervisor import Supervisor

from .daemon import write_job


def run(coro: Awaitable, timeout: float = 90.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def supervised(root: Path, jobs: dict[str, dict] | None = None, watch: bool = True,
                     environ: dict[str, str] | None = None) -> AsyncIterator[Supervisor]:
    (root / "jobs").mkdir(parents=True, exist_ok=True)
    for name, spec in (jobs or {}).items():
        write_job(root / "jobs", name, spec)
    sup = Supervisor(root / "jobs", root / "logs", root / "state", environ=environ)
    await sup.open(watch=watch)
    try:
        yield sup
    finally:
        await sup.shutdown()


async def eventually(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition"):
    """For outcomes only the outside world shows (a file's content, another process's state)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


async def reach(instance: Instance, *states: State, timeout: float = 30.0) -> State:
    return await asyncio.wait_for(instance.wait_until(lambda i: i.state in states), timeout)
