"""Who owns a task: a `TaskOwner` for background work nobody waits for (a reload the watcher
asked for), an `asyncio.TaskGroup` for work a caller waits for (`all_settled`); shutdown awaits
both."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Coroutine, Iterable, TypeVar

T = TypeVar("T")


class TaskOwner:
    """The owner of a component's background tasks: each is kept until it ends, its failure is
    logged, and `close()` cancels those left and waits for them. Unlike a TaskGroup, a task that
    fails does not cancel its siblings: one failed reload must not drop every connection."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, T], what: str) -> asyncio.Task[T]:
        """Run `coro` as a task of this owner; `what` names it when it fails. Refused once closed
        (the coroutine is closed unstarted)."""
        if self.closed:
            coro.close()
            raise RuntimeError(f"{what}: its owner is closed")
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def ended(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                self._log.error("%s failed", what, exc_info=task.exception())

        task.add_done_callback(ended)
        return task

    async def close(self) -> None:
        """Cancel every task still running and wait until all have ended."""
        self.closed = True
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)


async def all_settled(awaitables: Iterable[Awaitable[T]]) -> list[T | Exception]:
    """Run each at once in a TaskGroup and wait for all of them; an exception one of them raised
    is returned in its place rather than cancelling the others."""

    async def settle(awaitable: Awaitable[T]) -> T | Exception:
        try:
            return await awaitable
        except Exception as exc:
            return exc

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(settle(awaitable)) for awaitable in awaitables]
    return [task.result() for task in tasks]
