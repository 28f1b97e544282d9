"""ColonyOS bridge benchmark (run by hand: `.venv/bin/python bench/bench_colonies.py`).

A real taskmasterd serves three jobs as executors of the in-memory test server (its own process,
on loopback); this process is the user submitting to them. Prints one table:
- processes/s through one job's executor running `true`, with maxconcurrent 1 and 8, from the
  server's own assignment and close times;
- overhead from assignment to the command's start, p50/p99: the server's assignment time against
  the clock read by `date +%s%N` as the command (so exec of `date` itself is included);
- the CPU each process costs the daemon and the server, and the control protocol's `status`
  round trip idle and while the executor runs flat out (the bridge must not slow it);
- a burst: 200 processes submitted at once to maxconcurrent 8, latency from submission to close
  p50/p99 (the server's clock), next to a plain pycolonies executor with 8 assign loops running
  the same `true` on the same server, and the ratio of the two.
`--assign-latency 0.005` makes every assign cost the server 5 ms more, as a real server's
database round trip does: the in-memory server is bound by its own CPU instead, which hides
what several assigns in flight are worth.

`--blueprints N` measures TaskmasterJob blueprints instead (issue 22's budget): three daemons
(host names bench<run>-1..3), a blueprint placed on all three changed five times (time from the
update's reply until every host runs the new generation), then N blueprints placed on the first
(time from the first add until every job runs, `status` timed meanwhile), whose daemon is then
restarted: time from its start until every job runs and every blueprint's status
on the server says so, with `status` timed every 20 ms meanwhile by a process of its own (a thread
here would share the bench's GIL; a connection refused before the daemon listens is not counted).
`--server HOST:PORT --user-key KEY` runs it against another server (a real one: colony "dev" with
the docker-compose keys, KEY a user of it).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from taskmasterd.colonies.client import ColoniesClient, func_spec  # noqa: E402
from taskmasterd.colonies.crypto import derive_id, generate_prvkey  # noqa: E402
from tests.support.colonies_fixtures import COLONY_NAME, COLONY_PRVKEY  # noqa: E402
from tests.support.colonies_server import DEFAULT_SERVER_PRVKEY  # noqa: E402
from tests.support.colonies_state import go_time_ns  # noqa: E402
from tests.support.daemon import ROOT, Daemon, wait_for  # noqa: E402

WAITING, RUNNING, SUCCESS = 0, 1, 2
QUIET = {"autostart": False, "stdout": None, "stderr": None}
BURST, LOOPS = 200, 8
PLAIN = "plain"  # the pycolonies executor's name and type


def start_server(assign_latency: float) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.colonies_server", "--port", "0",
                             "--reply-delay", f"assignprocessmsg={assign_latency}"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


async def drained(client: ColoniesClient, user: str, executortype: str) -> None:
    """Until no process of this type waits or runs."""
    while True:
        busy = [await client.get_processes(COLONY_NAME, state, user, count=1, executortype=executortype)
                for state in (WAITING, RUNNING)]
        if not any(busy):
            return
        await asyncio.sleep(0.02)


async def throughput(client: ColoniesClient, user: str, job: str, count: int) -> float:
    submitted = await asyncio.gather(*(client.submit(func_spec("run", COLONY_NAME, job), user) for _ in range(count)))
    await drained(client, user, job)
    done = [await client.get_process(p["processid"], user) for p in submitted]
    assert all(p["state"] == SUCCESS for p in done), [p["errors"] for p in done if p["state"] != SUCCESS][:3]
    first = min(go_time_ns(p["starttime"]) for p in done)
    last = max(go_time_ns(p["endtime"]) for p in done)
    # The in-memory server scans every process it holds on each assign: keep it small.
    await asyncio.gather(*(client.remove_process(p["processid"], user) for p in done))
    return count / ((last - first) / 1e9)


async def burst(client: ColoniesClient, user: str, executortype: str, count: int) -> list[float]:
    """`count` processes submitted at once; each one's latency from submission to close, ms, sorted."""
    submitted = await asyncio.gather(*(client.submit(func_spec("run", COLONY_NAME, executortype), user)
                                       for _ in range(count)))
    await drained(client, user, executortype)
    done = [await client.get_process(p["processid"], user) for p in submitted]
    assert all(p["state"] == SUCCESS for p in done), [p["errors"] for p in done if p["state"] != SUCCESS][:3]
    await asyncio.gather(*(client.remove_process(p["processid"], user) for p in done))
    return sorted((go_time_ns(p["endtime"]) - go_time_ns(p["submissiontime"])) / 1e6 for p in done)


def plain_loop(port: int, prvkey: str, stop: threading.Event) -> None:
    """The executor of pycolonies' examples: assign, run, close; one of LOOPS threads."""
    from pycolonies import Colonies

    sdk = Colonies("127.0.0.1", port, tls=False)
    while not stop.is_set():
        try:
            process = sdk.assign(COLONY_NAME, 1, prvkey)
        except Exception:  # the idle 404, as in the examples
            continue
        subprocess.run(["true"], check=False)
        sdk.close(process.processid, [], prvkey)


async def plain_burst(port: int, client: ColoniesClient, user: str) -> list[float]:
    prvkey = generate_prvkey()
    await client.add_executor(COLONY_NAME, PLAIN, PLAIN, derive_id(prvkey), COLONY_PRVKEY)
    await client.approve_executor(COLONY_NAME, PLAIN, COLONY_PRVKEY)
    stop = threading.Event()
    loops = [threading.Thread(target=plain_loop, args=(port, prvkey, stop), daemon=True) for _ in range(LOOPS)]
    for loop in loops:
        loop.start()
    try:
        await burst(client, user, PLAIN, 20)  # warm-up
        return await burst(client, user, PLAIN, BURST)
    finally:
        stop.set()
        await asyncio.gather(*(asyncio.to_thread(loop.join) for loop in loops))


async def overhead(client: ColoniesClient, user: str, job: str, count: int) -> list[float]:
    """One at a time, so each submission finds the executor idle in its long-poll."""
    delays = []
    for _ in range(count):
        process = await client.submit(func_spec("run", COLONY_NAME, job), user)
        while (done := await client.get_process(process["processid"], user))["state"] in (WAITING, RUNNING):
            await asyncio.sleep(0.002)
        assert done["state"] == SUCCESS, done["errors"]
        delays.append((int(done["out"][0]) - go_time_ns(done["starttime"])) / 1e6)
        await client.remove_process(done["processid"], user)
    return delays


def status_latencies(daemon: Daemon, seconds: float) -> list[float]:
    """Round trips (ms) of the control protocol's `status` for `seconds`, sorted."""
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        daemon.request("status", "true8")
        times.append((time.perf_counter() - began) * 1000)
    return sorted(times)


def p99(times: list[float]) -> float:
    return times[int(len(times) * 0.99) - 1]


def percentiles(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} / {p99(times):.2f} ms"


async def measure(port: int, user: str, count: int, samples: int, daemon: Daemon,
                  server: psutil.Process) -> dict[str, str]:
    rows = {"control `status` p50 / p99, idle": percentiles(status_latencies(daemon, 1.0))}
    procs = psutil.Process(daemon.proc.pid), server
    async with ColoniesClient("127.0.0.1", port, max_idle=32) as client:
        for job in ("true1", "true8"):
            await throughput(client, user, job, 20)  # warm-up: connections, code paths
            cpu = [sum(p.cpu_times()[:2]) for p in procs]
            rows[f"`true`, maxconcurrent {job[4:]}"] = f"{await throughput(client, user, job, count):.0f} processes/s"
            used = [(sum(p.cpu_times()[:2]) - before) / count * 1000 for p, before in zip(procs, cpu)]
            rows[f"  CPU per process, taskmasterd / test server (mc {job[4:]})"] = f"{used[0]:.2f} / {used[1]:.2f} ms"
        # The control protocol while the executor runs flat out.
        _, loaded = await asyncio.gather(throughput(client, user, "true8", count),
                                         asyncio.to_thread(status_latencies, daemon, 1.0))
        rows["control `status` p50 / p99, during mc 8 runs"] = percentiles(loaded)
        await overhead(client, user, "clock", 10)
        delays = sorted(await overhead(client, user, "clock", samples))
        rows["assignment -> command start, p50 / p99"] = percentiles(delays)
        await burst(client, user, "true8", 20)  # warm-up
        ours = await burst(client, user, "true8", BURST)
        plain = await plain_burst(port, client, user)
        rows[f"burst of {BURST}, mc {LOOPS}: submission -> close, p50 / p99"] = percentiles(ours)
        rows[f"  plain pycolonies executor, {LOOPS} assign loops, p50 / p99"] = percentiles(plain)
        rows["  taskmasterd / plain, p50 / p99"] = (f"{statistics.median(ours) / statistics.median(plain):.2f} / "
                                                    f"{p99(ours) / p99(plain):.2f}")
        return rows


BLUEPRINT_JOB = {"cmd": ["sleep", "3600"], "user": "nobody", "colonies": False, "starttime": 0.2, "stoptime": 2,
                 "stdout": None, "stderr": None}


def blueprint_daemon(root: Path, host: str, port: int) -> Daemon:
    config = root / "taskmasterd.json"
    root.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({"colonies": {"host": "127.0.0.1", "port": port, "colony": COLONY_NAME,
                                               "blueprints": True, "hostname": host}}))
    return Daemon(root, {}, args=["--config", str(config)], env={"COLONIES_COLONY_PRVKEY": COLONY_PRVKEY})


def blueprint_jobs(daemon: Daemon) -> dict[str, dict]:
    return {job["name"]: job for job in daemon.status()["jobs"] if job["name"].startswith("colony.")}


def running(daemon: Daemon, names: list[str], generation: int) -> int:
    """How many of these blueprints' jobs run `generation` (one `status`, however many names)."""
    jobs = blueprint_jobs(daemon)
    found = [jobs.get(f"colony.{name}") for name in names]
    return sum(job is not None and (job.get("blueprint") or {}).get("generation") == generation
               and all(i["state"] == "RUNNING" for i in job["instances"]) for job in found)


def runs(daemon: Daemon, name: str, generation: int) -> bool:
    return running(daemon, [name], generation) == 1


def poll_status(port: int, every: float, control: Connection) -> None:
    """In a process of its own (the bench's threads would share its GIL): `status` round trips
    (ms) every `every` seconds until told to stop, sent back; refused connections are skipped.
    Says "ready" first, so that its own start does not load the daemon's."""
    request = json.dumps({"command": "status"}, separators=(",", ":")).encode() + b";;"
    latencies = []
    control.send("ready")
    while not control.poll(every):
        began = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(request)
                reply = b""
                while not reply.endswith(b";;"):
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        raise ConnectionError("closed before the reply's end")
                    reply += chunk
        except OSError:  # not listening yet
            continue
        latencies.append((time.perf_counter() - began) * 1000)
    control.send(latencies)


class StatusTimer:
    """`status` timed every 20 ms by poll_status in a process of its own, between start() and stop()."""

    def __init__(self, port: int) -> None:
        self._control, theirs = multiprocessing.Pipe()
        self._poller = multiprocessing.get_context("spawn").Process(target=poll_status, args=(port, 0.02, theirs))

    async def start(self) -> None:
        self._poller.start()
        await asyncio.to_thread(self._control.recv)  # "ready"

    async def stop(self) -> str:
        """p50 / p99 / max of the round trips (ms)."""
        self._control.send("stop")
        latencies = sorted(await asyncio.to_thread(self._control.recv))
        self._poller.join()
        return f"{percentiles(latencies)} / {max(latencies):.2f} ms ({len(latencies)} requests)"


async def blueprint_measure(port: int, user: str, count: int, root: Path) -> dict[str, str]:
    from taskmasterd.colonies.blueprint_schema import KIND

    rows: dict[str, str] = {}
    # Host names of this run's own: a name another daemon (an earlier run's) had is refused.
    fleet = f"bench{generate_prvkey()[:6]}"
    daemons = {host: blueprint_daemon(root / host, host, port).start() for host in (f"{fleet}-1", f"{fleet}-2", f"{fleet}-3")}
    try:
        async with ColoniesClient("127.0.0.1", port, max_idle=32) as client:
            for host, daemon in daemons.items():
                wait_for(lambda: daemon.status()["daemon"]["blueprints"]["state"] == "idle", 30, what=f"{host} idle")

            def document(name: str, hosts: list[str], env: dict[str, str] | None = None) -> dict:
                job = {**BLUEPRINT_JOB, "env": env or {}}
                return {"kind": KIND, "metadata": {"name": name, "colonyname": COLONY_NAME},
                        "spec": {"hosts": hosts, "job": job}}

            await client.add_blueprint(document(f"{fleet}-all", [f"{fleet}-*"]), user)
            wait_for(lambda: all(runs(d, f"{fleet}-all", 0) for d in daemons.values()), 30, what="the blueprint everywhere")
            changes = []
            for release in range(1, 6):
                current = await client.get_blueprint(COLONY_NAME, f"{fleet}-all", user)
                updated = await client.update_blueprint({**current, "spec": document(
                    f"{fleet}-all", [f"{fleet}-*"], {"RELEASE": str(release)})["spec"]}, user)
                began = time.monotonic()
                generation = updated["metadata"]["generation"]
                wait_for(lambda: all(runs(d, f"{fleet}-all", generation) for d in daemons.values()), 30,
                         what=f"generation {generation} everywhere")
                changes.append((time.monotonic() - began) * 1000)
            rows["a change, 3 daemons: update reply -> new generation running on all, p50 / max"] = (
                f"{statistics.median(changes):.0f} / {max(changes):.0f} ms")
            await client.remove_blueprint(COLONY_NAME, f"{fleet}-all", user)
            for daemon in list(daemons.values())[1:]:
                daemon.stop()
            host = daemons[f"{fleet}-1"]
            names = [f"{fleet}-{i:03d}" for i in range(count)]
            timer = StatusTimer(host.port)
            await timer.start()
            began = time.monotonic()
            await asyncio.gather(*(client.add_blueprint(document(name, [f"{fleet}-1"]), user) for name in names))
            await asyncio.to_thread(wait_for, lambda: running(host, names, 0) == count, 120, 0.05,
                                    f"{count} blueprints on one host")
            rows[f"{count} blueprints added: first add -> every job RUNNING"] = f"{time.monotonic() - began:.2f} s"
            rows["  control `status` during that reconciliation, p50 / p99 / max"] = await timer.stop()
            host.stop()

            async def reported() -> bool:
                found = await client.get_blueprints(COLONY_NAME, user, kind=KIND)
                mine = [doc for doc in found if doc["metadata"]["name"] in names]
                states = [((doc.get("status") or {}).get("hosts") or {}).get(f"{fleet}-1", {}).get("states") for doc in mine]
                return len(mine) == count and all(state == {"RUNNING": 1} for state in states)

            timer = StatusTimer(host.port)
            await timer.start()
            began = time.monotonic()
            host.start(wait=False)
            await asyncio.to_thread(wait_for, lambda: host.proc.poll() is None and _answers(host)
                                    and running(host, names, 0) == count, 60, 0.05, "jobs back")
            up = time.monotonic() - began
            while not await reported():
                await asyncio.sleep(0.1)
            settled = time.monotonic() - began
            meanwhile = await timer.stop()
            rows[f"{count} blueprints, daemon restarted: start -> every job RUNNING"] = f"{up:.2f} s"
            rows[f"  start -> every status on the server says so"] = f"{settled:.2f} s"
            rows["  control `status` meanwhile, p50 / p99 / max"] = meanwhile
            await asyncio.gather(*(client.remove_blueprint(COLONY_NAME, name, user) for name in names))
            wait_for(lambda: not blueprint_jobs(host), 60, what="every blueprint's job gone")
    finally:
        for daemon in daemons.values():
            daemon.stop()
    return rows


def _answers(daemon: Daemon) -> bool:
    try:
        daemon.request("status", timeout=5)
    except OSError:
        return False
    return True


async def setup(port: int, user: str) -> None:
    async with ColoniesClient("127.0.0.1", port) as client:
        await client.add_colony(derive_id(COLONY_PRVKEY), COLONY_NAME, DEFAULT_SERVER_PRVKEY)
        await client.add_user(COLONY_NAME, derive_id(user), "bench", COLONY_PRVKEY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500, help="processes per throughput run")
    parser.add_argument("--samples", type=int, default=300, help="processes timed for the overhead")
    parser.add_argument("--assign-latency", type=float, default=0.0, metavar="SECONDS",
                        help="what each assign costs the server before it answers (a real server's "
                             "database round trip; the in-memory one has none)")
    parser.add_argument("--blueprints", type=int, default=0, metavar="N",
                        help="measure N blueprints on one daemon, and a change on three, instead")
    parser.add_argument("--server", metavar="HOST:PORT", help="with --blueprints: this server, not the test server")
    parser.add_argument("--user-key", help="with --server: the private key of a user of its colony dev")
    args = parser.parse_args()
    if args.blueprints:
        return blueprints_main(args)
    server, port = start_server(args.assign_latency)
    user = generate_prvkey()
    try:
        asyncio.run(setup(port, user))
        jobs = {
            "true1": {"cmd": "true", **QUIET, "colonies": {"maxconcurrent": 1}},
            "true8": {"cmd": "true", **QUIET, "colonies": {"maxconcurrent": 8}},
            "clock": {"cmd": ["date", "+%s%N"], **QUIET},
        }
        with tempfile.TemporaryDirectory(prefix="bench-colonies-") as tmp:
            config = Path(tmp) / "taskmasterd.json"
            config.write_text(json.dumps({"colonies": {"host": "127.0.0.1", "port": port, "colony": COLONY_NAME}}))
            with Daemon(Path(tmp), jobs, args=["--config", str(config)],
                        env={"COLONIES_COLONY_PRVKEY": COLONY_PRVKEY}) as daemon:
                for job in jobs:
                    wait_for(lambda: daemon.status(job)["jobs"][0]["colonies"]["state"] == "polling", 30,
                             what=f"{job} polling")
                rows = asyncio.run(measure(port, user, args.count, args.samples, daemon, psutil.Process(server.pid)))
    finally:
        server.terminate()
        server.wait()
    rows = {"test server: extra time per assign": f"{args.assign_latency * 1000:g} ms", **rows}
    width = max(map(len, rows))
    print("\n".join(f"{name:<{width}}  {value}" for name, value in {"measure": "result", **rows}.items()))


def blueprints_main(args: argparse.Namespace) -> None:
    server = None
    if args.server:
        port, user = int(args.server.rsplit(":", 1)[1]), args.user_key
    else:
        server, port = start_server(args.assign_latency)
        user = generate_prvkey()
        asyncio.run(setup(port, user))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-blueprints-") as tmp:
            Path(tmp).chmod(0o755)  # the jobs run as nobody
            rows = asyncio.run(blueprint_measure(port, user, args.blueprints, Path(tmp)))
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    rows = {"server": args.server or "test server", **rows}
    width = max(map(len, rows))
    print("\n".join(f"{name:<{width}}  {value}" for name, value in {"measure": "result", **rows}.items()))


if __name__ == "__main__":
    main()
