"""An executor of the daemon's own, not a job's: the blueprint reconciler and its wake-up inbox.

One assign long-poll at a time; each process it brings is served by a callback and closed. Its
processes are triggers ("look at the blueprints again"), so serving one twice does no harm: one
left RUNNING for it by a lost assign reply or by a restart is served again when the executor
finds it (on start, after a lost reply, when the server answers again), then closed.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from .assignment import Assignment, RUNNING
from .client import ColoniesError, ColoniesOutcomeUnknown, transient
from .keystore import ExecutorKey
from .registered import RegisteredExecutor
from .registration import Identity
from .shared import Shared, cancel_and_wait

log = logging.getLogger("taskmasterd.colonies")
Serve = Callable[[Assignment], Awaitable[tuple[bool, list[Any]]]]


class ServiceExecutor(RegisteredExecutor):
    def __init__(self, shared: Shared, label: str, keyname: str, identity: Identity,
                 functions: tuple[str, ...], serve: Serve, remedy: str) -> None:
        super().__init__(shared, label, keyname, identity, remedy)
        self._functions = functions
        self._serve = serve
        self.key: ExecutorKey | None = None
        self.online = asyncio.Event()  # registered: `key` is usable
        self._task = asyncio.create_task(self._main())
        self._task.add_done_callback(self._main_ended)

    @property
    def functions(self) -> tuple[str, ...]:
        return self._functions

    def status(self) -> dict[str, Any]:
        outage = self._shared.outage.why
        offline = outage is not None and self.state != "error"
        return {"executor": self.executorname, "executortype": self.identity.executortype,
                "state": "offline" if offline else self.state, "error": outage if offline else self.error}

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self.state = "closed"

    async def _main(self) -> None:
        while True:
            self.key = await self._register_until_done()
            self.online.set()
            refusal = await self._work(self.key)
            self.online.clear()
            log.warning("%s: executor %s: refused by the server (%s); registering again",
                        self.label, self.executorname, refusal)

    async def _work(self, key: ExecutorKey) -> str:
        """Assign and serve until the server refuses this executor; returns why."""
        shared = self._shared
        leftovers = True  # processes the server may show RUNNING for us: serve them first
        while True:
            try:
                if leftovers:
                    for process in await shared.client.get_process_hist(self._colony, RUNNING, key.prvkey,
                                                                         executorid=key.executorid):
                        await self._handle(key, process)
                    leftovers = False
                self.state = "polling"
                process = await shared.client.assign(self._colony, shared.timing.assign_timeout, key.prvkey)
            except ColoniesError as exc:
                leftovers = leftovers or isinstance(exc, ColoniesOutcomeUnknown)
                if not transient(exc):
                    return exc.message
                shared.outage.failed(exc)
                leftovers = True  # a reply may have been lost while the server failed
                await asyncio.sleep(self._backoff.next_delay())
                continue
            self._online()
            if process is not None:
                await self._handle(key, process)

    async def _handle(self, key: ExecutorKey, process: Any) -> None:
        if not isinstance(process, dict) or not isinstance(process.get("processid"), str):
            return
        shared = self._shared
        task = Assignment(shared.client, key.prvkey, key.executorid, process, shared.timing, shared.outage,
                          asyncio.get_running_loop().time())
        self.state = "serving"
        if task.funcname not in self._functions:
            successful, values = False, [f"function {task.funcname!r} is not served by executor {self.executorname!r}"]
        else:
            try:
                successful, values = await self._serve(task)
            except Exception as exc:  # one broken process must not take the executor down
                log.exception("%s: process %s failed inside taskmasterd", self.label, task.id)
                successful, values = False, [f"taskmasterd internal error: {exc!r}"]
        await task.close(successful, values, shared.timing.close_patience)
