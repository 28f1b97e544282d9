"""depends_on in the supervisor, with real processes: starts held until every dependency meets its
condition (running, healthy, completed), what status shows meanwhile, requests answered, cycles
refused, and dependants stopped before what they depend on."""
import asyncio
import time

from taskmasterd.jobfiles.check import problems_in
from taskmasterd.lifecycle.states import State
from taskmasterd.control.verbs import Request, dispatch

from .support.daemon import Daemon, free_port, pid_alive, wait_for, write_job
from .support.supervised import eventually, reach, run, supervised

S = State
SLEEP = {"cmd": "sleep 300", "starttime": 0}
LISTEN_LATE = "import socket, sys, time; time.sleep(float(sys.argv[2])); " \
              "s = socket.create_server(('127.0.0.1', int(sys.argv[1]))); time.sleep(300)"


def stamped(path, then: str = "exec sleep 300") -> list[str]:
    """A command that writes the time it started (or was stopped) to `path` before `then`."""
    return ["sh", "-c", f'date +%s.%N > "$1"; {then}', "sh", str(path)]


def stamp(path) -> float:
    return float(path.read_text())


async def stamp_of(path) -> float:
    """Once the program has written it."""
    await eventually(lambda: path.exists() and path.read_text().endswith("\n"), what=f"{path.name} written")
    return stamp(path)


def proc_start_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as src:
        return int(src.read().rpartition(")")[2].split()[19])


def test_a_dependant_starts_only_once_its_dependency_is_running(tmp_path):
    async def scenario():
        jobs = {"a": {"cmd": stamped(tmp_path / "a"), "starttime": 1},
                "b": {"cmd": stamped(tmp_path / "b"), "starttime": 0, "depends_on": ["a"]}}
        async with supervised(tmp_path, jobs) as sup:
            a, b = sup.jobs["a"].instances[0], sup.jobs["b"].instances[0]
            entry = sup.status("b").value["jobs"][0]
            assert entry["state"] == "WAITING" and entry["instances"][0]["description"] == "waiting for a (running)"
            assert b.child is None and not (tmp_path / "b").exists()
            await reach(b, S.RUNNING)
            assert a.state is S.RUNNING
            a_running_since = a.since
            assert await stamp_of(tmp_path / "a") + 1 <= a_running_since + 0.05  # RUNNING after its starttime…
            assert await stamp_of(tmp_path / "b") >= a_running_since  # …and only then did b's program begin
            assert proc_start_ticks(b.child.pid) >= proc_start_ticks(a.child.pid)

    run(scenario())


def test_condition_healthy_waits_for_the_first_passing_check(tmp_path):
    async def scenario():
        port = free_port()
        check = {"tcp": f"127.0.0.1:{port}", "start_interval": 0.1, "interval": 30, "start_period": 20}
        jobs = {"db": {"cmd": ["python3", "-c", LISTEN_LATE, str(port), "1"], "starttime": 0, "healthcheck": check},
                "web": {"cmd": stamped(tmp_path / "web"), "starttime": 0,
                        "depends_on": [{"job": "db", "condition": "healthy"}]}}
        async with supervised(tmp_path, jobs) as sup:
            db, web = sup.jobs["db"].instances[0], sup.jobs["web"].instances[0]
            await reach(db, S.RUNNING)
            await asyncio.sleep(0.3)  # RUNNING, checked, refused: not healthy yet
            assert db.health.checker.last.detail == "tcp connect refused"
            assert web.state is S.WAITING and web.description == "waiting for db (healthy)"
            await reach(web, S.RUNNING)
            assert db.health.checker.state == "healthy"
            assert await stamp_of(tmp_path / "web") >= db.health.checker.last_check

    run(scenario())


def test_condition_completed_waits_for_a_one_shot_setup_job(tmp_path):
    async def scenario():
        marker = tmp_path / "migrated"
        jobs = {"migrate": {"cmd": ["sh", "-c", f"sleep 0.5; touch {marker}"], "starttime": 0, "autorestart": "never"},
                # fails to start (FATAL) if it is run before the setup job is done
                "app": {"cmd": ["sh", "-c", f"test -e {marker} && exec sleep 300"], "starttime": 0.3, "startretries": 0,
                        "depends_on": [{"job": "migrate", "condition": "completed"}]}}
        async with supervised(tmp_path, jobs) as sup:
            app = sup.jobs["app"].instances[0]
            assert app.description == "waiting for migrate (completed)"
            await reach(app, S.RUNNING, S.FATAL)
            assert app.state is S.RUNNING
            assert sup.jobs["migrate"].instances[0].state is S.EXITED

    run(scenario())


def test_a_start_is_answered_when_it_started_or_was_stopped_and_missing_jobs_are_waited_for(tmp_path):
    async def scenario():
        jobs = {"a": {**SLEEP, "starttime": 0.3, "autostart": False},
                "b": {**SLEEP, "autostart": False, "depends_on": ["a"]},
                "c": {**SLEEP, "depends_on": ["later", "a"]}}
        async with supervised(tmp_path, jobs, watch=False) as sup:
            b, c = sup.jobs["b"].instances[0], sup.jobs["c"].instances[0]
            assert c.description == "waiting for later (not loaded), a (running)"
            # a is not coming by itself: answered at once, and b waits on
            answer = await asyncio.wait_for(sup.start("b"), 5)
            assert answer.response == "fail" and answer.error == "waiting for a (STOPPED): start it too, or use --nowait"
            assert b.state is S.WAITING
            again = await sup.start("b")  # still not redundant while what it waits for is not coming
            assert again.response == "fail" and again.error == answer.error
            assert (await sup.start("b", nowait=True)).response == "redundant"  # it does wait
            assert (await sup.stop("b")).response == "success"
            assert b.state is S.STOPPED
            # a is on its way: the start of b is answered once b runs, or was stopped
            assert (await sup.start("a", nowait=True)).response == "success"
            first = asyncio.create_task(sup.start("b"))
            await reach(b, S.WAITING)
            assert (await sup.stop("b")).response == "success"
            answer = await asyncio.wait_for(first, 5)
            assert answer.response == "fail" and "stopped before it was running" in answer.error
            second = asyncio.create_task(sup.start("b"))
            assert (await asyncio.wait_for(second, 5)).response == "success" and b.state is S.RUNNING
            assert c.state is S.WAITING and c.description == "waiting for later (not loaded)"
            assert (await sup.push("later", b'{"cmd": "sleep 300", "starttime": 0}')).response == "success"
            await reach(c, S.RUNNING)

    run(scenario())


def test_a_cycle_is_refused_with_its_names_and_the_other_jobs_keep_running(tmp_path):
    async def scenario():
        jobs = {"a": {**SLEEP, "depends_on": ["b"]}, "b": SLEEP}
        async with supervised(tmp_path, jobs, watch=False) as sup:
            await reach(sup.jobs["a"].instances[0], S.RUNNING)
            pids = {name: sup.jobs[name].instances[0].child.pid for name in ("a", "b")}
            pushed = await sup.push("b", b'{"cmd": "sleep 300", "depends_on": ["a"]}')
            assert pushed.response == "fail"
            assert pushed.error.endswith('b.tm.json: field "depends_on": a cycle: b -> a -> b')
            assert b'"depends_on"' not in (tmp_path / "jobs" / "b.tm.json").read_bytes()  # never written
            write_job(tmp_path / "jobs", "b", {**SLEEP, "depends_on": ["c"]})
            write_job(tmp_path / "jobs", "c", {**SLEEP, "depends_on": ["a"]})
            reply = await sup.reload_all()  # in name order: b (waits for c, not loaded yet), then c
            assert reply.response == "fail"
            assert reply.error.endswith('c.tm.json: field "depends_on": a cycle: c -> a -> b -> c')
            assert [(entry["job"], entry["change"]) for entry in reply.value["changes"]] == [
                ("a", "unchanged"), ("b", "applied"), ("c", "invalid")]
            assert sup.status("c").value["jobs"][0]["state"] == "INVALID"
            assert {name: sup.jobs[name].instances[0].child.pid for name in ("a", "b")} == pids
            self_cycle = await sup.push("d", b'{"cmd": "sleep 300", "depends_on": ["d"]}')
            assert self_cycle.response == "fail" and self_cycle.error.endswith("a cycle: d -> d")

    run(scenario())


def test_a_cycle_among_the_files_at_start_up_refuses_the_file_that_closes_it(tmp_path):
    async def scenario():
        jobs = {"x": {**SLEEP, "depends_on": ["y"]}, "y": {**SLEEP, "depends_on": ["x"]}, "z": SLEEP}
        async with supervised(tmp_path, jobs, watch=False) as sup:
            assert set(sup.jobs) == {"x", "z"}  # loaded in name order: y closes the cycle
            assert sup.invalid["y"].endswith('y.tm.json: field "depends_on": a cycle: y -> x -> y')
            assert sup.jobs["x"].instances[0].description == "waiting for y (not loaded)"

    run(scenario())


def layered_jobs(tmp_path) -> dict[str, dict]:
    """db <- web <- workers, and an independent batch; each writes the time it got SIGTERM."""
    def job(name, *depends_on):
        return {"cmd": ["sh", "-c", """trap 'date +%s.%N > "$1"; exit 0' TERM; sleep 300 & wait""", "sh",
                        str(tmp_path / f"{name}.stop")],
                "starttime": 0, "stoptime": 5, "depends_on": list(depends_on)}

    return {"db": job("db"), "web": job("web", "db"), "workers": {**job("workers", "web"), "numprocs": 2},
            "batch": job("batch")}


def trap_set(pid: int) -> bool:
    """The layered job's shell forks its sleep after setting its TERM trap: signalled before that,
    it would die without writing its stamp (starttime 0 makes it RUNNING at once)."""
    with open(f"/proc/{pid}/task/{pid}/children") as src:
        return bool(src.read().split())


def stop_order(tmp_path) -> list[str]:
    return sorted(("db", "web", "workers", "batch"), key=lambda name: stamp(tmp_path / f"{name}.stop"))


def test_stop_of_several_jobs_stops_dependants_first_and_independent_jobs_together(tmp_path):
    async def scenario():
        async with supervised(tmp_path, layered_jobs(tmp_path), watch=False) as sup:
            for name in ("db", "web", "workers", "batch"):
                for instance in sup.jobs[name].instances:
                    await reach(instance, S.RUNNING)
                    await eventually(lambda: trap_set(instance.child.pid), what=f"{name}'s trap set")
            db_pid = sup.jobs["db"].instances[0].child.pid
            reply = await dispatch(sup, "stop", Request(job="db web workers:1 workers batch nope"))
            assert reply.response == "fail" and reply.error == 'nope: job "nope" does not exist'
            assert [(t["target"], t["response"]) for t in reply.value["targets"]] == [
                ("db", "success"), ("web", "success"), ("workers", "success"), ("batch", "success")]
            order = stop_order(tmp_path)
            assert order.index("workers") < order.index("web") < order.index("db")
            assert order.index("batch") < order.index("web")  # in the first layer, with workers
            assert not pid_alive(db_pid)
            assert (await dispatch(sup, "stop", Request(job="db web"))).response == "redundant"
            assert (await dispatch(sup, "start", Request(job="db web"))).response == "success"
            db, web = sup.jobs["db"].instances[0], sup.jobs["web"].instances[0]
            assert (await dispatch(sup, "kill", Request(job="d* w*"))).response == "success"
            assert db.state is web.state is S.STOPPED and web.signal == db.signal == 9 and web.since <= db.since

    run(scenario())


def test_daemon_shutdown_stops_dependants_before_their_dependencies(tmp_path):
    daemon = Daemon(tmp_path, layered_jobs(tmp_path)).start()
    try:
        deadline = time.monotonic() + 20
        while not all(i["state"] == "RUNNING" for name in ("db", "web", "workers") for i in daemon.instances(name)):
            assert time.monotonic() < deadline, daemon.status()
            time.sleep(0.05)
        assert daemon.instances("workers")[0]["since"] >= daemon.instances("web")[0]["since"]
        for name in ("db", "web", "workers"):
            for instance in daemon.instances(name):
                wait_for(lambda: trap_set(instance["pid"]), 10, what=f"{name}'s trap set")
    finally:
        assert daemon.stop() == 0
    order = stop_order(tmp_path)
    assert order.index("workers") < order.index("web") < order.index("db")


def test_status_over_the_wire_says_what_a_job_waits_for(tmp_path):
    with Daemon(tmp_path, {"web": {**SLEEP, "depends_on": [{"job": "db", "condition": "healthy"}, "cache"]},
                           "db": {**SLEEP, "autostart": False}}) as daemon:
        (instance,) = daemon.instances("web")
        assert instance["state"] == "WAITING" and instance["pid"] is None
        assert instance["description"] == "waiting for db (healthy), cache (not loaded)"
        reply = daemon.request("start", "db")
        assert reply["response"] == "success"
        write_job(daemon.jobs_dir, "cache", SLEEP)  # the watcher loads it: web can go
        deadline = time.monotonic() + 20
        while daemon.instances("web")[0]["state"] != "RUNNING":
            assert time.monotonic() < deadline, daemon.instances("web")
            time.sleep(0.05)


def test_check_refuses_the_file_that_closes_a_cycle_as_the_daemon_would(tmp_path):
    for name, deps in (("a", ["b"]), ("b", ["a"]), ("c", ["a", "b"])):
        write_job(tmp_path, name, {**SLEEP, "depends_on": deps})
    assert problems_in(str(tmp_path)) == (3, [f'{tmp_path}/b.tm.json: field "depends_on": a cycle: b -> a -> b'])
