"""Several daemons ("hosts", each a Supervisor and its ColonyOS bridge with blueprints on, under a
host name of its own) against one test server, and a user who declares blueprints."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from taskmasterd.colonies.blueprint_schema import KIND
from taskmasterd.colonies.bridge import ColoniesBridge
from taskmasterd.colonies.client import ColoniesClient
from taskmasterd.colonies.jobsource import install
from taskmasterd.colonies.retry import Timing
from taskmasterd.colonies.settings import ColoniesSettings
from taskmasterd.lifecycle.supervisor import Supervisor
from tests.support.colonies_fixtures import COLONY_NAME, COLONY_PRVKEY, Colony, make_colony
from tests.support.colonies_server import ColoniesTestServer
from tests.support.colonies_world import FAST
from tests.support.supervised import eventually

FLEET = dataclasses.replace(FAST, resync_interval=3.0, status_interval=0.1)


@dataclass
class Host:
    name: str
    root: Path
    sup: Supervisor
    bridge: ColoniesBridge

    def job(self, name: str) -> dict[str, Any] | None:
        """`status` of job colony.<name>, as taskmasterctl gets it; None when there is none."""
        reply = self.sup.status(f"colony.{name}")
        return reply.value["jobs"][0] if reply.ok else None

    def running(self, name: str) -> int:
        job = self.job(name)
        return sum(i["state"] == "RUNNING" for i in job["instances"]) if job else 0

    def pids(self, name: str) -> list[int]:
        job = self.job(name)
        return sorted(i["pid"] for i in job["instances"] if i.get("pid")) if job else []

    def blueprints(self) -> dict[str, Any]:
        assert self.bridge.blueprints is not None
        return self.bridge.blueprints.status()


@dataclass
class Fleet:
    root: Path
    server: ColoniesTestServer
    client: ColoniesClient
    colony: Colony
    timing: Timing
    hosts: dict[str, Host] = field(default_factory=dict)
    _stacks: dict[str, contextlib.AsyncExitStack] = field(default_factory=dict)

    async def start(self, name: str, root: Path | None = None, colony_key: bool = True, location: str = "",
                    **settings: Any) -> Host:
        stack = contextlib.AsyncExitStack()
        host = await stack.enter_async_context(
            daemon_host(root or self.root / name, name, self.server.port, self.timing, colony_key, location, **settings))
        self.hosts[name], self._stacks[name] = host, stack
        return host

    async def stop(self, name: str) -> None:
        await self._stacks.pop(name).aclose()
        del self.hosts[name]

    async def restart_server(self) -> None:
        """The server goes away and comes back on the same port, its data kept (a database)."""
        port, state = self.server.port, self.server.state
        await self.server.stop()
        await asyncio.sleep(0.5)
        self.server = ColoniesTestServer(stale_executor_duration=None)
        self.server.state = state
        await self.server.start("127.0.0.1", port)

    # --- what a colony member does ---------------------------------------------------------------

    def document(self, name: str, job: dict[str, Any], **placement: Any) -> dict[str, Any]:
        return {"kind": KIND, "metadata": {"name": name, "colonyname": COLONY_NAME},
                "spec": {"job": job, **placement}}

    async def add(self, name: str, job: dict[str, Any], **placement: Any) -> dict[str, Any]:
        return await self.client.add_blueprint(self.document(name, job, **placement), self.colony.user_prvkey)

    async def change(self, name: str, job: dict[str, Any] | None = None, **placement: Any) -> dict[str, Any]:
        current = await self.blueprint(name)
        spec = {**current["spec"], **placement}
        if job is not None:
            spec["job"] = job
        return await self.client.update_blueprint({**current, "spec": spec}, self.colony.user_prvkey)

    async def remove(self, name: str) -> None:
        await self.client.remove_blueprint(COLONY_NAME, name, self.colony.user_prvkey)

    async def blueprint(self, name: str) -> dict[str, Any]:
        return await self.client.get_blueprint(COLONY_NAME, name, self.colony.user_prvkey)

    async def host_status(self, name: str) -> dict[str, Any]:
        return ((await self.blueprint(name)).get("status") or {}).get("hosts") or {}

    async def reported(self, name: str, expected: dict[str, dict[str, Any]], timeout: float = 20.0) -> dict[str, Any]:
        """Once the blueprint's status shows, for each host, at least these fields (and no other host);
        a callable value is a test of the field."""
        found: dict[str, Any] = {}

        def good(value: Any, wanted: Any) -> bool:
            return wanted(value) if callable(wanted) else value == wanted

        async def matches() -> bool:
            nonlocal found
            found = await self.host_status(name)
            return set(found) == set(expected) and all(
                all(good(found[host].get(key), value) for key, value in fields.items()) for host, fields in expected.items())

        deadline = asyncio.get_running_loop().time() + timeout
        while not await matches():
            assert asyncio.get_running_loop().time() < deadline, f"status of {name}: {found}, want {expected}"
            await asyncio.sleep(0.05)
        return found


@contextlib.asynccontextmanager
async def daemon_host(root: Path, hostname: str, port: int, timing: Timing, colony_key: bool = True,
                      location: str = "", **extra_settings: Any) -> AsyncIterator[Host]:
    (root / "jobs").mkdir(parents=True, exist_ok=True)
    sup = Supervisor(root / "jobs", root / "logs", root / "state")
    install(sup, COLONY_NAME)
    await sup.open(watch=False)
    settings = ColoniesSettings(host="127.0.0.1", port=port, colony_name=COLONY_NAME,
                                colony_prvkey=COLONY_PRVKEY if colony_key else None, location=location,
                                hostname=hostname, blueprints=True, **extra_settings)
    bridge = ColoniesBridge(sup, settings, timing)
    bridge.open()
    try:
        yield Host(hostname, root, sup, bridge)
    finally:
        await bridge.close()
        await sup.shutdown()


@contextlib.asynccontextmanager
async def fleet(root: Path, names: list[str], timing: Timing = FLEET, **server_kwargs: Any) -> AsyncIterator[Fleet]:
    server = ColoniesTestServer(**server_kwargs)
    await server.start("127.0.0.1", 0)
    client = ColoniesClient("127.0.0.1", server.port, timeout=10)
    crew = Fleet(root, server, client, await make_colony(client), timing)
    try:
        for name in names:
            await crew.start(name)
        await eventually(lambda: all(h.blueprints()["state"] == "idle" for h in crew.hosts.values()),
                         what="every reconciler through its first pass")
        yield crew
    finally:
        for name in list(crew.hosts):
            await crew.stop(name)
        await client.close()
        await crew.server.stop()
