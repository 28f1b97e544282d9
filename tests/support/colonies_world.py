"""The ColonyOS bridge in this process against the test server on 127.0.0.1: a Supervisor, its
bridge, and a user's client submitting to the jobs' executors."""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from taskmasterd.colonies.bridge import ColoniesBridge
from taskmasterd.colonies.client import ColoniesClient, func_spec
from taskmasterd.colonies.retry import Timing
from taskmasterd.colonies.settings import ColoniesSettings
from taskmasterd.lifecycle.supervisor import Supervisor
from tests.support.colonies_fixtures import COLONY_NAME, COLONY_PRVKEY, Colony, make_colony
from tests.support.colonies_server import ColoniesTestServer
from tests.support.colonies_state import CANCELLED, FAILED, SUCCESS
from tests.support.supervised import eventually, supervised

FAST = Timing(assign_timeout=2, keepalive_interval=0.3, check_interval=0.2, log_interval=0.1, backoff_base=0.05,
              backoff_cap=0.4,
              close_patience=3.0, request_timeout=5.0)
PIDFILE_THEN_SLEEP = ["sh", "-c", 'echo $$ > "$1"; exec sleep 60', "sh"]


@dataclass
class World:
    server: ColoniesTestServer
    client: ColoniesClient  # the user's (and the operator's) client
    colony: Colony
    sup: Supervisor
    bridge: ColoniesBridge

    async def submit(self, job: str, funcname: str = "run", **kwargs: Any) -> str:
        spec = func_spec(funcname, COLONY_NAME, job, **kwargs)
        return (await self.client.submit(spec, self.colony.user_prvkey))["processid"]

    async def process(self, processid: str) -> dict[str, Any]:
        return await self.client.get_process(processid, self.colony.user_prvkey)

    async def ended(self, processid: str, timeout: float = 20.0) -> dict[str, Any]:
        return await self.reach(processid, SUCCESS, FAILED, CANCELLED, timeout=timeout)

    async def reach(self, processid: str, *states: int, timeout: float = 20.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while (doc := await self.process(processid))["state"] not in states:
            assert asyncio.get_running_loop().time() < deadline, f"process stuck in state {doc['state']}: {doc}"
            await asyncio.sleep(0.05)
        return doc

    async def logs(self, processid: str) -> str:
        entries = await self.client.get_logs(COLONY_NAME, self.colony.user_prvkey, processid=processid, count=500)
        return "".join(entry["message"] for entry in entries)

    def executor(self, job: str) -> dict[str, Any]:
        return self.sup.status(job).value["jobs"][0].get("colonies") or {}

    async def polling(self, job: str) -> dict[str, Any]:
        await eventually(lambda: self.executor(job).get("state") == "polling", what=f"{job} polling")
        return self.executor(job)


@contextlib.asynccontextmanager
async def world(root: Path, jobs: dict[str, dict], colony_key: bool = True, before_open: Any = None,
                location: str = "", timing: Timing = FAST, settings: dict[str, Any] | None = None,
                **server_kwargs: Any) -> AsyncIterator[World]:
    servers = [ColoniesTestServer(**server_kwargs)]
    await servers[0].start("127.0.0.1", 0)
    client = ColoniesClient("127.0.0.1", servers[0].port, timeout=10)
    try:
        colony = await make_colony(client)
        configured = ColoniesSettings(host="127.0.0.1", port=servers[0].port, colony_name=COLONY_NAME,
                                      colony_prvkey=COLONY_PRVKEY if colony_key else None, location=location,
                                      **(settings or {}))
        async with supervised(root, jobs, watch=False) as sup:
            bridge = ColoniesBridge(sup, configured, timing)
            w = World(servers[0], client, colony, sup, bridge)
            if before_open is not None:
                await before_open(w)
            bridge.open()
            try:
                yield w
            finally:
                servers.append(w.server)  # a test may have replaced it
                if bridge in sup.listeners:  # a test may have shut it down itself
                    await bridge.close()
    finally:
        await client.close()
        for server in servers:
            await server.stop()


def job(cmd: list[str] | str, **extra: Any) -> dict[str, Any]:
    return {"cmd": cmd, "autostart": False, "stoptime": 2, **extra}


async def wait_pid(path: Path) -> int:
    await eventually(lambda: path.exists() and path.read_text().strip(), what=f"pid in {path}")
    return int(path.read_text())
