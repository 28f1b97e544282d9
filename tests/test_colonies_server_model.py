"""The test server behaves like the real v1.9.12 server where executors can lose or repeat work.

Each behaviour is read from the real server's source (cited at the code in
tests/support/colonies_state.py and colonies_units.py): stale-executor removal and its requeue
without a retry, name reuse refused and approve-by-name restoring, cpu/memory/location matching,
and the process history of one executor.
"""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskmasterd.colonies.client import ColoniesClient, ColoniesError, func_spec
from taskmasterd.colonies.crypto import derive_id, generate_prvkey
from tests.support.colonies_fixtures import COLONY_NAME, EXECUTOR_TYPE, Colony, run, serve_colony
from tests.support.colonies_state import APPROVED, RUNNING, UNREGISTERED, WAITING
from tests.support.colonies_units import QuantityError, cpu_millis, memory_bytes


def spec(**conditions: Any) -> dict[str, Any]:
    made = func_spec("echo", COLONY_NAME, EXECUTOR_TYPE, maxexectime=-1)
    made["conditions"].update(conditions)
    return made


async def executor_state(client: ColoniesClient, col: Colony, name: str) -> dict[str, Any]:
    found = {e["executorname"]: e for e in await client.get_executors(COLONY_NAME, col.user_prvkey)}
    return found[name]


async def add_approved(client: ColoniesClient, col: Colony, name: str, **extra: Any) -> str:
    prvkey = generate_prvkey()
    await client.add_executor(COLONY_NAME, name, EXECUTOR_TYPE, derive_id(prvkey), col.colony_prvkey, **extra)
    await client.approve_executor(COLONY_NAME, name, col.colony_prvkey)
    return prvkey


def test_go_quantity_parsing() -> None:
    assert cpu_millis("500m") == 500 and cpu_millis("-1m") == -1 and cpu_millis("0m") == 0
    assert cpu_millis("2") == 0 and cpu_millis("") == 0  # no "m": 0, silently, as in Go
    with pytest.raises(QuantityError, match="Error converting CPU to int"):
        cpu_millis("1.5m")
    assert memory_bytes("") == 0 and memory_bytes("1Gi") == 1 << 30 and memory_bytes("-1Mi") == -(1 << 20)
    assert memory_bytes("3MB") == 3_000_000 and memory_bytes("2Kb") == 2000
    for bad in ("12", "1.5Gi", "xMi"):
        with pytest.raises(QuantityError, match="error converting memory to int"):
            memory_bytes(bad)


def test_stale_executor_is_removed_and_its_process_requeued_without_a_retry() -> None:
    async def scenario() -> None:
        async with serve_colony(stale_executor_duration=0.5, cleanup_interval=0.05) as (server, client, col):
            exe, user = col.executor_prvkey, col.user_prvkey
            silent = await client.submit(spec(), user)
            assert (await client.assign(COLONY_NAME, -1, exe))["processid"] == silent["processid"]
            await client.add_function(COLONY_NAME, col.executor_name, "echo", exe)
            # Never heard from (no assign yet): not stale, however long it waits.
            idle_key = await add_approved(client, col, "never-polled")
            # Keeps sending assigns that can take nothing: alive, and its process stays RUNNING.
            busy_key = await add_approved(client, col, "busy")
            busy = await client.submit(spec(executornames=["busy"]), user)
            assert (await client.assign(COLONY_NAME, -1, busy_key))["processid"] == busy["processid"]

            async def keep_alive() -> None:
                while True:
                    assert await client.assign(COLONY_NAME, -1, busy_key, availablecpu="-1m") is None
                    await asyncio.sleep(0.1)

            alive = asyncio.create_task(keep_alive())
            await asyncio.sleep(1.5)  # three stale durations
            alive.cancel()

            assert (await executor_state(client, col, col.executor_name))["state"] == UNREGISTERED
            requeued = await client.get_process(silent["processid"], user)
            assert requeued["state"] == WAITING and requeued["retries"] == 0 and not requeued["isassigned"]
            assert requeued["assignedexecutorid"] == ""
            assert await client.get_functions(COLONY_NAME, user, executorname=col.executor_name) == []
            with pytest.raises(ColoniesError) as refused:
                await client.assign(COLONY_NAME, -1, exe)
            assert refused.value.status == 403
            # The removed executor still sees itself (and the colony's executors) with its own key.
            assert (await executor_state(client, col, "busy"))["state"] == APPROVED
            assert (await client.get_process(busy["processid"], user))["state"] == RUNNING
            assert (await executor_state(client, col, "never-polled"))["state"] == APPROVED
            assert derive_id(idle_key) == (await executor_state(client, col, "never-polled"))["executorid"]
            seen = await client.get_executors(COLONY_NAME, exe)
            assert {e["executorname"] for e in seen} == {col.executor_name, "never-polled", "busy"}

    run(scenario())


def test_removal_requeues_name_reuse_is_refused_and_approve_restores() -> None:
    async def scenario() -> None:
        async with serve_colony(allow_reregister=False) as (server, client, col):
            exe, user = col.executor_prvkey, col.user_prvkey
            process = await client.submit(spec(), user)
            await client.assign(COLONY_NAME, -1, exe)
            await client.remove_executor(COLONY_NAME, col.executor_name, col.colony_prvkey)
            back = await client.get_process(process["processid"], user)
            assert back["state"] == WAITING and back["retries"] == 0
            for key in (generate_prvkey(), exe):  # a new id, or even the same one: the name is known
                with pytest.raises(ColoniesError) as refused:
                    await client.add_executor(COLONY_NAME, col.executor_name, EXECUTOR_TYPE, derive_id(key),
                                              col.colony_prvkey)
                assert refused.value.status == 400 and "already exists" in refused.value.message
            await client.approve_executor(COLONY_NAME, col.executor_name, col.colony_prvkey)
            restored = await executor_state(client, col, col.executor_name)
            assert restored["state"] == APPROVED and restored["executorid"] == col.executor_id
            assert (await client.assign(COLONY_NAME, -1, exe))["processid"] == process["processid"]

    run(scenario())


def test_reregistration_when_allowed_replaces_and_requeues() -> None:
    async def scenario() -> None:
        async with serve_colony() as (server, client, col):
            exe, user = col.executor_prvkey, col.user_prvkey
            process = await client.submit(spec(), user)
            await client.assign(COLONY_NAME, -1, exe)
            again = await client.add_executor(COLONY_NAME, col.executor_name, "new-type", col.executor_id,
                                              col.colony_prvkey)
            assert again["state"] == 0 and again["executortype"] == "new-type"
            assert (await client.get_process(process["processid"], user))["state"] == WAITING

    run(scenario())


def test_assignment_matches_cpu_memory_and_location() -> None:
    async def scenario() -> None:
        async with serve_colony() as (server, client, col):
            exe, user = col.executor_prvkey, col.user_prvkey
            sized = await client.submit(spec(cpu="500m", mem="1Gi"), user)
            for cpu, mem in (("100m", "2Gi"), ("1000m", "512Mi"), ("-1m", "")):
                assert await client.assign(COLONY_NAME, -1, exe, availablecpu=cpu, availablemem=mem) is None
            got = await client.assign(COLONY_NAME, -1, exe, availablecpu="500m", availablemem="1Gi")
            assert got["processid"] == sized["processid"]
            plain = await client.submit(spec(), user)
            # Nothing a submitter writes by default needs less than -1m or -1Mi.
            assert await client.assign(COLONY_NAME, -1, exe, availablecpu="-1m") is None
            assert await client.assign(COLONY_NAME, -1, exe, availablemem="-1Mi") is None
            assert (await client.assign(COLONY_NAME, -1, exe))["processid"] == plain["processid"]
            for cpu, mem, message in (("xm", "", "Error converting CPU to int"), ("", "12", "converting memory")):
                with pytest.raises(ColoniesError) as bad:
                    await client.assign(COLONY_NAME, -1, exe, availablecpu=cpu, availablemem=mem)
                assert bad.value.status == 400 and message in bad.value.message
            with pytest.raises(ColoniesError) as bad_spec:
                await client.submit(spec(mem="lots"), user)
            assert bad_spec.value.status == 400

            lab_key = await add_approved(client, col, "in-lab", locationname="Lab")
            elsewhere = await client.submit(spec(locationname="attic"), user)
            lab = await client.submit(spec(locationname="lab"), user)
            assert (await client.assign(COLONY_NAME, -1, lab_key))["processid"] == lab["processid"]
            assert await client.assign(COLONY_NAME, -1, lab_key) is None
            assert await client.assign(COLONY_NAME, -1, exe) is None  # no location: only unplaced work
            assert (await client.get_process(elsewhere["processid"], user))["state"] == WAITING

    run(scenario())


def test_process_history_of_one_executor() -> None:
    async def scenario() -> None:
        async with serve_colony() as (server, client, col):
            exe, user = col.executor_prvkey, col.user_prvkey
            other_key = await add_approved(client, col, "other")
            first = await client.submit(spec(), user)
            await client.assign(COLONY_NAME, -1, exe)
            await client.submit(spec(executornames=["other"]), user)
            await client.assign(COLONY_NAME, -1, other_key)
            second = await client.submit(spec(), user)
            await client.assign(COLONY_NAME, -1, exe)
            await client.submit(spec(), user)  # waiting, not ours
            mine = await client.get_process_hist(COLONY_NAME, RUNNING, exe, executorid=col.executor_id)
            assert [p["processid"] for p in mine] == [first["processid"], second["processid"]]
            assert len(await client.get_process_hist(COLONY_NAME, RUNNING, user)) == 3
            assert await client.get_process_hist(COLONY_NAME, RUNNING, exe, executorid=col.executor_id,
                                                 seconds=0) == []

    run(scenario())


def test_blueprints_are_kept_and_reconciled_as_the_real_server_does() -> None:
    """Seen on the real server (v1.9.12): the generation is what was sent (none: 0) and grows by
    one per change of the spec; an update stores the status it is sent; adding, changing and
    removing queue a process for the handler (reconcile, reconcile, cleanup, with kwargs kind and
    blueprintName); a change by the colony owner queues none; an empty list is null."""
    from taskmasterd.colonies.blueprint_schema import definition

    async def scenario() -> None:
        async with serve_colony() as (server, client, col):
            user, owner = col.user_prvkey, col.colony_prvkey
            with pytest.raises(ColoniesError, match="not colony owner"):
                await client.add_blueprint_definition(definition(COLONY_NAME, "rec"), user)
            await client.add_blueprint_definition(definition(COLONY_NAME, "rec"), owner)
            with pytest.raises(ColoniesError) as twice:
                await client.add_blueprint_definition(definition(COLONY_NAME, "rec"), owner)
            assert twice.value.status == 500 and "duplicate key" in twice.value.message
            assert await client.rpc("getblueprintsmsg", {"namespace": COLONY_NAME, "kind": "TaskmasterJob"}, user) is None
            doc = {"kind": "TaskmasterJob", "metadata": {"name": "web", "colonyname": COLONY_NAME},
                   "spec": {"hosts": ["*"], "job": {"cmd": "a"}}}
            added = await client.add_blueprint(doc, user)
            assert "generation" not in added["metadata"] and "status" not in added
            with pytest.raises(ColoniesError) as again:
                await client.add_blueprint(doc, user)
            assert again.value.status == 409
            await client.update_blueprint_status(COLONY_NAME, "web", {"hosts": {"h": {"n": 1}}}, user)
            shown = await client.get_blueprint(COLONY_NAME, "web", user)
            assert shown["status"] == {"hosts": {"h": {"n": 1}}}
            changed = await client.update_blueprint({**shown, "spec": {"hosts": ["*"], "job": {"cmd": "b"}}}, user)
            assert changed["metadata"]["generation"] == 1 and changed["status"] == shown["status"]
            same = await client.update_blueprint({k: v for k, v in changed.items() if k != "status"}, user)
            assert same["metadata"]["generation"] == 1 and "status" not in same  # no status sent: none kept
            await client.update_blueprint({**same, "spec": {"hosts": ["*"], "job": {"cmd": "c"}}}, owner)
            assert (await client.get_blueprint(COLONY_NAME, "web", user))["metadata"]["generation"] == 2
            await client.remove_blueprint(COLONY_NAME, "web", user)
            queued = await client.get_processes(COLONY_NAME, WAITING, user, executortype="rec")
            assert [(p["spec"]["funcname"], p["spec"]["kwargs"], p["initiatorname"]) for p in queued] == [
                ("reconcile", {"kind": "TaskmasterJob", "blueprintName": "web"}, "alice"),  # added
                ("reconcile", {"kind": "TaskmasterJob", "blueprintName": "web"}, "alice"),  # changed by a member
                ("cleanup", {"kind": "TaskmasterJob", "blueprintName": "web"}, "alice"),  # removed
            ]
            assert all(p["spec"]["maxexectime"] == -1 for p in queued)

    run(scenario())
