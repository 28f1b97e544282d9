"""A fleet's jobs declared once: TaskmasterJob blueprints, reconciled by every daemon (issue 22).

Against the test server, which keeps blueprints as the real one does (colonies_blueprints.py).
Each daemon here is a Supervisor with its bridge under a host name of its own (colonies_fleet.py).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

from taskmasterd.colonies.blueprint_schema import DEFINITION_NAME, KIND, RECONCILER_TYPE
from taskmasterd.control.verbs import Request, dispatch
from tests.support.colonies_fixtures import COLONY_NAME
from tests.support.colonies_fleet import FLEET, daemon_host, fleet
from tests.support.supervised import eventually, run

# Blueprint jobs run as a user named in the job: by default, never as root (blueprint_users).
SLEEPER = {"cmd": ["sleep", "60"], "starttime": 0.2, "stoptime": 1, "colonies": False, "user": "nobody"}
# The resync far away: what these tests see comes from the server's processes and the wake-ups.
NO_RESYNC = dataclasses.replace(FLEET, resync_interval=600.0)


def test_a_blueprint_runs_on_every_host_it_places_follows_its_changes_and_goes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fleet(tmp_path, ["web-1", "web-2", "db-1"], timing=NO_RESYNC) as f:
            web1, web2, db1 = f.hosts["web-1"], f.hosts["web-2"], f.hosts["db-1"]
            # The first daemon with the colony key added the definition; each is a reconciler.
            definitions = f.server.state.blueprints.definitions
            assert list(definitions) == [(COLONY_NAME, DEFINITION_NAME)]
            assert definitions[(COLONY_NAME, DEFINITION_NAME)]["spec"]["names"]["kind"] == KIND
            executors = {e["executorname"]: e["executortype"] for e in f.server.state.executors.values()}
            for host in f.hosts:
                assert executors[f"{RECONCILER_TYPE}.{host}"] == RECONCILER_TYPE
                assert executors[f"{RECONCILER_TYPE}.{host}.wake"] == f"{RECONCILER_TYPE}.wake.{host}"

            await f.add("web", {**SLEEPER, "numprocs": 2}, hosts=["web-*"])
            await eventually(lambda: web1.running("web") == 2 and web2.running("web") == 2, what="web on web-*")
            assert db1.job("web") is None
            assert web1.job("web")["blueprint"] == {"name": "web", "generation": 0}
            await f.reported("web", {"web-1": {"generation": 0, "instances": 2, "states": {"RUNNING": 2}},
                                     "web-2": {"generation": 0, "instances": 2, "states": {"RUNNING": 2}}})

            # A new generation: the job's file changes, and the job follows (here: a resize).
            before = web1.pids("web")
            assert (await f.change("web", {**SLEEPER, "numprocs": 3}))["metadata"]["generation"] == 1
            await eventually(lambda: web1.running("web") == 3 and web2.running("web") == 3, timeout=5,
                             what="generation 1 on both hosts within 5 s")
            assert set(before) <= set(web1.pids("web"))  # a resize keeps the running instances
            assert web2.job("web")["blueprint"] == {"name": "web", "generation": 1}
            await f.reported("web", {"web-1": {"generation": 1, "states": {"RUNNING": 3}},
                                     "web-2": {"generation": 1, "states": {"RUNNING": 3}}})

            # Placed elsewhere: it goes from web-2, its entry too, and comes to db-1.
            await f.change("web", hosts=["web-1", "db-*"])
            await eventually(lambda: web2.job("web") is None and db1.running("web") == 3, timeout=5,
                             what="web moved from web-2 to db-1")
            await f.reported("web", {"web-1": {"generation": 2}, "db-1": {"generation": 2}})
            assert not list((web2.root / "state" / "blueprints").glob("colony.*"))

            await f.remove("web")
            await eventually(lambda: all(h.job("web") is None for h in f.hosts.values()), timeout=5,
                             what="web removed everywhere")
            assert all(not h.bridge.blueprints._jobs.manifest for h in f.hosts.values())

    run(scenario())


def test_a_bad_job_is_refused_with_the_job_file_error_and_reported(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fleet(tmp_path, ["web-1", "web-2"]) as f:
            web1 = f.hosts["web-1"]
            # The server checks types only; the daemons check the job file as they would a local one.
            await f.add("bad", {"cmd": "sleep 60", "numprocs": 0, "user": "nobody"}, hosts=["web-*"])
            status = await f.reported("bad", {"web-1": {"generation": None}, "web-2": {"generation": None}})
            for host in ("web-1", "web-2"):
                assert 'colony.bad.tm.json: field "numprocs": must be an integer ≥ 1, got 0' in status[host]["error"]
            assert web1.job("bad") is None
            # Made valid, it runs; made invalid again, the last valid version runs on, and says why.
            await f.change("bad", {**SLEEPER, "numprocs": 1})
            await f.reported("bad", {"web-1": {"generation": 1, "error": None}, "web-2": {"generation": 1, "error": None}})
            await eventually(lambda: web1.running("bad") == 1, what="the fixed job running")
            await f.change("bad", {**SLEEPER, "user": "no-such-user-here"})
            unknown_user = "field \"user\": no such user 'no-such-user-here'"
            await f.reported("bad", {host: {"generation": 1, "error": lambda e: e and unknown_user in e}
                                     for host in ("web-1", "web-2")})
            assert web1.running("bad") == 1 and web1.job("bad")["blueprint"]["generation"] == 1
            # A placement no daemon can act on is said once, for the blueprint.
            await f.add("nowhere", SLEEPER)
            await eventually(lambda: (f.server.state.blueprints.blueprints[(COLONY_NAME, "nowhere")].get("status") or {})
                             .get("error", "").startswith("spec: give hosts"), what="the placement problem reported")

    run(scenario())


def test_a_blueprints_job_is_not_pushed_or_deleted_locally_and_a_local_file_cannot_take_its_name(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fleet(tmp_path, ["web-1"]) as f:
            host = f.hosts["web-1"]
            await f.add("web", SLEEPER, hosts=["web-1"])
            await eventually(lambda: host.running("web") == 1, what="web running")
            data = json.dumps({"cmd": "true"}).encode()
            for verb, request in (("push", Request(job="colony.web", data=data)), ("delete", Request(job="colony.web"))):
                reply = await dispatch(host.sup, verb, request)
                assert not reply.ok and "comes from the ColonyOS blueprint 'web'" in reply.error
                assert "the colony owns it" in reply.error
            reply = await dispatch(host.sup, "push", Request(job="colony.other", data=data))
            assert not reply.ok and "kept for the ColonyOS blueprints" in reply.error
            assert host.running("web") == 1
            # A file of the jobs directory by that name is not a job.
            (host.root / "jobs" / "colony.web.tm.json").write_text(json.dumps({"cmd": "false"}))
            assert (await host.sup.reload_all()).ok
            assert host.job("web")["blueprint"]["name"] == "web" and host.running("web") == 1
            assert host.sup.path_of("colony.web") == str(host.root / "state" / "blueprints" / "colony.web.tm.json")
            assert host.sup.directory.names() == {"colony.web"}
            status = await dispatch(host.sup, "status", Request())  # says which file is not read, and why
            assert {"file": "colony.web.tm.json", "error": "ignored: names starting with 'colony.' are kept for the "
                    "colony's blueprints"} in status.value["ignored"]

    run(scenario())


def test_restarts_lost_replies_and_the_resync_neither_duplicate_nor_lose_a_job(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fleet(tmp_path, ["web-1", "web-2"]) as f:  # a 3 s resync
            web1 = f.hosts["web-1"]
            await f.add("web", {**SLEEPER, "numprocs": 2}, hosts=["web-*"])
            await eventually(lambda: all(h.running("web") == 2 for h in f.hosts.values()), what="web running")
            pids = {name: h.pids("web") for name, h in f.hosts.items()}
            # Replies lost on the way back: the list, a status write, a close, an assign.
            for msgtype in ("getblueprintsmsg", "updateblueprintstatusmsg", "closesuccessfulmsg", "assignprocessmsg"):
                f.server.lose_replies[msgtype] = 1
            await f.change("web", {**SLEEPER, "numprocs": 2, "env": {"GENERATION": "1"}})  # a restart
            await eventually(lambda: all(h.job("web")["blueprint"]["generation"] == 1 and h.running("web") == 2
                                         for h in f.hosts.values()), what="generation 1 despite the lost replies")
            await f.reported("web", {h: {"generation": 1, "instances": 2, "states": {"RUNNING": 2}} for h in f.hosts})
            pids = {name: h.pids("web") for name, h in f.hosts.items()}
            # Two resyncs later nothing moved: a pass changes nothing that is as it should be.
            writes = f.server.state.blueprints.status_writes
            await asyncio.sleep(2 * f.timing.resync_interval + 0.5)
            assert {name: h.pids("web") for name, h in f.hosts.items()} == pids
            assert f.server.state.blueprints.status_writes == writes
            # The daemon restarts: its job is back from its file before any call, once.
            await f.stop("web-1")
            web1 = await f.start("web-1")
            assert set(web1.sup.jobs) == {"colony.web"} and web1.job("web")["blueprint"]["generation"] == 1
            await eventually(lambda: web1.running("web") == 2 and web1.blueprints()["state"] == "idle",
                             what="web-1 back")
            assert len(web1.sup.jobs) == 1 and len(web1.job("web")["instances"]) == 2
            # The server restarts (its data kept): nothing is removed while it is away, nothing doubled after.
            await f.restart_server()
            await f.change("web", {**SLEEPER, "numprocs": 1})
            await eventually(lambda: all(h.running("web") == 1 and len(h.job("web")["instances"]) == 1
                                         for h in f.hosts.values()), what="generation 2 after the server restart")
            await f.reported("web", {h: {"generation": 2, "instances": 1} for h in f.hosts})
            assert all(set(h.sup.jobs) == {"colony.web"} for h in f.hosts.values())

    run(scenario())


def test_two_daemons_under_one_host_name_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fleet(tmp_path, ["web-1"]) as f:  # a server that re-registers names, even so
            # The twin is host web-1 too, with a state directory (and so keys) of its own.
            async with daemon_host(tmp_path / "twin", "web-1", f.server.port, f.timing) as twin:
                await eventually(lambda: any(e["state"] == "error" for e in twin.blueprints()["executors"]),
                                 what="the twin refused")
                refused = [e["error"] for e in twin.blueprints()["executors"] if e["state"] == "error"]
                assert refused and all("is taken in colony 'dev' by another key" in error
                                       and "another daemon is (or was) host 'web-1'" in error for error in refused)
                await f.add("web", SLEEPER, hosts=["web-1"])
                await eventually(lambda: f.hosts["web-1"].running("web") == 1, what="web on the real web-1")
                await asyncio.sleep(1)
                assert twin.job("web") is None

    run(scenario())


def test_without_the_colony_key_the_operators_definition_and_executors_are_used(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fleet(tmp_path, []) as f:
            host = await f.start("web-1", colony_key=False)
            await eventually(lambda: "an operator adds the TaskmasterJob blueprint definition"
                             in (host.blueprints()["error"] or ""), what="what the operator does said")
            # The operator adds the definition printed by the module, and registers the two executors.
            from taskmasterd.colonies.blueprint_schema import definition
            from taskmasterd.colonies.crypto import derive_id, generate_prvkey

            await f.client.add_blueprint_definition(definition(COLONY_NAME, "fleet-reconciler"), f.colony.colony_prvkey)
            keys = tmp_path / "web-1" / "state" / "colonies"
            keys.mkdir(mode=0o700, exist_ok=True)
            for keyname, name, executortype in (("_reconciler", "fleet-reconciler.web-1", "fleet-reconciler"),
                                                ("_reconciler.wake", "fleet-reconciler.web-1.wake",
                                                 "fleet-reconciler.wake.web-1")):
                prvkey = generate_prvkey()
                await f.client.add_executor(COLONY_NAME, name, executortype, derive_id(prvkey), f.colony.colony_prvkey)
                await f.client.approve_executor(COLONY_NAME, name, f.colony.colony_prvkey)
                (keys / f"{keyname}.key").write_text(prvkey)
                (keys / f"{keyname}.key").chmod(0o600)
            await eventually(lambda: host.blueprints()["state"] == "idle", timeout=15, what="the reconciler at work")
            await f.add("web", SLEEPER, hosts=["web-*"])
            await eventually(lambda: host.running("web") == 1, what="web running")
            await f.reported("web", {"web-1": {"generation": 0, "states": {"RUNNING": 1}}})

    run(scenario())


def test_a_blueprints_job_runs_as_root_only_where_the_daemon_allows_it(tmp_path: Path) -> None:
    as_root = {key: value for key, value in SLEEPER.items() if key != "user"}

    async def scenario() -> None:
        async with fleet(tmp_path, ["web-1"]) as f:
            host = f.hosts["web-1"]
            await f.add("root", as_root, hosts=["web-1"])
            status = await f.reported("root", {"web-1": {"error": lambda e: e and "does not run as root here" in e}})
            assert "the daemon's own user 'root' (the job names none)" in status["web-1"]["error"]
            assert host.job("root") is None
            await f.change("root", {**as_root, "user": "0"})
            await f.reported("root", {"web-1": {"error": lambda e: e and "as user '0'" in e}})
            await f.stop("web-1")
            allowing = await f.start("web-1", blueprint_users=("root",))
            await eventually(lambda: allowing.running("root") == 1, what="root allowed by blueprint_users")
            await f.reported("root", {"web-1": {"error": None, "states": {"RUNNING": 1}}})

    run(scenario())



def test_a_daemon_stopped_while_its_reconciler_starts_stops(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fleet(tmp_path, []) as f:
            for attempt in range(5):
                await f.start("web-1")
                await asyncio.sleep(0.01 * attempt)  # while it asks for the definition, or just after
                await asyncio.wait_for(f.stop("web-1"), 10)

    run(scenario())


def test_a_burst_of_changes_makes_a_few_passes_and_wake_ups_not_one_each(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fleet(tmp_path, ["web-1", "web-2"], timing=NO_RESYNC) as f:
            names = [f"burst-{i:02d}" for i in range(30)]
            await asyncio.gather(*(f.add(name, SLEEPER, hosts=["web-*"]) for name in names))
            await eventually(lambda: all(h.running(name) == 1 for h in f.hosts.values() for name in names),
                             timeout=30, what="the 30 jobs on both hosts")
            processes = f.server.state.processes.values()
            changes = [p for p in processes if p.doc["spec"]["conditions"]["executortype"] == RECONCILER_TYPE]
            wake_ups = [p for p in processes if ".wake." in p.doc["spec"]["conditions"]["executortype"]]
            assert len(changes) == 30  # one per blueprint added, from the server
            assert len(wake_ups) <= 15, len(wake_ups)  # rounds of wake-ups, not one per change (30)
            await eventually(lambda: all(p.state == 2 for p in [*changes, *wake_ups]), what="every trigger closed")

    run(scenario())
