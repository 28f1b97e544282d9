"""Who one job's executor is on the server: its key, its registration under the name, type and
location the job file asks for, and the functions it serves.

With the colony owner key the daemon adds and approves the executor itself; without it, it only
checks what an operator registered. A job's key stays in the key directory when the job goes: the
server never forgets an executor name (by default it refuses the name to any other id, even once
removed), and approving a removed executor by name restores it with its id, so only that key can
be that executor again.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from ..jobfiles.jobfile import ColoniesSpec
from .client import ColoniesError, transient
from .crypto import generate_prvkey
from .keystore import ExecutorKey, KeyStoreError
from .settings import ColoniesSettings
from .shared import Shared

log = logging.getLogger("taskmasterd.colonies")
APPROVED, REJECTED = 1, 2


class RegistrationProblem(Exception):
    """Something only an operator can fix (no key, name taken, not approved); retried slowly."""


@dataclass(frozen=True)
class Identity:
    name: str
    executortype: str
    location: str


def executor_identity(job: str, conf: ColoniesSpec, settings: ColoniesSettings) -> Identity:
    """The defaults of executor.md: `<job>.<hostname>`, the job's name as type, the daemon's location."""
    return Identity(conf.executorname or f"{job}.{settings.hostname}", conf.executortype or job,
                    settings.location if conf.location is None else conf.location)


class Registration:
    def __init__(self, shared: Shared, job: str, wanted: Identity,
                 remedy: str = "give the job another executorname") -> None:
        self._shared = shared
        self._job = job
        self._remedy = remedy  # what to do when the name belongs to another key
        self._colony = shared.settings.colony_name
        self.wanted = wanted
        self.name = wanted.name  # without the colony key, the key file may name the executor
        self.key: ExecutorKey | None = None
        self._functions: tuple[str, ...] = ()  # what the server has been told this executor serves

    async def register(self) -> ExecutorKey:
        """The key, approved on the server as the wanted type and location; raises
        RegistrationProblem or ColoniesError."""
        shared = self._shared
        try:
            stored = await asyncio.to_thread(shared.keystore.load, self._job)
        except KeyStoreError as exc:
            raise RegistrationProblem(str(exc)) from None
        colony_key = shared.settings.colony_prvkey
        if stored is not None and (not colony_key or stored.executorname in (None, self.wanted.name)):
            key, fresh = ExecutorKey(stored.executorname or self.wanted.name, stored.prvkey), False
        elif not colony_key:
            raise RegistrationProblem(
                f"no executor key in {shared.keystore.path(self._job)}: without the colony key, register "
                f"executor {self.wanted.name!r} (colonies executor add --approve) and put its private key there")
        else:
            if stored is not None and stored.executorname:
                await self.unregister(stored)  # renamed in the job file
            key, fresh = ExecutorKey(self.wanted.name, generate_prvkey()), True
            await asyncio.to_thread(shared.keystore.save, self._job, key)  # before adding: a crash keeps it
        self.name = key.executorname or self.wanted.name
        await self._ensure_approved(key, fresh)
        self._functions = ()  # a removed executor lost its functions
        self.key = key
        return key

    async def _ensure_approved(self, key: ExecutorKey, fresh: bool) -> None:
        client, colony_key = self._shared.client, self._shared.settings.colony_prvkey
        taken = (f"executor name {self.name!r} is taken in colony {self._colony!r} by another key and cannot "
                 f"be reused; {self._remedy}")
        current = await self._lookup(key)
        if current is not None and current.get("executorid") != key.executorid:
            raise RegistrationProblem(taken)
        if current is None and fresh and colony_key and await self._name_exists(colony_key):
            # A new key never takes a name over, even from a server that would let it
            # (COLONIES_ALLOW_EXECUTOR_REREGISTER): the name is another daemon's, live or gone.
            await asyncio.to_thread(self._shared.keystore.remove, self._job)
            raise RegistrationProblem(taken)
        if current is not None and current.get("state") == REJECTED:
            raise RegistrationProblem(f"executor {self.name!r} was rejected in colony {self._colony!r}; "
                                      f"approve it (colonies executor approve) to let it work")
        if current is not None and current.get("state") == APPROVED and self._as_wanted(current):
            return
        if not colony_key:
            raise RegistrationProblem(
                f"executor {self.name!r} is not registered and approved as type {self.wanted.executortype!r} "
                f"in colony {self._colony!r} with the key in {self._shared.keystore.path(self._job)}")
        if current is None or not self._as_wanted(current):
            await asyncio.wait([self._shared.capabilities])  # shared: one caller's stop must not cancel it
            capabilities = self._shared.capabilities.result()
            try:
                await client.add_executor(self._colony, self.name, self.wanted.executortype, key.executorid,
                                          colony_key, capabilities, self.wanted.location)
            except ColoniesError as exc:
                if transient(exc) or not (exc.status == 400 and "already exists" in exc.message):
                    raise
                if current is not None:
                    raise RegistrationProblem(self._cannot_change(current)) from None
                if fresh:  # a brand-new key cannot have been added before: the name belongs to someone else
                    await asyncio.to_thread(self._shared.keystore.remove, self._job)
                raise RegistrationProblem(taken) from None
        # Pending, or removed (by us, an operator or the server's stale-executor cleanup): approving
        # it by name restores it, with its id.
        await client.approve_executor(self._colony, self.name, colony_key)
        verified = await self._lookup(key)
        if verified is None or verified.get("executorid") != key.executorid:
            raise RegistrationProblem(taken)
        if not self._as_wanted(verified):
            raise RegistrationProblem(self._cannot_change(verified))

    async def _name_exists(self, colony_key: str) -> bool:
        """Whether an executor of our name exists. The colony owner may not list executors, but it
        may approve one by name, which fails for a name the server does not know ("executor is
        nil", 500; seen on the real server). (A pending executor of another key by that name is
        approved by this: it had the name first.)"""
        try:
            await self._shared.client.approve_executor(self._colony, self.name, colony_key)
        except ColoniesError as exc:
            if exc.status == 500 and "is nil" in exc.message:
                return False
            raise
        return True

    def _as_wanted(self, executor: dict[str, Any]) -> bool:
        return (executor.get("executortype") == self.wanted.executortype
                and (executor.get("locationname") or "") == self.wanted.location)

    def _cannot_change(self, executor: dict[str, Any]) -> str:
        def described(executortype: Any, location: Any) -> str:
            return f"type {executortype!r}" + (f" at location {location!r}" if location else "")

        return (f"executor {self.name!r} is registered as {described(executor.get('executortype'), executor.get('locationname'))}"
                f" and this server does not re-register a known executor name (COLONIES_ALLOW_EXECUTOR_REREGISTER),"
                f" so it cannot become {described(self.wanted.executortype, self.wanted.location)}: set the old"
                f" value back, or give the job another executorname")

    async def _lookup(self, key: ExecutorKey) -> dict[str, Any] | None:
        """The executor of our name as the server shows it to our key (a pending or removed executor
        still sees the colony's executors); None when the server does not know the key."""
        try:
            executors = await self._shared.client.get_executors(self._colony, key.prvkey)
        except ColoniesError as exc:
            if transient(exc):
                raise
            return None
        if not isinstance(executors, list):
            return None
        return next((e for e in executors if isinstance(e, dict) and e.get("executorname") == key.executorname), None)

    async def sync_functions(self, key: ExecutorKey, wanted: tuple[str, ...]) -> None:
        """Register each served function once (addfunctionmsg), whatever the server already knows."""
        if wanted == self._functions:
            return
        client, name = self._shared.client, key.executorname or ""
        found = await client.get_functions(self._colony, key.prvkey, executorname=name)
        known = {f.get("funcname") for f in found if isinstance(f, dict)} if isinstance(found, list) else set()
        for funcname in wanted:
            if funcname not in known:
                await client.add_function(self._colony, name, funcname, key.prvkey)
        self._functions = wanted

    async def unregister(self, key: ExecutorKey) -> None:
        """Remove the executor under `key`'s name, but only once the server shows it is ours:
        removal goes by name, and the name may belong to someone else. The key is kept."""
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
            log.warning("%s: could not remove executor %s: %s", self._job, name, exc)
        else:
            log.info("%s: executor %s removed from colony %s", self._job, name, self._colony)
