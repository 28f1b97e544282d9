"""Our asyncio client against the test server: every method, roles, long-poll, errors."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator

import pytest

from taskmasterd.colonies.client import (
    IDLE_REUSE_LIMIT,
    ColoniesClient,
    ColoniesError,
    ColoniesOutcomeUnknown,
    ColoniesUnavailable,
    func_spec,
)
from taskmasterd.colonies.crypto import derive_id, generate_prvkey
from tests.support.colonies_fixtures import COLONY_NAME, EXECUTOR_TYPE, run, serve_colony
from tests.support.colonies_state import CANCELLED, FAILED, RUNNING, SUCCESS, WAITING


def spec(**kwargs) -> dict:
    return func_spec("echo", COLONY_NAME, EXECUTOR_TYPE, **kwargs)


async def expect_error(coro, status: int, text: str = "") -> ColoniesError:
    with pytest.raises(ColoniesError) as info:
        await coro
    assert info.value.status == status, info.value
    assert text in info.value.message
    assert not isinstance(info.value, ColoniesUnavailable)
    return info.value


def test_registration_roles_and_executor_lifecycle() -> None:
    async def scenario() -> None:
        async with serve_colony() as (server, client, col):
            assert (await client.version())["msgtype"] == "versionmsg"
            await expect_error(
                client.add_colony(derive_id(generate_prvkey()), "other", col.colony_prvkey), 403, "not server owner"
            )
            await expect_error(client.add_colony(derive_id(col.colony_prvkey), "dev", col.server_prvkey), 400, "already exists")

            key = generate_prvkey()
            added = await client.add_executor(COLONY_NAME, "e2", "t2", derive_id(key), col.colony_prvkey)
            assert added["state"] == 0 and added["executorid"] == derive_id(key)
            await expect_error(client.add_executor(COLONY_NAME, "e3", "t", derive_id(generate_prvkey()), key), 403, "not colony owner")
            # Pending executors are not members yet; the colony owner never is.
            await expect_error(client.get_executor(COLONY_NAME, "e2", key), 403, "not a member")
            await expect_error(client.assign(COLONY_NAME, 1, key), 403, "not a member")
            await expect_error(client.get_executor(COLONY_NAME, "e2", col.colony_prvkey), 403, "not a member")
            await expect_error(client.approve_executor(COLONY_NAME, "e2", key), 403, "not colony owner")
            await client.approve_executor(COLONY_NAME, "e2", col.colony_prvkey)
            assert (await client.get_executor(COLONY_NAME, "e2", key))["state"] == 1
            await client.reject_executor(COLONY_NAME, "e2", col.colony_prvkey)
            await expect_error(client.get_executor(COLONY_NAME, "e2", key), 403)
            await client.approve_executor(COLONY_NAME, "e2", col.colony_prvkey)

            await client.add_function(COLONY_NAME, "e2", "run", key, description="run once")
            await expect_error(client.add_function(COLONY_NAME, col.executor_name, "run", key), 403, "another executor")
            assert [f["funcname"] for f in await client.get_functions(COLONY_NAME, col.user_prvkey)] == ["run"]
            await client.remove_executor(COLONY_NAME, "e2", col.colony_prvkey)
            assert await client.get_functions(COLONY_NAME, col.user_prvkey, executorname="e2") == []
            states = {e["executorname"]: e["state"] for e in await client.get_executors(COLONY_NAME, col.user_prvkey)}
            assert states == {col.executor_name: 1, "e2": 3}
            await expect_error(client.approve_executor(COLONY_NAME, "nobody", col.colony_prvkey), 500, "executor is nil")
            # Re-registration (allowed on this server) replaces the executor, pending again.
            again = await client.add_executor(COLONY_NAME, "e2", "t2", derive_id(key), col.colony_prvkey)
            assert again["state"] == 0
            await expect_error(client.add_user(COLONY_NAME, col.user_id, "alice", col.colony_prvkey), 400, "already exists")

    run(scenario())


def test_no_reregister_server_refuses_name_reuse() -> None:
    async def scenario() -> None:
        async with serve_colony(allow_reregister=False) as (server, client, col):
            await client.remove_executor(COLONY_NAME, col.executor_name, col.colony_prvkey)
            await expect_error(
                client.add_executor(COLONY_NAME, col.executor_name, EXECUTOR_TYPE, derive_id(generate_prvkey()), col.colony_prvkey),
                400,
                f"Executor with name <{col.executor_name}> in Colony <dev> already exists",
            )

    run(scenario())


def test_process_lifecycle_logs_and_output() -> None:
    async def scenario() -> None:
        async with serve_colony() as (server, client, col):
            exe, user = col.executor_prvkey, col.user_prvkey
            await expect_error(client.submit(spec(), col.colony_prvkey), 403, "not a member")
            await expect_error(client.submit(spec(priority=50001), user), 400, "priority outside range")
            submitted = await client.submit(spec(args=["hi", 3], env={"X": "1"}), user)
            assert submitted["state"] == WAITING and submitted["initiatorname"] == "alice"
            assert submitted["attributes"][0]["key"] == "X"
            pid = submitted["processid"]
            await expect_error(client.set_output(pid, ["x"], exe), 403)
            process = await client.assign(COLONY_NAME, 5, exe)
            assert process is not None and process["processid"] == pid and process["state"] == RUNNING
            assert process["assignedexecutorid"] == col.executor_id

            await expect_error(client.add_log(pid, "nope", user), 403, "only the assigned Executor")
            await expect_error(client.close_successful(pid, ["x"], user), 403, "not allowed")
            for line in ("one\n", "two\n", "three\n"):
                await client.add_log(pid, line, exe)
            logs = await client.get_logs(COLONY_NAME, user, processid=pid)
            assert [x["message"] for x in logs] == ["one\n", "two\n", "three\n"]
            stamps = [x["timestamp"] for x in logs]
            assert stamps == sorted(stamps)
            later = await client.get_logs(COLONY_NAME, user, processid=pid, since=stamps[0])
            assert [x["message"] for x in later] == ["two\n", "three\n"]
            latest = await client.get_logs(COLONY_NAME, user, processid=pid, count=1, latest=True)
            assert [x["message"] for x in latest] == ["three\n"]
            await expect_error(client.get_logs(COLONY_NAME, user, processid=pid, count=501), 403, "max log count (500)")

            await client.set_output(pid, ["partial"], exe)
            assert (await client.get_process(pid, user))["out"] == ["partial"]
            running = await client.get_processes(COLONY_NAME, RUNNING, user)
            assert [p["processid"] for p in running] == [pid]
            await client.close_successful(pid, ["done"], exe)
            await client.close_successful(pid, ["again"], exe)  # Go allows it; output overwritten
            await expect_error(client.close_failed(pid, ["x"], exe), 400, "Tried to set successful process as failed")
            await expect_error(client.add_log(pid, "late", exe), 403, "process is not running")
            final = await client.get_process(pid, user)
            assert final["state"] == SUCCESS and final["out"] == ["again"]
            await expect_error(client.get_process("0" * 64, user), 404, "process not found")

            await client.add_executor_log(COLONY_NAME, col.executor_name, "starting\n", exe)
            await expect_error(client.add_executor_log(COLONY_NAME, "someone", "x", exe), 403, "name mismatch")
            by_executor = await client.get_logs(COLONY_NAME, user, executorname=col.executor_name)
            assert "starting\n" in [x["message"] for x in by_executor]

            failing = await client.submit(spec(), user)
            assert (await client.assign(COLONY_NAME, 5, exe))["processid"] == failing["processid"]
            await client.close_failed(failing["processid"], ["boom", "exit code 3"], exe)
            failed = await client.get_process(failing["processid"], user)
            assert failed["state"] == FAILED and failed["errors"] == ["boom", "exit code 3"]
            await client.remove_process(failing["processid"], user)
            await expect_error(client.get_process(failing["processid"], user), 404)

    run(scenario())


def test_cancel_rules() -> None:
    async def scenario() -> None:
        async with serve_colony() as (server, client, col):
            exe, user = col.executor_prvkey, col.user_prvkey
            waiting = await client.submit(spec(executornames=["somebody-else"]), user)
            await client.cancel_process(waiting["processid"], user)
            await expect_error(client.cancel_process(waiting["processid"], user), 400, "already cancelled")
            pid = (await client.submit(spec(), user))["processid"]
            await client.assign(COLONY_NAME, 5, exe)
            await client.cancel_process(pid, user)
            assert (await client.get_process(pid, user))["state"] == CANCELLED
            await expect_error(client.add_log(pid, "x", exe), 403, "process is not running")
            await expect_error(client.close_successful(pid, [], exe), 400, "Tried to set cancelled process as successful")
            await expect_error(client.close_failed(pid, [], exe), 400, "Tried to set cancelled process as failed")

    run(scenario())


def test_assign_long_poll_wakes_on_submit_and_times_out() -> None:
    async def scenario() -> None:
        async with serve_colony() as (server, client, col):
            exe, user = col.executor_prvkey, col.user_prvkey
            await expect_error(client.assign(COLONY_NAME, 0, exe), 400, "timeout cannot be zero")
            started = time.monotonic()
            assert await client.assign(COLONY_NAME, 1, exe) is None
            assert 0.9 < time.monotonic() - started < 3
            assert await client.assign(COLONY_NAME, -1, exe) is None

            poll = asyncio.create_task(client.assign(COLONY_NAME, 20, exe))
            await asyncio.sleep(0.3)
            # Neither another executor's target nor another type wakes this executor up.
            await client.submit(spec(executornames=["someone-else"]), user)
            await client.submit(func_spec("echo", COLONY_NAME, "other-type"), user)
            await asyncio.sleep(0.3)
            assert not poll.done()
            started = time.monotonic()
            wanted = await client.submit(spec(executornames=[col.executor_name]), user)
            process = await asyncio.wait_for(poll, 5)
            assert time.monotonic() - started < 1
            assert process["processid"] == wanted["processid"]

            # Lowest prioritytime first: a higher priority jumps the queue.
            low = await client.submit(spec(priority=0), user)
            high = await client.submit(spec(priority=5), user)
            assert (await client.assign(COLONY_NAME, 1, exe))["processid"] == high["processid"]
            assert (await client.assign(COLONY_NAME, 1, exe))["processid"] == low["processid"]

    run(scenario())


def test_deadlines_requeue_fail_and_zero_trap() -> None:
    async def scenario() -> None:
        async with serve_colony(deadline_tick=0.05) as (server, client, col):
            exe, user = col.executor_prvkey, col.user_prvkey
            # maxexectime 0 (the raw-RPC default) fails right after assignment.
            trap = await client.submit(spec(maxexectime=0, maxretries=0), user)
            await client.assign(COLONY_NAME, 1, exe)
            await asyncio.sleep(0.4)
            failed = await client.get_process(trap["processid"], user)
            assert failed["state"] == FAILED and failed["errors"] == ["Maximum execution time limit exceeded"]

            slow = await client.submit(spec(maxexectime=1, maxretries=1), user)
            await client.assign(COLONY_NAME, 1, exe)
            await asyncio.sleep(1.4)
            requeued = await client.get_process(slow["processid"], user)
            assert requeued["state"] == WAITING and requeued["retries"] == 1 and requeued["assignedexecutorid"] == ""
            await expect_error(client.close_successful(slow["processid"], [], exe), 403, "process is not assigned")
            await client.assign(COLONY_NAME, 1, exe)
            await asyncio.sleep(1.4)
            assert (await client.get_process(slow["processid"], user))["state"] == FAILED

            unwanted = await client.submit(func_spec("f", COLONY_NAME, "nobody", maxwaittime=1), user)
            await asyncio.sleep(1.4)
            expired = await client.get_process(unwanted["processid"], user)
            assert expired["state"] == FAILED and expired["errors"] == ["Maximum waiting time limit exceeded"]

    run(scenario())


def test_transport_keep_alive_reconnect_chunked_and_unavailable() -> None:
    async def scenario() -> None:
        async with serve_colony() as (server, client, col):
            before = len(client._idle)
            assert before >= 1
            assert server.drop_idle_connections() >= 1
            await asyncio.sleep(0.05)
            # The dropped keep-alive connection is noticed and the call retried.
            assert (await client.get_executor(COLONY_NAME, col.executor_name, col.executor_prvkey))["state"] == 1
            server.chunked_replies = True
            assert (await client.get_executors(COLONY_NAME, col.user_prvkey))[0]["executorname"] == col.executor_name
            await expect_error(client.get_process("1" * 64, col.user_prvkey), 404)
            # Many concurrent calls: more connections than the pool keeps idle.
            results = await asyncio.gather(*(client.version() for _ in range(12)))
            assert len(results) == 12 and len(client._idle) <= 4
            port = server.port
        unreachable = ColoniesClient("127.0.0.1", port, timeout=2)
        with pytest.raises(ColoniesUnavailable) as info:
            await unreachable.version()
        assert info.value.status == 0
        await unreachable.close()

    run(scenario())


def test_a_lost_reply_is_never_resent_for_what_must_not_happen_twice() -> None:
    async def scenario() -> None:
        async with serve_colony() as (server, client, col):
            exe, user = col.executor_prvkey, col.user_prvkey
            lost = await client.submit(spec(maxexectime=-1), user)
            # The server assigns it, and the connection breaks before the reply.
            server.lose_replies["assignprocessmsg"] = 1
            with pytest.raises(ColoniesOutcomeUnknown, match="not sent again"):
                await client.assign(COLONY_NAME, 1, exe)
            assert not server.lose_replies["assignprocessmsg"]  # sent once, not twice
            assigned = await client.get_process(lost["processid"], user)
            assert assigned["state"] == RUNNING and assigned["assignedexecutorid"] == col.executor_id
            # Connections the server closed, or idle too long, are never used: nothing is lost.
            submitted = await client.submit(spec(maxexectime=-1), user)
            assert server.drop_idle_connections() >= 1
            await asyncio.sleep(0.05)
            assert (await client.assign(COLONY_NAME, 1, exe))["processid"] == submitted["processid"]
            aged = list(client._idle)
            for conn in aged:
                conn.idle_since -= IDLE_REUSE_LIMIT + 1
            again = await client.submit(spec(maxexectime=-1), user)
            assert (await client.assign(COLONY_NAME, 1, exe))["processid"] == again["processid"]
            assert aged and all(conn.writer.is_closing() for conn in aged)

        async with silent_server() as quiet:
            with pytest.raises(ColoniesOutcomeUnknown):
                await quiet.add_log("1" * 64, "text", generate_prvkey())
            with pytest.raises(ColoniesUnavailable) as info:
                await quiet.get_process("1" * 64, generate_prvkey())
            assert not isinstance(info.value, ColoniesOutcomeUnknown)

    run(scenario())


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[ColoniesClient]:
    """A client (0.5 s timeout) of a server that reads every request and never answers."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100000)
        await asyncio.sleep(10)

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    client = ColoniesClient("127.0.0.1", listener.sockets[0].getsockname()[1], timeout=0.5)
    try:
        yield client
    finally:
        await client.close()
        listener.close()


def test_request_timeout_is_unavailable() -> None:
    async def scenario() -> None:
        async with silent_server() as client:
            with pytest.raises(ColoniesUnavailable, match="no reply"):
                await client.version()

    run(scenario())
