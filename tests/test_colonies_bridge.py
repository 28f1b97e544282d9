"""The ColonyOS bridge end to end: real processes, the test server on 127.0.0.1, a user submitting.

Most scenarios run a Supervisor and the bridge in this process; the last one runs the real daemon
with pycolonies, the official SDK, as the user.
"""
from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import orjson

from taskmasterd.observe import counters

from taskmasterd.colonies.crypto import derive_id, generate_prvkey
from tests.support.colonies_fixtures import COLONY_NAME, COLONY_PRVKEY, daemon_options, make_colony, open_colony
from tests.support.colonies_server import ColoniesTestServer, ServerThread
from tests.support.colonies_state import CANCELLED, FAILED, RUNNING, SUCCESS, UNREGISTERED
from tests.support.colonies_world import PIDFILE_THEN_SLEEP, World, job, wait_pid, world
from tests.support.daemon import Daemon, pid_alive, wait_for
from tests.support.supervised import eventually, run


def test_run_success_failure_logs_registration_and_unserved(tmp_path: Path) -> None:
    jobs = {
        "echo": job(["sh", "-c", 'echo "$GREETING $*"; echo "to stderr" >&2', "sh"], env={"GREETING": "job"}),
        "fail": job(["sh", "-c", 'echo "line one" >&2; echo "boom $1" >&2; exit 3', "sh"], exitcodes=[0, 1]),
        "missing": job(["/nonexistent/program"]),
    }

    before = dict(counters.colonies_processes)

    async def scenario() -> None:
        async with world(tmp_path, jobs) as w:
            executor = await w.polling("echo")
            assert executor["executor"] == f"echo.{os.uname().nodename}" and executor["executortype"] == "echo"
            pid = await w.submit("echo", args=["world", 42, 1.5], env={"GREETING": "hi"})
            done = await w.ended(pid)
            assert done["state"] == SUCCESS, done
            assert done["out"] == ["hi world 42 1.5\n"]
            logs = await w.logs(pid)
            assert "hi world 42 1.5\n" in logs and "to stderr\n" in logs

            pid = await w.submit("fail", args=["now"])
            done = await w.ended(pid)
            assert done["state"] == FAILED
            assert done["errors"] == ["exited with code 3", "line one", "boom now"]

            done = await w.ended(await w.submit("missing"))
            assert done["errors"] == ["spawn error: no such file or directory: /nonexistent/program"]
            done = await w.ended(await w.submit("echo", args=[{"not": "a word"}]))
            assert done["state"] == FAILED and "neither a string nor a number" in done["errors"][0]

            pid = await w.submit("echo", funcname="kill")
            done = await w.ended(pid)
            assert done["state"] == FAILED and "'kill' is not served" in done["errors"][0]

            # Registered as the contract says: functions, capabilities, a private key file.
            user = w.colony.user_prvkey
            functions = await w.client.get_functions(COLONY_NAME, user, executorname=executor["executor"])
            assert sorted(f["funcname"] for f in functions) == ["restart", "run", "start", "status", "stop"]
            registered = await w.client.get_executor(COLONY_NAME, executor["executor"], user)
            assert registered["state"] == 1 and registered["executorid"] == executor["executorid"]
            assert registered["capabilities"]["hardware"][0]["cores"] >= 1
            keyfile = tmp_path / "state" / "colonies" / "echo.key"
            assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
            prvkey = json.loads(keyfile.read_text())["prvkey"]
            assert derive_id(prvkey) == executor["executorid"]
            assert prvkey not in orjson.dumps(w.sup.status().value).decode()

    run(scenario())
    # the metrics' counter: one success (echo), four processes closed failed
    assert counters.colonies_processes["succeeded"] - before.get("succeeded", 0) == 1
    assert counters.colonies_processes["failed"] - before.get("failed", 0) == 4


def test_maxexectime_stops_the_group_and_cancel_stops_the_run(tmp_path: Path) -> None:
    jobs = {
        # Ignores SIGTERM: maxexectime must escalate to SIGKILL after stoptime, like an instance.
        "stubborn": job(["sh", "-c", 'trap "" TERM; echo $$ > "$1"; while :; do sleep 0.1; done', "sh"],
                        stoptime=0.5),
        "sleeper": job(PIDFILE_THEN_SLEEP),
    }

    async def scenario() -> None:
        # A server that never enforces deadlines itself: what happens is our doing.
        async with world(tmp_path, jobs, deadline_tick=3600) as w:
            await w.polling("stubborn")
            await w.polling("sleeper")
            slow = await w.submit("stubborn", args=[str(tmp_path / "stubborn.pid")], maxexectime=1, maxretries=0)
            cancelled = await w.submit("sleeper", args=[str(tmp_path / "sleeper.pid")])
            stubborn_pid = await wait_pid(tmp_path / "stubborn.pid")
            sleeper_pid = await wait_pid(tmp_path / "sleeper.pid")

            await w.client.cancel_process(cancelled, w.colony.user_prvkey)
            await eventually(lambda: not pid_alive(sleeper_pid), what="the cancelled run's child to go")
            assert (await w.process(cancelled))["state"] == CANCELLED

            done = await w.ended(slow)
            assert done["state"] == FAILED
            assert done["errors"][0] == "maximum execution time of 1 s exceeded; the command was stopped (killed by SIGKILL)"
            assert not pid_alive(stubborn_pid)
            await eventually(lambda: w.executor("sleeper")["running"] == 0, what="the slot to free")

    run(scenario())


def test_control_functions_act_on_the_supervised_job(tmp_path: Path) -> None:
    jobs = {"svc": job("sleep 300", starttime=0, stoptime=1)}

    async def scenario() -> None:
        async with world(tmp_path, jobs) as w:
            await w.polling("svc")
            instance = w.sup.jobs["svc"].instances[0]

            async def call(funcname: str) -> dict[str, Any]:
                done = await w.ended(await w.submit("svc", funcname=funcname))
                assert done["state"] == SUCCESS, done
                return json.loads(done["out"][0])["jobs"][0]

            status = await call("start")
            assert status["state"] == "RUNNING" and status["instances"][0]["pid"] == instance.child.pid
            assert status["colonies"]["executortype"] == "svc"
            first = instance.child.pid
            status = await call("restart")
            assert status["state"] == "RUNNING" and instance.child.pid != first and not pid_alive(first)
            assert (await call("status"))["instances"][0]["pid"] == instance.child.pid
            status = await call("stop")
            assert status["state"] == "STOPPED" and instance.child is None

    run(scenario())


def test_server_restart_mid_run_then_fresh_server(tmp_path: Path) -> None:
    jobs = {"slow": job(["sh", "-c", 'sleep 1; echo "done $1"', "sh"])}

    async def scenario() -> None:
        async with world(tmp_path, jobs) as w:
            await w.polling("slow")
            pid = await w.submit("slow", args=["first"])
            await w.reach(pid, RUNNING)
            port, state = w.server.port, w.server.state
            await w.server.stop()
            await eventually(lambda: w.executor("slow")["state"] == "offline", what="the executor offline")
            assert "unreachable" in w.executor("slow")["error"]
            # The server comes back with its state: the run's close goes through after backoff.
            w.server = ColoniesTestServer()
            w.server.state = state
            await w.server.start("127.0.0.1", port)
            done = await w.ended(pid)
            assert done["state"] == SUCCESS and done["out"] == ["done first\n"]
            await w.polling("slow")

            # A fresh server (its data lost): the operator recreates the colony, we re-register.
            await w.server.stop()
            w.server = ColoniesTestServer()
            await w.server.start("127.0.0.1", port)
            w.colony = await make_colony(w.client)
            done = await w.ended(await w.submit("slow", args=["again"]))
            assert done["state"] == SUCCESS and done["out"] == ["done again\n"]
            assert w.executor("slow")["error"] is None

    run(scenario())


def test_preregistered_key_without_colony_key_and_colonies_false(tmp_path: Path) -> None:
    jobs = {
        "pre": job(["echo", "pre-registered"], colonies={"executorname": "pre-exec", "functions": ["run"]}),
        "nokey": job(["true"]),
        "off": job(["true"], colonies=False),
    }
    prvkey = generate_prvkey()

    async def register_by_hand(w: World) -> None:
        # What an operator does with `colonies executor add --approve`, then the key file.
        await w.client.add_executor(COLONY_NAME, "pre-exec", "pre", derive_id(prvkey), COLONY_PRVKEY)
        await w.client.approve_executor(COLONY_NAME, "pre-exec", COLONY_PRVKEY)
        keys = tmp_path / "state" / "colonies"
        keys.mkdir(parents=True)
        (keys / "pre.key").write_text(prvkey + "\n")

    async def scenario() -> None:
        async with world(tmp_path, jobs, colony_key=False, before_open=register_by_hand) as w:
            executor = await w.polling("pre")
            assert executor["executorid"] == derive_id(prvkey) and executor["executor"] == "pre-exec"
            done = await w.ended(await w.submit("pre"))
            assert done["state"] == SUCCESS and done["out"] == ["pre-registered\n"]
            await eventually(lambda: w.executor("nokey")["state"] == "error", what="nokey in error")
            assert "no executor key" in w.executor("nokey")["error"]
            assert w.executor("off") == {} and "off" not in w.bridge.executors
            names = {e["executorname"] for e in await w.client.get_executors(COLONY_NAME, w.colony.user_prvkey)}
            assert names == {w.colony.executor_name, "pre-exec"}
            assert (tmp_path / "state" / "colonies" / "pre.key").read_text().strip() == prvkey

    run(scenario())


def test_job_removal_removes_the_executor_keeps_its_key_and_shutdown_fails_runs(tmp_path: Path) -> None:
    jobs = {"gone": job(PIDFILE_THEN_SLEEP), "stays": job(PIDFILE_THEN_SLEEP)}
    keys = tmp_path / "state" / "colonies"

    async def scenario() -> None:
        async with world(tmp_path, jobs) as w:
            gone = (await w.polling("gone"))["executor"]
            stays = (await w.polling("stays"))["executor"]
            removed = await w.submit("gone", args=[str(tmp_path / "gone.pid")])
            interrupted = await w.submit("stays", args=[str(tmp_path / "stays.pid")])
            gone_pid = await wait_pid(tmp_path / "gone.pid")
            stays_pid = await wait_pid(tmp_path / "stays.pid")

            assert (await w.sup.delete("gone")).response == "success"
            done = await w.ended(removed)
            assert done["state"] == FAILED
            assert done["errors"][0] == "the job was removed from taskmasterd; the command was stopped (killed by SIGTERM)"
            assert not pid_alive(gone_pid)
            await eventually(lambda: "gone" not in w.bridge._leaving, what="the executor retired")
            executors = {e["executorname"]: e for e in await w.client.get_executors(COLONY_NAME, w.colony.user_prvkey)}
            assert executors[gone]["state"] == UNREGISTERED
            assert (keys / "gone.key").exists()  # kept: the job added again is the same executor

            await w.bridge.close()
            done = await w.process(interrupted)
            assert done["state"] == FAILED
            assert done["errors"][0] == "taskmasterd is shutting down; the command was stopped (killed by SIGTERM)"
            assert not pid_alive(stays_pid)
            executors = {e["executorname"]: e for e in await w.client.get_executors(COLONY_NAME, w.colony.user_prvkey)}
            assert executors[stays]["state"] == 1 and (keys / "stays.key").exists()

    run(scenario())


def test_daemon_with_pycolonies_user_and_no_key_leak(tmp_path: Path) -> None:
    from pycolonies import Colonies
    from pycolonies import func_spec as py_func_spec

    user_prvkey = generate_prvkey()

    thread = ServerThread()
    with thread as server:
        thread.call(open_colony(server.port, user_prvkey))
        jobs = {"env": job(["env"]), "bad": job(["sh", "-c", "echo nope >&2; exit 2"])}
        with Daemon(tmp_path, jobs, **daemon_options(tmp_path, server.port)) as d:
            wait_for(lambda: d.status("env")["jobs"][0]["colonies"]["state"] == "polling", what="env polling")
            colonies = Colonies("127.0.0.1", server.port, tls=False)
            spec = py_func_spec(func="run", args=["-u", "NOTHING"], colonyname=COLONY_NAME, executortype="env")
            spec.env = {"FROM_USER": "yes"}
            process = colonies.submit_func_spec(spec, user_prvkey)
            done = colonies.wait(process, 20, user_prvkey)
            assert done.state == SUCCESS
            out = done.output[0]
            assert "FROM_USER=yes" in out and f"COLONIES_PROCESS_ID={process.processid}" in out
            assert "PRVKEY" not in out and COLONY_PRVKEY not in out
            logs = colonies.get_process_log(COLONY_NAME, process.processid, 100, 0, user_prvkey)
            assert "FROM_USER=yes" in "".join(entry["message"] for entry in logs)

            bad = colonies.submit_func_spec(
                py_func_spec(func="run", args=[], colonyname=COLONY_NAME, executortype="bad"), user_prvkey)
            failed = wait_for(lambda: (p := colonies.get_process(bad.processid, user_prvkey)).state == FAILED and p,
                              what="bad failed")
            assert failed.errors == ["exited with code 2", "nope"]
            status_text = json.dumps(d.status())
            assert COLONY_PRVKEY not in status_text
            keys = {json.loads(p.read_text())["prvkey"] for p in (tmp_path / "state" / "colonies").iterdir()}
            assert len(keys) == 2
        stderr = d.stderr()
        assert "registered in colony dev" in stderr
        assert not any(key in stderr for key in (*keys, COLONY_PRVKEY))


def test_taken_name_reload_and_bounded_output(tmp_path: Path) -> None:
    jobs = {
        "taken": job(["true"], colonies={"executorname": "someone-else"}),
        "svc": job(["sh", "-c", "yes 0123456789 | head -n 200000"], colonies={"functions": ["run"]}),
    }

    async def squat(w: World) -> None:
        await w.client.add_executor(COLONY_NAME, "someone-else", "x", derive_id(generate_prvkey()), COLONY_PRVKEY)

    async def scenario() -> None:
        async with world(tmp_path, jobs, before_open=squat, allow_reregister=False) as w:
            await eventually(lambda: "is taken" in (w.executor("taken")["error"] or ""), what="taken reported")
            assert w.executor("taken")["state"] == "error"
            assert not (tmp_path / "state" / "colonies" / "taken.key").exists()

            # 2.2 MB of output: `out` keeps a bounded tail, the logs carry the rest.
            executor = await w.polling("svc")
            done = await w.ended(await w.submit("svc"))
            assert done["state"] == SUCCESS
            out = done["out"][0]
            assert out.startswith("[") and "earlier bytes are in the logs]\n" in out and len(out) < 70_000
            assert out.endswith("0123456789\n0123456789\n")
            assert 100_000 < len(await w.logs(done["processid"])) <= 2_200_000

            user = w.colony.user_prvkey
            svc = {"cmd": ["true"], "autostart": False, "colonies": {"functions": ["run", "status"]}}
            assert (await w.sup.push("svc", json.dumps(svc).encode())).ok
            done = await w.ended(await w.submit("svc", funcname="status"))
            assert done["state"] == SUCCESS
            functions = await w.client.get_functions(COLONY_NAME, user, executorname=executor["executor"])
            assert sorted(f["funcname"] for f in functions) == ["run", "status"]

            assert (await w.sup.push("svc", json.dumps({**svc, "colonies": False}).encode())).ok
            assert w.executor("svc") == {}

            async def unregistered() -> bool:
                found = await w.client.get_executors(COLONY_NAME, user)
                return any(e["executorname"] == executor["executor"] and e["state"] == UNREGISTERED for e in found)

            deadline = asyncio.get_running_loop().time() + 10
            while not await unregistered():
                assert asyncio.get_running_loop().time() < deadline, "executor still registered"
                await asyncio.sleep(0.05)

    run(scenario())
