"""Who owns a task, and how much work a loop iteration takes.

Who owns a task: a `TaskOwner` for background work nobody waits for (a reload the watcher asked
for), an `asyncio.TaskGroup` for work a caller waits for (`all_settled`); shutdown awaits both.

`Turns` paces many tasks through a piece of synchronous work (reading and parsing a job file): a
batch per loop iteration, sized so a batch takes about a slice of time, so 2000 job files never
hold the loop for more than a few milliseconds at a time.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Awaitable, Coroutine, Iterable, TypeVar

from .foreground import Foreground

T = TypeVar("T")
SLICE = 0.002  # seconds of paced work per loop iteration (as a spawn slice: a request waits for one)
MAX_BATCH = 1024


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

    def spawn(self, coro: Coroutine[Any, Any, T], what: str | None) -> asyncio.Task[T]:
        """Run `coro` as a task of this owner; `what` names it when it fails (None: whoever awaits
        it reads its failure). Refused once closed (the coroutine is closed unstarted)."""
        if self.closed:
            coro.close()
            raise RuntimeError(f"{what}: its owner is closed")
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def ended(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if what is not None and not task.cancelled() and task.exception() is not None:
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


async def all_settled(awaitables: Iterable[Awaitable[T]], at_once: int | None = None) -> list[T | Exception]:
    """Run them in a TaskGroup and wait for all; an exception one of them raised is returned in
    its place rather than cancelling the others. `at_once`: at most that many run at a time, the
    next taken from `awaitables` (which may be a generator) as one ends, so that 2000 of them do
    not cost 2000 tasks made in one loop iteration."""

    async def settle(awaitable: Awaitable[T]) -> T | Exception:
        try:
            return await awaitable
        except Exception as exc:
            return exc

    if at_once is None:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(settle(awaitable)) for awaitable in awaitables]
        return [task.result() for task in tasks]
    results: dict[int, T | Exception] = {}
    pending = enumerate(awaitables)  # shared by the workers: each takes the next one

    async def work() -> None:
        for index, awaitable in pending:
            results[index] = await settle(awaitable)

    async with asyncio.TaskGroup() as group:
        for _ in range(at_once):
            group.create_task(work())
    return [results[index] for index in range(len(results))]


class Turns:
    """Turns at a piece of synchronous work, given out a batch per loop iteration. A task awaits
    `turn()`, then does its piece; the batch size follows what the last batch took, so that one
    takes about SLICE seconds. With a `foreground`, each batch is let go after the control
    requests under way (foreground.py)."""

    def __init__(self, slice_seconds: float = SLICE, foreground: Foreground | None = None) -> None:
        self._slice = slice_seconds
        self._foreground = foreground
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._batch = 8
        self._released_at = 0.0  # when the last batch was let go (0: none under way)
        self._pacing: asyncio.Handle | None = None

    async def turn(self) -> None:
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        if self._pacing is None:
            self._pacing = asyncio.get_running_loop().call_soon(self._next)
        await turn

    def _next(self) -> None:
        """Runs in the iteration after a batch was let go, once that batch's tasks have had their
        step: size the next batch by what this one took, and let it go."""
        now = time.monotonic()
        if self._released_at:
            took = max(now - self._released_at, 1e-5)
            self._batch = max(1, min(MAX_BATCH, int(self._batch * min(2.0, self._slice / took))))
        if self._foreground is not None and self._waiting:
            self._foreground.after(self._release)
        else:
            self._release()

    def _release(self) -> None:
        released = 0
        while self._waiting and released < self._batch:
            turn = self._waiting.popleft()
            if not turn.done():  # its task was cancelled meanwhile
                turn.set_result(None)
                released += 1
        if released:
            self._released_at = time.monotonic()
            self._pacing = asyncio.get_running_loop().call_soon(self._next)
        else:
            self._released_at = 0.0
            self._pacing = None
