"""Each process runs exactly once, through the faults that lost or repeated work (issue 9).

Through the test server, which behaves like the real one here (test_colonies_server_model.py):
a job removed and added again, a run longer than the server's stale-executor duration, a daemon
SIGKILLed mid-run, output faster than the server takes logs, replies lost on the way back.
"""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from taskmasterd.colonies.client import ColoniesClient, func_spec
from taskmasterd.colonies.crypto import generate_prvkey
from tests.support.colonies_fixtures import COLONY_NAME, daemon_options, open_colony
from tests.support.colonies_server import ServerThread
from tests.support.colonies_state import APPROVED, FAILED, RUNNING, SUCCESS, UNREGISTERED, go_time_ns
from tests.support.colonies_world import PIDFILE_THEN_SLEEP, job, world
from tests.support.daemon import Daemon, pid_alive, wait_for
from tests.support.supervised import eventually, run

LINES, LINE = 4096, 1024  # 4 MiB
FAST_WRITER = [sys.executable, "-c", f"import sys\nfor i in range({LINES}): sys.stdout.write(f'{{i:06d}}' + 'x' * {LINE - 7} + '\\n')"]


def test_a_removed_job_added_again_is_the_same_executor(tmp_path: Path) -> None:
    jobs = {"again": job(["echo", "back"])}

    async def scenario() -> None:
        # The real server's default: a name is never given to another id, even once removed.
        async with world(tmp_path, jobs, allow_reregister=False) as w:
            first = await w.polling("again")
            spec = (tmp_path / "jobs" / "again.tm.json").read_bytes()
            assert (await w.sup.delete("again")).ok

            def state() -> int:  # as the server has it
                return w.server.state.executors[(COLONY_NAME, first["executor"])]["state"]

            await eventually(lambda: state() == UNREGISTERED, what="the executor removed on the server")
            await eventually(lambda: "again" not in w.bridge._leaving, what="the executor retired")
            assert (await w.sup.push("again", spec)).ok
            again = await w.polling("again")
            assert again["executorid"] == first["executorid"] and again["error"] is None
            assert state() == APPROVED
            done = await w.ended(await w.submit("again"))
            assert done["state"] == SUCCESS and done["out"] == ["back\n"]

    run(scenario())


def test_a_run_of_three_stale_durations_succeeds_having_run_once(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    jobs = {"long": job(["sh", "-c", 'echo "$1" >> "$0"; sleep "$2"; echo "finished $1"', str(runs)])}

    async def scenario() -> None:
        async with world(tmp_path, jobs, stale_executor_duration=1.0, cleanup_interval=0.1) as w:
            await w.polling("long")
            long = await w.submit("long", args=["long", 3], maxexectime=-1)
            await w.reach(long, RUNNING)
            # The one slot is busy: the executor stays alive without taking this one.
            short = await w.submit("long", args=["short", 0], maxexectime=-1)
            done = await w.ended(long, timeout=30)
            assert done["state"] == SUCCESS, done
            assert done["out"] == ["finished long\n"] and done["retries"] == 0
            after = await w.ended(short)
            assert after["state"] == SUCCESS and after["retries"] == 0
            assert go_time_ns(after["starttime"]) >= go_time_ns(done["endtime"])
            assert runs.read_text() == "long\nshort\n"
            executors = await w.client.get_executors(COLONY_NAME, w.colony.user_prvkey)
            assert {e["executorname"]: e["state"] for e in executors}[w.executor("long")["executor"]] == APPROVED

    run(scenario())


def test_sigkill_mid_run_then_restart_closes_the_process_failed(tmp_path: Path) -> None:
    user_prvkey = generate_prvkey()

    async def submit(port: int) -> str:
        async with ColoniesClient("127.0.0.1", port) as client:
            spec = func_spec("run", COLONY_NAME, "sleeper", args=[str(tmp_path / "child.pid")], maxexectime=-1)
            return (await client.submit(spec, user_prvkey))["processid"]

    async def process(port: int, processid: str) -> dict:
        async with ColoniesClient("127.0.0.1", port) as client:
            return await client.get_process(processid, user_prvkey)

    thread = ServerThread()
    with thread as server:
        thread.call(open_colony(server.port, user_prvkey))
        options = daemon_options(tmp_path, server.port)
        jobs = {"sleeper": job(PIDFILE_THEN_SLEEP)}

        def polling(d: Daemon) -> bool:
            return d.status("sleeper")["jobs"][0]["colonies"]["state"] == "polling"

        first = Daemon(tmp_path, jobs, **options).start()
        try:
            wait_for(lambda: polling(first), what="sleeper polling")
            processid = thread.call(submit(server.port))
            child = wait_for(lambda: (tmp_path / "child.pid").exists() and (tmp_path / "child.pid").read_text().strip(),
                             what="the run's child")
            assert thread.call(process(server.port, processid))["state"] == RUNNING
            # Mid-run: the daemon has its child in a cgroup of the run's own (or, without cgroups,
            # journaled): contained like an instance, so the next daemon finds it.
            def recorded() -> bool:
                journal = tmp_path / "state" / "children.json"
                with open(f"/proc/{child}/cgroup") as cgroups:
                    cell = cgroups.read()
                return ("/taskmasterd-" in cell and "/sleeper.colonies." in cell) \
                    or (journal.exists() and child in journal.read_text())
            wait_for(recorded, what="the child recorded")
        finally:
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait()
        with Daemon(tmp_path, jobs, **options):
            failed = wait_for(lambda: (p := thread.call(process(server.port, processid)))["state"] == FAILED and p,
                              timeout=10, what="the orphaned process closed failed")
            assert "taskmasterd lost this process" in failed["errors"][0]
            assert not pid_alive(int(child))


@pytest.mark.parametrize("log_delay", [0.0, 0.02], ids=["fast-server", "slow-server"])
def test_four_mib_in_a_fraction_of_a_second_arrive_whole_in_the_logs(tmp_path: Path, log_delay: float) -> None:
    jobs = {"chatty": job(FAST_WRITER)}
    expected = "".join(f"{i:06d}" + "x" * (LINE - 7) + "\n" for i in range(LINES))

    async def scenario() -> None:
        async with world(tmp_path, jobs) as w:
            # 64 messages of 64 KiB at 20 ms each: the program must wait for the logs.
            w.server.reply_delays["addlogmsg"] = log_delay
            await w.polling("chatty")
            done = await w.ended(await w.submit("chatty", maxexectime=-1), timeout=60)
            assert done["state"] == SUCCESS
            logs = await w.logs(done["processid"])
            assert len(logs) == len(expected) and logs == expected
            # `out` keeps the last 64 KiB of stdout, and says how much came before it.
            out = done["out"][0]
            assert out == f"[{len(expected) - 65536} earlier bytes are in the logs]\n" + expected[-65536:]

    run(scenario())


def test_kwargs_reach_the_command_as_options(tmp_path: Path) -> None:
    jobs = {"words": job(["sh", "-c", 'printf "%s\\n" "$@"', "sh"])}

    async def scenario() -> None:
        async with world(tmp_path, jobs) as w:
            await w.polling("words")
            kwargs = {"name": "two words", "n": 3, "ratio": 0.5, "tag": ["a", "b"], "empty": ""}
            done = await w.ended(await w.submit("words", args=["positional"], kwargs=kwargs))
            assert done["state"] == SUCCESS, done
            assert done["out"] == ["positional\n--empty=\n--n=3\n--name=two words\n--ratio=0.5\n--tag=a\n--tag=b\n"]
            for bad, why in (({"flag": True}, "'flag'"), ({"a=b": "x"}, "'a=b'"), ({"deep": {"x": 1}}, "'deep'")):
                done = await w.ended(await w.submit("words", kwargs=bad))
                assert done["state"] == FAILED and "kwarg" in done["errors"][0] and why in done["errors"][0], done

    run(scenario())


def test_a_lost_assign_reply_is_reconciled_and_lost_log_and_close_replies_are_not_resent(tmp_path: Path) -> None:
    jobs = {"echo": job(["sh", "-c", 'echo "hello $1"', "sh"])}

    async def scenario() -> None:
        async with world(tmp_path, jobs) as w:
            await w.polling("echo")
            # The server assigns the process, and the reply never arrives.
            w.server.lose_replies["assignprocessmsg"] = 1
            orphan = await w.submit("echo", args=["never"], maxexectime=-1)
            done = await w.ended(orphan, timeout=15)
            assert done["state"] == FAILED and "taskmasterd lost this process" in done["errors"][0]
            assert await w.logs(orphan) == ""
            await w.polling("echo")
            # A log and a close are done by the server, their replies lost: neither is sent twice.
            w.server.lose_replies.update(["addlogmsg", "closesuccessfulmsg"])
            done = await w.ended(await w.submit("echo", args=["once"], maxexectime=-1))
            assert done["state"] == SUCCESS and done["out"] == ["hello once\n"]
            assert await w.logs(done["processid"]) == "hello once\n"
            assert not w.server.lose_replies["addlogmsg"] and not w.server.lose_replies["closesuccessfulmsg"]

    run(scenario())


def test_one_assign_in_flight_per_free_slot(tmp_path: Path) -> None:
    jobs = {"wide": job(PIDFILE_THEN_SLEEP, colonies={"maxconcurrent": 3})}

    async def scenario() -> None:
        async with world(tmp_path, jobs) as w:
            executorid = (await w.polling("wide"))["executorid"]
            held = w.server.state.held_assigns
            await eventually(lambda: held[executorid] == 3, what="three long-polls held")
            first = await w.submit("wide", args=[str(tmp_path / "1.pid")], maxexectime=-1)
            await w.reach(first, RUNNING)
            await eventually(lambda: held[executorid] == 2, what="a long-poll per free slot")
            others = [await w.submit("wide", args=[str(tmp_path / f"{i}.pid")], maxexectime=-1) for i in (2, 3)]
            for processid in others:
                await w.reach(processid, RUNNING)
            await eventually(lambda: w.executor("wide")["state"] == "running", what="every slot busy")
            assert held[executorid] == 0 and w.executor("wide")["running"] == 3

    run(scenario())


def test_executortype_change_is_applied_or_refused_clearly(tmp_path: Path) -> None:
    jobs = {"typed": job(["echo", "typed"], colonies={"executortype": "old"})}
    changed = json.dumps(job(["echo", "typed"], colonies={"executortype": "new"})).encode()

    for reregister in (True, False):
        async def scenario() -> None:
            async with world(tmp_path / str(reregister), jobs, allow_reregister=reregister) as w:
                name = (await w.polling("typed"))["executor"]
                assert (await w.sup.push("typed", changed)).ok
                if reregister:
                    await eventually(lambda: w.executor("typed").get("executortype") == "new"
                                     and w.executor("typed")["state"] == "polling", what="the new type")
                    found = await w.client.get_executor(COLONY_NAME, name, w.colony.user_prvkey)
                    assert found["executortype"] == "new" and found["state"] == APPROVED
                    done = await w.ended(await w.submit("new"))
                    assert done["state"] == SUCCESS and done["out"] == ["typed\n"]
                else:
                    await eventually(lambda: w.executor("typed")["state"] == "error", what="the change refused")
                    error = w.executor("typed")["error"]
                    assert "registered as type 'old'" in error and "cannot become type 'new'" in error
                    found = await w.client.get_executor(COLONY_NAME, name, w.colony.user_prvkey)
                    assert found["executortype"] == "old"

        run(scenario())


def test_location_from_the_daemon_or_the_job_file(tmp_path: Path) -> None:
    jobs = {"here": job(["echo", "here"]), "there": job(["echo", "there"], colonies={"location": "lab"})}

    async def scenario() -> None:
        async with world(tmp_path, jobs, location="home") as w:
            for name, location in (("here", "home"), ("there", "lab")):
                executor = await w.polling(name)
                assert executor["location"] == location
                found = await w.client.get_executor(COLONY_NAME, executor["executor"], w.colony.user_prvkey)
                assert found["locationname"] == location
            spec = func_spec("run", COLONY_NAME, "there", maxexectime=-1)
            spec["conditions"]["locationname"] = "Lab"
            done = await w.ended((await w.client.submit(spec, w.colony.user_prvkey))["processid"])
            assert done["state"] == SUCCESS and done["out"] == ["there\n"]

    run(scenario())
