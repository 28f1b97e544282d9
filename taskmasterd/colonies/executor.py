"""One job's ColonyOS executor: registration, its functions, the assign long-poll, and its runs.

Everything is a task on the daemon's loop and every call is asynchronous, so a slow or absent
server only ever delays this job's Colonies work, never supervision or the control protocol.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..jobfile import ColoniesSpec
from .assignment import Assignment, transient
from .client import ColoniesClient, ColoniesError, ColoniesUnavailable
from .control import control
from .crypto import generate_prvkey
from .keystore import ExecutorKey, KeyStore, KeyStoreError
from .retry import Backoff, Outage, Timing
from .runner import PIPE_GRACE, CommandRun
from .settings import ColoniesSettings

if TYPE_CHECKING:
    from ..job import Job

log = logging.getLogger("taskmasterd.colonies")
APPROVED = 1


@dataclass(frozen=True)
class Shared:
    """What every job's executor shares: one client, one key directory, one outage, one clock."""

    client: ColoniesClient
    settings: ColoniesSettings
    keystore: KeyStore
    outage: Outage
    timing: Timing
    capabilities: asyncio.Future[dict[str, Any]]


class RegistrationProblem(Exception):
    """Something only an operator can fix (no key, name taken, not approved); retried slowly."""


def executor_identity(job: str, conf: ColoniesSpec) -> tuple[str, str]:
    """(executorname, executortype) with the defaults of executor.md."""
    return conf.executorname or f"{job}.{socket.gethostname()}", conf.executortype or job


class JobExecutor:
    def __init__(self, job: Job, shared: Shared, after: asyncio.Future[Any] | None = None) -> None:
        assert job.spec.colonies is not None
        self.job = job
        self.conf: ColoniesSpec = job.spec.colonies
        self.executorname, self.executortype = executor_identity(job.name, self.conf)
        self.state = "starting"
        self.error: str | None = None
        self._shared = shared
        self._colony = shared.settings.colony_name
        self._key: ExecutorKey | None = None
        self._functions: tuple[str, ...] = ()  # what the server has been told this executor serves
        self._runs: set[asyncio.Task[None]] = set()
        self._freed = asyncio.Event()
        self._stop: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._backoff = Backoff(shared.timing)
        self._task = asyncio.create_task(self._main(after))
        self._task.add_done_callback(self._main_ended)

    # --- what the bridge calls ------------------------------------------------------------------

    def update(self, job: Job) -> None:
        """A new version of the job file with the same executor identity."""
        assert job.spec.colonies is not None
        self.job, self.conf = job, job.spec.colonies
        self._freed.set()  # maxconcurrent may have grown

    def status(self) -> dict[str, Any]:
        # Any call of any job failing to reach the server says it: even a busy executor is offline.
        outage = self._shared.outage.why
        offline = outage is not None and self.state not in ("error", "closed")
        return {
            "executor": self.executorname,
            "executortype": self.executortype,
            "executorid": self._key.executorid if self._key else None,
            "state": "offline" if offline else self.state,
            "running": len(self._runs),
            "error": outage if offline else self.error,
        }

    async def close(self, reason: str, unregister: bool) -> None:
        """Stop polling, stop the runs (failing their processes with `reason`), and with the colony
        key and `unregister`, remove the executor and forget its key."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if not self._stop.done():
            self._stop.set_result(reason)
        if self._runs:
            timing = self._shared.timing
            _, late = await asyncio.wait(self._runs, timeout=self.job.spec.stoptime + timing.close_patience + PIPE_GRACE)
            for run in late:
                run.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if unregister and self._shared.settings.colony_prvkey:
            if self._key is not None:
                await self._unregister(self._key)
            await asyncio.to_thread(self._shared.keystore.remove, self.job.name)
        self.state = "closed"

    # --- life -----------------------------------------------------------------------------------

    async def _main(self, after: asyncio.Future[Any] | None) -> None:
        if after is not None:
            await asyncio.wait([after])  # this job's previous executor is still leaving
        while True:
            key = await self._register_until_done()
            await self._poll(key)

    def _main_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: ColonyOS executor failed", self.job.name, exc_info=task.exception())
            self.state, self.error = "error", f"internal error: {task.exception()!r}"

    def _problem(self, text: str) -> None:
        if text != self.error:
            log.error("%s: %s", self.job.name, text)
        self.state, self.error = "error", text

    def _online(self) -> None:
        self._shared.outage.recovered()
        self._backoff.reset()

    async def _register_until_done(self) -> ExecutorKey:
        while True:
            self.state = "registering"
            try:
                key = await self._register()
                self._functions = ()
                await self._sync_functions(key)
            except RegistrationProblem as problem:
                self._problem(str(problem))
            except ColoniesError as exc:
                if transient(exc):
                    self._shared.outage.failed(exc)
                else:
                    self._problem(f"executor {self.executorname!r}: registration refused: {exc.message}")
            else:
                self._online()
                self._key, self.state, self.error = key, "registered", None
                log.info("%s: ColonyOS executor %s (type %s) registered in colony %s",
                         self.job.name, key.executorname, self.executortype, self._colony)
                return key
            await asyncio.sleep(self._backoff.next_delay())

    async def _poll(self, key: ExecutorKey) -> None:
        """One long-poll at a time, and only while a run slot is free; returns to register again."""
        shared = self._shared
        while True:
            while len(self._runs) >= self.conf.maxconcurrent:
                self.state = "running"
                self._freed.clear()
                await self._freed.wait()
            self.state = "polling"
            try:
                await self._sync_functions(key)
                process = await shared.client.assign(self._colony, shared.timing.assign_timeout, key.prvkey)
            except ColoniesError as exc:
                if not transient(exc):  # removed, or the server lost its data: register again
                    log.warning("%s: executor %s: assign refused (%s); registering again",
                                self.job.name, key.executorname, exc.message)
                    return
                self._shared.outage.failed(exc)
                await asyncio.sleep(self._backoff.next_delay())
                continue
            self._online()
            if process is not None:
                self._begin(key, process)

    def _begin(self, key: ExecutorKey, process: dict[str, Any]) -> None:
        shared = self._shared
        task = Assignment(shared.client, key.prvkey, key.executorid, process, shared.timing, shared.outage)
        run = asyncio.create_task(self._serve(task))
        self._runs.add(run)
        run.add_done_callback(self._finished)

    def _finished(self, run: asyncio.Task[None]) -> None:
        self._runs.discard(run)
        self._freed.set()

    async def _serve(self, task: Assignment) -> None:
        functions = self.conf.functions
        try:
            if task.funcname not in functions:
                await task.close(False, [f"function {task.funcname!r} is not served by executor "
                                         f"{self.executorname!r} (it serves {', '.join(functions)})"])
            elif task.funcname == "run":
                await CommandRun(task, self.job, self._stop, self._shared.timing).run()
            else:
                successful, values = await control(self.job.supervisor, self.job.name, task.funcname)
                await task.close(successful, values)
        except Exception as exc:  # one broken process must not take the executor down
            log.exception("%s: process %s failed inside taskmasterd", self.job.name, task.id)
            await task.close(False, [f"taskmasterd internal error: {exc!r}"], self._shared.timing.close_patience)

    # --- registration ---------------------------------------------------------------------------

    async def _register(self) -> ExecutorKey:
        shared = self._shared
        try:
            stored = await asyncio.to_thread(shared.keystore.load, self.job.name)
        except KeyStoreError as exc:
            raise RegistrationProblem(str(exc)) from None
        colony_key = shared.settings.colony_prvkey
        if stored is not None and (not colony_key or stored.executorname in (None, self.executorname)):
            # Without the colony key the key file says who we are, name included.
            key = ExecutorKey(stored.executorname or self.executorname, stored.prvkey)
            self.executorname = key.executorname or self.executorname
            await self._ensure_approved(key, fresh=False)
            return key
        if not colony_key:
            raise RegistrationProblem(
                f"no executor key in {shared.keystore.path(self.job.name)}: without the colony key, register "
                f"executor {self.executorname!r} (colonies executor add --approve) and put its private key there")
        if stored is not None and stored.executorname:
            await self._unregister(stored)  # renamed in the job file
        key = ExecutorKey(self.executorname, generate_prvkey())
        await asyncio.to_thread(shared.keystore.save, self.job.name, key)  # before adding: a crash keeps it
        await self._ensure_approved(key, fresh=True)
        return key

    async def _ensure_approved(self, key: ExecutorKey, fresh: bool) -> None:
        client, colony_key = self._shared.client, self._shared.settings.colony_prvkey
        name = key.executorname or self.executorname
        taken = (f"executor name {name!r} is taken in colony {self._colony!r} by another key and cannot be "
                 f"reused; give the job another executorname")
        current = await self._lookup(key)
        if current is not None and current.get("executorid") != key.executorid:
            raise RegistrationProblem(taken)
        if current is not None and current.get("state") == APPROVED and current.get("executortype") == self.executortype:
            return
        if not colony_key:
            raise RegistrationProblem(
                f"executor {name!r} is not registered and approved as type {self.executortype!r} in colony "
                f"{self._colony!r} with the key in {self._shared.keystore.path(self.job.name)}")
        capabilities = await asyncio.shield(self._shared.capabilities)
        try:
            await client.add_executor(self._colony, name, self.executortype, key.executorid, colony_key, capabilities)
        except ColoniesError as exc:
            if transient(exc) or not (exc.status == 400 and "already exists" in exc.message):
                raise
            if fresh:  # a brand-new key cannot have been added before: the name belongs to someone else
                await asyncio.to_thread(self._shared.keystore.remove, self.job.name)
                raise RegistrationProblem(taken) from None
            # Our stored key may have been added before (crash before approval, or removed earlier).
        await client.approve_executor(self._colony, name, colony_key)
        verified = await self._lookup(key)
        if verified is None or verified.get("executorid") != key.executorid:
            raise RegistrationProblem(taken)

    async def _lookup(self, key: ExecutorKey) -> dict[str, Any] | None:
        """The executor under our name as our key sees it; None when the server says no."""
        try:
            return await self._shared.client.get_executor(self._colony, key.executorname or "", key.prvkey)
        except ColoniesUnavailable:
            raise
        except ColoniesError:
            return None  # not a member (pending, removed, unknown), or no executor of that name

    async def _sync_functions(self, key: ExecutorKey) -> None:
        """Register each served function once (addfunctionmsg), whatever the server already knows."""
        wanted = self.conf.functions
        if wanted == self._functions:
            return
        client, name = self._shared.client, key.executorname or ""
        known = {f.get("funcname") for f in await client.get_functions(self._colony, key.prvkey, executorname=name)}
        for funcname in wanted:
            if funcname not in known:
                await client.add_function(self._colony, name, funcname, key.prvkey)
        self._functions = wanted

    async def _unregister(self, key: ExecutorKey) -> None:
        """Remove the executor under `key`'s name, but only once the server shows it is ours:
        removal goes by name, and the name may belong to someone else."""
        colony_key = self._shared.settings.colony_prvkey
        assert colony_key is not None
        name = key.executorname or ""
        try:
            async with asyncio.timeout(self._shared.timing.close_patience):
                current = await self._lookup(key)
                if current is None or current.get("executorid") != key.executorid:
                    return
                await self._shared.client.remove_executor(self._colony, name, colony_key)
        except (ColoniesError, TimeoutError) as exc:
            log.warning("%s: could not remove executor %s: %s", self.job.name, name, exc)
        else:
            log.info("%s: executor %s removed from colony %s", self.job.name, name, self._colony)
