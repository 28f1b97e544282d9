"""Shared set-up for the Colonies tests: a running test server and a ready colony."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Coroutine, Iterator, TypeVar

import pytest

from taskmasterd.colonies.client import ColoniesClient
from taskmasterd.colonies.crypto import derive_id, generate_prvkey
from tests.support.colonies_server import DEFAULT_SERVER_PRVKEY, ColoniesTestServer, ServerThread

DATA = Path(__file__).resolve().parent.parent / "data"
# docker-compose.env colony of the real distribution (vectors.json).
COLONY_PRVKEY = "ba949fa134981372d6da62b6a56f336ab4d843b22c02a4257dcf7d0d73097514"
COLONY_NAME = "dev"
EXECUTOR_TYPE = "taskmaster"
T = TypeVar("T")


def load_data(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    """Run one async scenario from a synchronous test, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@dataclass(frozen=True)
class Colony:
    """A colony with one approved executor and one user, and the keys of each role."""

    name: str
    server_prvkey: str
    colony_prvkey: str
    executor_name: str
    executor_type: str
    executor_prvkey: str
    user_name: str
    user_prvkey: str

    @property
    def executor_id(self) -> str:
        return derive_id(self.executor_prvkey)

    @property
    def user_id(self) -> str:
        return derive_id(self.user_prvkey)


async def make_colony(client: ColoniesClient, executor_name: str = "tm-exec") -> Colony:
    colony = Colony(
        name=COLONY_NAME,
        server_prvkey=DEFAULT_SERVER_PRVKEY,
        colony_prvkey=COLONY_PRVKEY,
        executor_name=executor_name,
        executor_type=EXECUTOR_TYPE,
        executor_prvkey=generate_prvkey(),
        user_name="alice",
        user_prvkey=generate_prvkey(),
    )
    await client.add_colony(derive_id(COLONY_PRVKEY), COLONY_NAME, colony.server_prvkey)
    await client.add_executor(
        COLONY_NAME, executor_name, EXECUTOR_TYPE, colony.executor_id, colony.colony_prvkey
    )
    await client.approve_executor(COLONY_NAME, executor_name, colony.colony_prvkey)
    await client.add_user(COLONY_NAME, colony.user_id, colony.user_name, colony.colony_prvkey)
    return colony


async def open_colony(port: int, user_prvkey: str) -> None:
    """On a fresh server: the colony of docker-compose.env and one user, "bob", as an operator makes them."""
    async with ColoniesClient("127.0.0.1", port) as client:
        await client.add_colony(derive_id(COLONY_PRVKEY), COLONY_NAME, DEFAULT_SERVER_PRVKEY)
        await client.add_user(COLONY_NAME, derive_id(user_prvkey), "bob", COLONY_PRVKEY)


def daemon_options(root: Path, port: int) -> dict[str, Any]:
    """`Daemon(...)` keywords for a daemon serving that colony, with the colony key."""
    config = root / "taskmasterd.json"
    config.write_text(json.dumps({"colonies": {"host": "127.0.0.1", "port": port, "colony": COLONY_NAME}}))
    return {"args": ["--config", str(config)], "env": {"COLONIES_COLONY_PRVKEY": COLONY_PRVKEY}}


@asynccontextmanager
async def serve(**server_kwargs: Any) -> AsyncIterator[tuple[ColoniesTestServer, ColoniesClient]]:
    """A test server on 127.0.0.1 and a client of ours connected to it."""
    server = ColoniesTestServer(**server_kwargs)
    await server.start("127.0.0.1", 0)
    client = ColoniesClient("127.0.0.1", server.port, timeout=15)
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop()


@asynccontextmanager
async def serve_colony(**server_kwargs: Any) -> AsyncIterator[tuple[ColoniesTestServer, ColoniesClient, Colony]]:
    """``serve()`` with the colony of ``make_colony()`` already set up."""
    async with serve(**server_kwargs) as (server, client):
        yield server, client, await make_colony(client)


@pytest.fixture
def colonies_server_thread() -> Iterator[ColoniesTestServer]:
    """The test server on a background thread, for synchronous clients such as pycolonies."""
    with ServerThread() as server:
        yield server
