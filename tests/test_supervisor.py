"""Supervision rules on real processes and files, with the Supervisor in this process."""
import asyncio
import os
import signal
import time

from taskmasterd.lifecycle.states import State

from .support.daemon import pid_alive, write_job
from .support.supervised import eventually, reach, run, supervised

S = State
SLEEP = {"cmd": "sleep 300", "starttime": 0}


def pids(sup, name):
    return [inst.child.pid if inst.child else None for inst in sup.jobs[name].instances]


def test_start_stop_kill_and_redundant(tmp_path):
    async def scenario():
        async with supervised(tmp_path, {"s": {**SLEEP, "numprocs": 2, "autostart": False}}) as sup:
            assert sup.status("s").value["jobs"][0]["state"] == "STOPPED"
            assert (await sup.start("s")).response == "success"
            assert (await sup.start("s")).response == "redundant"
            assert all(i["state"] == "RUNNING" and i["pid"] for i in sup.status("s").value["jobs"][0]["instances"])
            old = pids(sup, "s")
            assert (await sup.stop("s")).response == "success"
            assert not any(pid_alive(p) for p in old)
            assert (await sup.stop("s")).response == "redundant"
            await sup.start("s")
            assert (await sup.kill("s")).response == "success"
            assert [i.state for i in sup.jobs["s"].instances] == [S.STOPPED, S.STOPPED]
            assert sup.jobs["s"].instances[0].signal == signal.SIGKILL
            assert (await sup.start("nope")).error == 'job "nope" does not exist'

    run(scenario())


def test_instance_killed_by_hand_is_restarted(tmp_path):
    async def scenario():
        async with supervised(tmp_path, {"s": SLEEP}) as sup:
            inst = sup.jobs["s"].instances[0]
            old = inst.child.pid
            os.kill(old, signal.SIGKILL)
            # EXITED -> STARTING -> RUNNING happen in one callback with starttime 0
            await asyncio.wait_for(inst.wait_until(lambda i: i.restarts == 1 and i.state is S.RUNNING), 30)
            assert inst.child.pid != old and inst.restarts == 1

    run(scenario())


def test_program_that_never_starts_backs_off_then_fatal(tmp_path):
    async def scenario():
        async with supervised(tmp_path, {"bad": {"cmd": "sh -c 'exit 1'", "starttime": 5, "startretries": 2}}) as sup:
            inst = sup.jobs["bad"].instances[0]
            failed_at = []
            for count in (1, 2, 3):
                await asyncio.wait_for(inst.wait_until(lambda i: i.failures >= count), 30)
                failed_at.append(time.monotonic())
            assert inst.state is S.FATAL
            assert failed_at[1] - failed_at[0] >= 0.9 and failed_at[2] - failed_at[1] >= 1.9  # 1 s, then 2 s
            assert "gave up after 3 attempts" in inst.description
            assert (await sup.start("bad")).response == "fail"
            missing = await sup.push("missing", b'{"cmd":"/no/such/program","startretries":0}')
            assert missing.response == "fail" and "no such file" in missing.error

    run(scenario())


def test_repair_restarts_fatal_and_leaves_running_alone(tmp_path):
    async def scenario():
        flag = tmp_path / "ok"
        job = {"cmd": ["sh", "-c", f"test -e {flag} && exec sleep 300"], "starttime": 0.3, "startretries": 0}
        async with supervised(tmp_path, {"r": job, "s": SLEEP}) as sup:
            inst = sup.jobs["r"].instances[0]
            await reach(inst, S.FATAL)
            flag.touch()
            assert (await sup.repair("r")).response == "success"
            assert inst.state is S.RUNNING
            pid = sup.jobs["s"].instances[0].child.pid
            assert (await sup.repair("s")).response == "redundant"
            assert sup.jobs["s"].instances[0].child.pid == pid

    run(scenario())


def test_stop_and_kill_leave_no_survivor_in_the_group(tmp_path):
    # The instance starts a grandchild that ignores SIGTERM and writes its pid down.
    script = "trap '' TERM; sh -c 'trap \"\" TERM; echo $$ > {f}; exec sleep 300' & wait"

    async def scenario():
        for verb in ("stop", "kill"):
            pidfile = tmp_path / f"{verb}.pid"
            job = {"cmd": ["sh", "-c", script.format(f=pidfile)], "starttime": 0, "stoptime": 0.5}
            async with supervised(tmp_path / verb, {"g": job}) as sup:
                grandchild = int(await eventually(lambda: pidfile.exists() and pidfile.read_text().strip()))
                assert pid_alive(grandchild)
                assert (await getattr(sup, verb)("g")).response == "success"
                await eventually(lambda: not pid_alive(grandchild), 5, "grandchild gone")

    run(scenario())


def test_output_is_captured_rotated_and_reopened(tmp_path):
    async def scenario():
        job = {"cmd": ["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x; echo err >&2; exec sleep 300"],
               "starttime": 0, "logmaxbytes": 100000, "logbackups": 5}
        async with supervised(tmp_path, {"big": job}) as sup:
            out = tmp_path / "logs" / "big.0.out"
            err = tmp_path / "logs" / "big.0.err"
            files = lambda: [out, *(out.with_name(f"big.0.out.{n}") for n in range(1, 6))]  # noqa: E731
            await eventually(lambda: sum(f.stat().st_size for f in files() if f.exists()) == 300000, 20, "300 kB")
            assert all(f.stat().st_size <= 100000 for f in files() if f.exists())
            assert out.with_name("big.0.out.2").exists()
            await eventually(lambda: err.exists() and err.read_text() == "err\n")
            os.rename(err, tmp_path / "rotated.err")
            sup.reopen_logs()
            assert err.exists() and err.stat().st_size == 0

    run(scenario())


def test_discarded_output_and_child_environment(tmp_path):
    async def scenario():
        workdir = tmp_path / "wd"
        workdir.mkdir()
        job = {"cmd": ["sh", "-c", "echo $TASKMASTER_INSTANCE $GREETING ${COLONIES_COLONY_PRVKEY:-none} "
                                   "$(pwd) $(umask) > out.$TASKMASTER_INSTANCE; echo gone"],
               "numprocs": 2, "starttime": 0, "autorestart": "never", "env": {"GREETING": "hi"},
               "workingdir": str(workdir), "umask": "027", "stdout": None}
        environ = {**os.environ, "COLONIES_COLONY_PRVKEY": "secret", "COLONIES_PRVKEY": "secret"}
        async with supervised(tmp_path, {"e": job}, environ=environ):
            for index in (0, 1):
                line = await eventually(lambda: (workdir / f"out.{index}").exists() and
                                        (workdir / f"out.{index}").read_text().strip())
                assert line == f"{index} hi none {workdir} 0027"
            assert not (tmp_path / "logs" / "e.0.out").exists()

    run(scenario())


def test_reload_rules(tmp_path):
    async def scenario():
        async with supervised(tmp_path, {"w": {**SLEEP, "numprocs": 2}}, watch=False) as sup:
            jobs = tmp_path / "jobs"
            before = pids(sup, "w")
            assert (await sup.reload("w")).response == "redundant"
            write_job(jobs, "w", {**SLEEP, "numprocs": 2, "stoptime": 3, "autorestart": "always"})
            assert (await sup.reload("w")).response == "success"
            assert pids(sup, "w") == before and sup.jobs["w"].spec.stoptime == 3
            write_job(jobs, "w", {**SLEEP, "numprocs": 3, "stoptime": 3, "autorestart": "always"})
            assert (await sup.reload("w")).response == "success"
            await reach(sup.jobs["w"].instances[2], S.RUNNING)
            assert pids(sup, "w")[:2] == before
            write_job(jobs, "w", {**SLEEP, "numprocs": 1, "stoptime": 3, "autorestart": "always"})
            await sup.reload("w")
            assert pids(sup, "w") == before[:1]
            await eventually(lambda: not pid_alive(before[1]))
            write_job(jobs, "w", {**SLEEP, "numprocs": 1, "env": {"X": "1"}})
            assert (await sup.reload("w")).response == "success"
            assert pids(sup, "w")[0] != before[0] and not pid_alive(before[0])
            write_job(jobs, "w", '{"cmd": ')
            reply = await sup.reload("w")
            assert reply.response == "fail" and "invalid JSON" in reply.error
            assert sup.jobs["w"].instances[0].state is S.RUNNING
            assert "invalid JSON" in sup.status("w").value["jobs"][0]["error"]
            os.unlink(jobs / "w.tm.json")
            assert (await sup.reload("w")).response == "success" and "w" not in sup.jobs
            assert (await sup.reload("w")).response == "fail"

    run(scenario())


def test_jobs_directory_is_watched(tmp_path):
    async def scenario():
        async with supervised(tmp_path, {"keep": SLEEP}) as sup:
            jobs = tmp_path / "jobs"
            keep_pid = pids(sup, "keep")[0]
            write_job(jobs, "new", SLEEP)
            await eventually(lambda: "new" in sup.jobs and sup.jobs["new"].instances[0].state is S.RUNNING)
            write_job(jobs, "new", {**SLEEP, "env": {"A": "1"}})
            first = pids(sup, "new")[0]
            await eventually(lambda: pids(sup, "new")[0] not in (None, first), what="restart on edit")
            write_job(jobs, "new", "{ broken")
            await eventually(lambda: sup.jobs["new"].error, what="error shown")
            assert sup.jobs["new"].instances[0].state is S.RUNNING
            os.rename(jobs / "new.tm.json", jobs / "renamed.tm.json")
            await eventually(lambda: "new" not in sup.jobs and "renamed" in sup.invalid, what="rename seen")
            write_job(jobs, "renamed", SLEEP)
            await eventually(lambda: "renamed" in sup.jobs)
            os.unlink(jobs / "renamed.tm.json")
            await eventually(lambda: "renamed" not in sup.jobs, what="removal seen")
            # A slow writer: the file is never read before it is complete.
            with open(jobs / "slow.tm.json", "w") as slow:
                slow.write('{"cmd": "sleep 300",')
                slow.flush()
                await asyncio.sleep(0.3)
                assert "slow" not in sup.jobs and "slow" not in sup.invalid
                slow.write(' "starttime": 0}')
            await eventually(lambda: "slow" in sup.jobs)
            (jobs / ".slow.tm.json.swp").write_text("junk")
            (jobs / "notes.txt").write_text("junk")
            await asyncio.sleep(0.2)
            assert set(sup.jobs) == {"keep", "slow"} and not sup.invalid
            assert pids(sup, "keep") == [keep_pid]

    run(scenario())


def test_push_pull_delete(tmp_path):
    async def scenario():
        async with supervised(tmp_path, {}) as sup:
            path = tmp_path / "jobs" / "p.tm.json"
            bad = await sup.push("p", b'{"cmd": "sleep 1", "numprocs": 0}')
            assert bad.response == "fail" and 'field "numprocs"' in bad.error and not path.exists()
            body = b'{"cmd": "sleep 300", "starttime": 0}\n'
            assert (await sup.push("p", body)).response == "success"
            assert path.read_bytes() == body and sup.jobs["p"].instances[0].state is S.RUNNING
            assert sup.pull("p").data == body
            assert [p.name for p in (tmp_path / "jobs").iterdir()] == ["p.tm.json"]  # no temp file left
            pid = pids(sup, "p")[0]
            assert (await sup.delete("p")).response == "success"
            assert not path.exists() and "p" not in sup.jobs and not pid_alive(pid)
            assert (await sup.delete("p")).response == "fail"
            assert sup.list().value == {"jobs": []}

    run(scenario())


def test_restart_verb_reports_invalid_files_and_applies_the_rest(tmp_path):
    async def scenario():
        async with supervised(tmp_path, {"a": SLEEP}, watch=False) as sup:
            write_job(tmp_path / "jobs", "b", SLEEP)
            write_job(tmp_path / "jobs", "c", {"cmd": "x", "stopsignal": "NOPE"})
            reply = await sup.reload_all()
            assert reply.response == "fail" and "c.tm.json" in reply.error and "stopsignal" in reply.error
            assert set(sup.jobs) == {"a", "b"}
            assert {j["name"]: j["state"] for j in sup.status().value["jobs"]}["c"] == "INVALID"

    run(scenario())


def test_a_jobs_user_is_looked_up_once_per_version_of_the_job(tmp_path, monkeypatch):
    """A name service may be slow (LDAP) and the lookup ran on the loop at every spawn: now once
    per version of the job, for its environment and its ids alike."""
    if os.geteuid() != 0:
        import pytest

        pytest.skip("needs root (user: nobody)")
    import taskmasterd.lifecycle.supervisor as job_module

    lookups = []
    real = job_module.lookup_account
    monkeypatch.setattr(job_module, "lookup_account", lambda user: lookups.append(user) or real(user))
    spec = {"cmd": ["sleep", "300"], "user": "nobody", "starttime": 0, "numprocs": 5, "stdout": None, "stderr": None}

    async def scenario():
        async with supervised(tmp_path, {"as_nobody": spec}, watch=False) as sup:
            job = sup.jobs["as_nobody"]
            for inst in job.instances:
                await reach(inst, S.RUNNING)
                # setpriv(1) takes the ids in the child, a moment after the spawn (same pid)
                await eventually(lambda: os.stat(f"/proc/{inst.child.pid}").st_uid == 65534, what="its user")
            assert lookups == ["nobody"]
            await sup.kill("as_nobody")
            assert (await sup.start("as_nobody")).response == "success"
            assert lookups == ["nobody"]
            write_job(tmp_path / "jobs", "as_nobody", {**spec, "env": {"V": "2"}})
            await sup.reload("as_nobody")
            for inst in job.instances:
                await reach(inst, S.RUNNING)
            assert lookups == ["nobody", "nobody"]

    run(scenario())


def test_a_verb_on_many_instances_is_handled_a_bounded_number_per_loop_iteration(tmp_path):
    """A start of 1000 instances was one callback of 30-60 ms: every other request waited for
    it. A job's queue is handled a bounded number of events per loop iteration, in order."""
    from taskmasterd.lifecycle.job import EVENTS_PER_TURN
    from taskmasterd.lifecycle.states import Kind

    async def scenario():
        spec = {"cmd": "sleep 300", "starttime": 0, "numprocs": 600, "autostart": False, "stdout": None, "stderr": None}
        async with supervised(tmp_path, {"many": spec}) as sup:
            job = sup.jobs["many"]
            answers = job.command(Kind.START, "start command")
            handled = sum(inst.state is not State.STOPPED for inst in job.instances)
            assert handled <= EVENTS_PER_TURN < len(job.instances)
            assert all(await asyncio.gather(*(answer for _, answer in answers)))
            await eventually(lambda: all(inst.state is State.RUNNING for inst in job.instances), 60)
            job.stop_all()  # the same for a stop: in order, none lost
            await job.wait_stopped()
            assert all(inst.state is State.STOPPED for inst in job.instances)

    run(scenario())
