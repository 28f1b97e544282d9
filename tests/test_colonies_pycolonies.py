"""pycolonies, the official SDK, used as a Colonies user would against the test server.

pycolonies is synchronous, so the server runs on a background thread; our asyncio
client plays the executor side (assign, logs, output, close).
"""

from __future__ import annotations

import threading
import time

import pytest

from taskmasterd.colonies.client import ColoniesClient
from taskmasterd.colonies.crypto import derive_id
from tests.support.colonies_fixtures import COLONY_NAME, COLONY_PRVKEY, EXECUTOR_TYPE, colonies_server_thread, run  # noqa: F401
from tests.support.colonies_server import DEFAULT_SERVER_PRVKEY, ColoniesTestServer

pycolonies = pytest.importorskip("pycolonies")


@pytest.fixture
def world(colonies_server_thread: ColoniesTestServer):  # noqa: F811
    """Colony, approved executor and user, all set up through pycolonies."""
    from crypto import Crypto  # pycolonies' top-level module

    sdk = pycolonies.Colonies("127.0.0.1", colonies_server_thread.port, tls=False)
    keys = Crypto()
    executor_key, user_key = keys.prvkey(), keys.prvkey()
    sdk.add_colony({"colonyid": derive_id(COLONY_PRVKEY), "name": COLONY_NAME}, DEFAULT_SERVER_PRVKEY)
    sdk.add_executor(
        {"executorname": "tm-exec", "executorid": keys.id(executor_key), "colonyname": COLONY_NAME, "executortype": EXECUTOR_TYPE},
        COLONY_PRVKEY,
    )
    sdk.approve_executor(COLONY_NAME, "tm-exec", COLONY_PRVKEY)
    sdk.add_user(
        {"colonyname": COLONY_NAME, "userid": keys.id(user_key), "name": "alice", "email": "a@b", "phone": ""},
        COLONY_PRVKEY,
    )
    return sdk, colonies_server_thread.port, executor_key, user_key


def execute(port: int, executor_key: str, outcome: str, delay: float = 0.3) -> dict:
    """Our client as the executor: assign one process, log, then close or fail it."""

    async def scenario() -> dict:
        async with ColoniesClient("127.0.0.1", port, timeout=10) as client:
            process = await client.assign(COLONY_NAME, 10, executor_key)
            assert process is not None
            pid = process["processid"]
            await client.add_log(pid, "hello log\n", executor_key)
            await client.add_log(pid, f"args={process['spec']['args']}\n", executor_key)
            time.sleep(delay)  # let the submitter start waiting first
            if outcome == "success":
                await client.close_successful(pid, process["spec"]["args"][:1] + [42, 1.5], executor_key)
            else:
                await client.close_failed(pid, ["exit status 3", "boom"], executor_key)
            return process

    return run(scenario())


def in_thread(target, *args) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(process=target(*args)), daemon=True)
    thread.start()
    return thread, result


def test_submit_wait_output_and_logs(world) -> None:
    sdk, port, executor_key, user_key = world
    assert [e["executorname"] for e in sdk.list_executors(COLONY_NAME, user_key)] == ["tm-exec"]
    sdk.add_function(COLONY_NAME, "tm-exec", "echo", executor_key)
    assert sdk.get_functions_by_executor(COLONY_NAME, "tm-exec", user_key)[0]["funcname"] == "echo"

    spec = pycolonies.func_spec(func="echo", args=["hi", 3], colonyname=COLONY_NAME, executortype=EXECUTOR_TYPE, maxexectime=30)
    thread, result = in_thread(execute, port, executor_key, "success")
    submitted = sdk.submit_func_spec(spec, user_key)
    started = time.monotonic()
    done = sdk.wait(submitted, 10, user_key)
    thread.join(10)
    assert time.monotonic() - started < 5
    assert result["process"]["processid"] == submitted.processid
    assert done.state == pycolonies.Colonies.SUCCESSFUL
    assert done.output == ["hi", 42, 1.5]
    assert done.spec.args == ["hi", 3]
    assert done.initiatorname == "alice"

    process = sdk.get_process(submitted.processid, user_key)
    assert process.assignedexecutorid == derive_id(executor_key)
    logs = sdk.get_process_log(COLONY_NAME, submitted.processid, 100, 0, user_key)
    assert [x["message"] for x in logs] == ["hello log\n", "args=['hi', 3]\n"]
    assert sdk.get_process_log(COLONY_NAME, submitted.processid, 100, logs[0]["timestamp"], user_key)[0]["message"].startswith("args=")
    assert [p["processid"] for p in sdk.list_processes(COLONY_NAME, 10, pycolonies.Colonies.SUCCESSFUL, user_key)] == [submitted.processid]


def test_failure_path(world) -> None:
    sdk, port, executor_key, user_key = world
    spec = pycolonies.func_spec(func="echo", args=["x"], colonyname=COLONY_NAME, executortype=EXECUTOR_TYPE, executorname="tm-exec")
    submitted = sdk.submit_func_spec(spec, user_key)
    execute(port, executor_key, "failure", delay=0)
    failed = sdk.get_process(submitted.processid, user_key)
    assert failed.state == pycolonies.Colonies.FAILED
    assert failed.errors == ["exit status 3", "boom"]
    # wait() only wakes on success; on anything else the server drops the socket at the timeout.
    started = time.monotonic()
    with pytest.raises(Exception, match="Connection to remote host was lost|closed"):
        sdk.wait(submitted, 1, user_key)
    assert 0.8 < time.monotonic() - started < 4


def test_sdk_errors_and_executor_side(world) -> None:
    sdk, port, executor_key, user_key = world
    # Every server error surfaces in pycolonies as ColoniesConnectionError with the message.
    with pytest.raises(pycolonies.ColoniesConnectionError, match="No process available for assignment"):
        sdk.assign(COLONY_NAME, 1, executor_key)
    with pytest.raises(pycolonies.ColoniesConnectionError, match="not a member"):
        sdk.submit_func_spec(pycolonies.func_spec(func="f", args=[], colonyname=COLONY_NAME, executortype=EXECUTOR_TYPE), COLONY_PRVKEY)
    # pycolonies as the executor, closing a process it was assigned.
    spec = pycolonies.func_spec(func="echo", args=["a"], colonyname=COLONY_NAME, executortype=EXECUTOR_TYPE)
    submitted = sdk.submit_func_spec(spec, user_key)
    assigned = sdk.assign(COLONY_NAME, 5, executor_key)
    assert assigned.processid == submitted.processid
    sdk.set_output(assigned.processid, ["partial"], executor_key)
    sdk.close(assigned.processid, ["a"], executor_key)
    assert sdk.get_process(assigned.processid, user_key).output == ["a"]
    sdk.remove_executor(COLONY_NAME, "tm-exec", COLONY_PRVKEY)
    with pytest.raises(pycolonies.ColoniesConnectionError, match="not a member"):
        sdk.assign(COLONY_NAME, 1, executor_key)
    assert sdk.list_executors(COLONY_NAME, user_key)[0]["state"] == 3
