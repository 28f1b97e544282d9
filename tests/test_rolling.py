"""Restarts nobody notices, with the real daemon, real sockets and real processes: an HTTP job of
three instances on a held socket, `ready: "notify"`, under clients making requests without a
pause through a `restart --rolling`, a file edit, a SIGHUP reload and a stop+start: not one
request fails or is refused. A rollout whose new run is not ready halts and leaves the old
instances serving."""
import contextlib
import json
import signal
import sys
import threading
import time
import urllib.request
from typing import Iterator

from .support.daemon import Daemon, free_port, wait_for, write_job
from .support import held_server
from .support.held_server import ask

SERVER = held_server.__file__


class Load:
    """Clients making HTTP requests, each on a new connection, one after the other, until stopped:
    every answer's (pid, version), and every failure."""

    def __init__(self, port: int, clients: int = 2) -> None:
        self.port = port
        self.answers: list[tuple[int, str]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        wait_for(lambda: len(self.answers) >= 10 or self.failures, what="the first answers")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                head, body = ask(self.port)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise ConnectionError(f"answer {head[:60]!r}")
                pid, version, _ = body.decode().split()
                self.answers.append((int(pid), version))
            except OSError as exc:
                self.failures.append(repr(exc))

    def versions_since(self, count: int) -> set[str]:
        return {version for _, version in self.answers[count:]}


def web(port: int, version: str, **fields) -> dict:
    return {"cmd": [sys.executable, SERVER], "numprocs": 3, "sockets": [{"listen": f"127.0.0.1:{port}"}],
            "ready": "notify", "ready_timeout": 10, "stoptime": 10, "rolling": True,
            "env": {"VERSION": version, "READY_DELAY": "0.2"}, **fields}


def events(d: Daemon) -> list[dict]:
    return json.loads(d.request("events", data=b'{"last":1000}')["data"])["events"]


def pids(d: Daemon) -> set[int]:
    return {i["pid"] for i in d.instances("web")}


def all_running(d: Daemon) -> bool:
    return all(i["state"] == "RUNNING" and "second" not in i for i in d.instances("web")) and \
        "rollout" not in d.status("web")["jobs"][0]


@contextlib.contextmanager
def serving(tmp_path, args: tuple[str, ...] = (), **fields) -> Iterator[tuple[Daemon, Load, set[int], int]]:
    """The job `web` (version 1, with `fields`) RUNNING under load: the daemon, the load, the
    instances' pids, the port. The clients' failures are checked at the end."""
    port = free_port()
    with Daemon(tmp_path, jobs={"web": web(port, "1", **fields)}, args=list(args)) as d:
        wait_for(lambda: all_running(d), what="RUNNING")
        old = pids(d)
        with Load(port) as load:
            yield d, load, old, port
        assert load.failures == [], load.failures[:5]


def rolled(d: Daemon, load: Load, old: set[int], version: str) -> None:
    """Every instance replaced, the old processes gone, and the clients answered by the new ones."""
    wait_for(lambda: all_running(d) and not pids(d) & old, timeout=60, what="every instance replaced")
    mark = len(load.answers)
    wait_for(lambda: len(load.answers) > mark + 20, what="answers from the new processes")
    assert load.versions_since(mark + 2) == {version}
    assert not {pid for pid, _ in load.answers[mark + 2:]} & old


def test_restart_rolling_of_a_single_instance_starts_the_new_one_beside_it(tmp_path):
    with serving(tmp_path, rolling=False, numprocs=1) as (d, load, old, _):
        assert d.request("restart-job", "web", rolling=True)["response"] == "success"
        rolled(d, load, old, "1")


def test_restart_rolling_replaces_every_instance_and_fails_no_request(tmp_path):
    with serving(tmp_path, rolling=False) as (d, load, old, _):
        seen: set[str] = set()
        replies: list[dict] = []
        verb = threading.Thread(target=lambda: replies.append(d.request("restart-job", "web", rolling=True)))
        verb.start()
        while verb.is_alive():  # `status` shows the rollout under way
            seen.add(d.status("web")["jobs"][0].get("rollout") or "")
            time.sleep(0.02)
        assert replies[0]["response"] == "success", replies  # answered once it is over
        assert not pids(d) & old
        rolled(d, load, old, "1")
        assert {"rolling 1/3", "rolling 2/3"} <= seen, seen
        steps = [(e["instance"], e["new"]) for e in events(d) if e["kind"] == "rollout"]
        assert steps[0] == (None, "begun") and steps[-1] == (None, "done")
        assert [index for index, step in steps if step == "ready"] == [0, 1, 2]  # one at a time, in order


def test_a_file_edit_with_rolling_true_rolls_and_fails_no_request(tmp_path):
    with serving(tmp_path) as (d, load, old, port):
        write_job(d.jobs_dir, "web", web(port, "2"))
        rolled(d, load, old, "2")


def test_a_sighup_reload_of_an_edit_rolls_and_fails_no_request(tmp_path):
    with serving(tmp_path, args=("--apply", "on-reload")) as (d, load, old, port):
        write_job(d.jobs_dir, "web", web(port, "2"))
        write_job(d.jobs_dir, "api", {"cmd": "sleep 60"})
        wait_for(lambda: d.status("web")["jobs"][0].get("pending"), what="the edit noted")
        (entry,) = d.status("web")["jobs"]
        assert entry["pending"] == "file changed, not applied (reload applies it)" and pids(d) == old
        api = next(j for j in d.status()["jobs"] if j["name"] == "api")
        assert api["state"] == "NEW" and api["pending"] == "a new file, not loaded (reload loads it)"
        d.signal(signal.SIGHUP)
        rolled(d, load, old, "2")
        assert "pending" not in d.status("web")["jobs"][0]
        assert next(j for j in d.status()["jobs"] if j["name"] == "api")["state"] != "NEW"


def test_a_stop_and_start_of_the_whole_job_queues_connections_and_refuses_none(tmp_path):
    with serving(tmp_path) as (d, load, old, _):
        assert d.request("stop", "web")["response"] == "success"
        time.sleep(0.5)  # nobody accepts: the clients wait in the held socket's queue
        assert d.request("start", "web")["response"] == "success"
        rolled(d, load, old, "1")


def test_a_halted_rollout_leaves_the_old_instances_serving(tmp_path):
    metrics = free_port()
    with serving(tmp_path, args=("--metrics", f"127.0.0.1:{metrics}")) as (d, load, old, port):
        write_job(d.jobs_dir, "web", web(port, "2", env={"VERSION": "2", "BROKEN": "1"}))
        halted = "rollout halted: web:0 not ready (exited too soon (exited with code 3))"
        wait_for(lambda: d.status("web")["jobs"][0].get("rollout") == halted, what="the halt")
        reply = d.request("restart-job", "web", rolling=True)  # the verb fails with the reason
        assert reply["response"] == "fail" and reply["error"].decode() == halted
        mark = len(load.answers)
        wait_for(lambda: len(load.answers) > mark + 20, what="answers")
        assert pids(d) == old and {pid for pid, _ in load.answers[mark:]} <= old
        assert load.versions_since(mark) == {"1"}
        write_job(d.jobs_dir, "web", web(port, "1"))  # the operator restores the file:
        wait_for(lambda: "rollout" not in d.status("web")["jobs"][0], what="the halt forgotten")
        assert pids(d) == old and all_running(d)  # what runs is that version already: nothing restarts
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=30) as response:
            text = response.read().decode()
        assert 'taskmaster_rollouts_total{outcome="halted"} 2.0' in text
        assert 'taskmaster_rollouts_total{outcome="begun"} 2.0' in text
        assert any(e["kind"] == "rollout" and e["new"] == "halted" for e in events(d))


def test_numprocs_grows_without_touching_the_old_and_shrinks_after_draining(tmp_path):
    with serving(tmp_path) as (d, load, _, port):
        old = {i["index"]: i["pid"] for i in d.instances("web")}
        write_job(d.jobs_dir, "web", web(port, "1", numprocs=5))
        wait_for(lambda: len(d.instances("web")) == 5 and all_running(d), what="five RUNNING")
        assert {i["index"]: i["pid"] for i in d.instances("web")[:3]} == old  # untouched
        write_job(d.jobs_dir, "web", web(port, "1", numprocs=2))
        wait_for(lambda: len(d.instances("web")) == 2, what="the extras gone")
        assert {i["index"]: i["pid"] for i in d.instances("web")} == {0: old[0], 1: old[1]}
        mark = len(load.answers)
        wait_for(lambda: len(load.answers) > mark + 20, what="answers")


def test_max_unavailable_replaces_two_at_once_each_on_its_own_reuseport_socket(tmp_path):
    fields = {"numprocs": 4, "max_unavailable": 2, "reuseport": True, "env": {"VERSION": "1", "READY_DELAY": "0.5"}}
    with serving(tmp_path, **fields) as (d, load, old, port):
        write_job(d.jobs_dir, "web", web(port, "2", **{**fields, "env": {"VERSION": "2", "READY_DELAY": "0.5"}}))
        most, deadline = 0, time.monotonic() + 60
        while not (all_running(d) and not pids(d) & old) and time.monotonic() < deadline:
            starting = [i for i in d.instances("web") if i.get("second", {}).get("phase") == "starting"]
            most = max(most, len(starting))
            time.sleep(0.02)
        rolled(d, load, old, "2")
    assert most == 2


def test_a_restart_during_a_rollout_comes_after_it_and_a_stop_ends_it(tmp_path):
    port = free_port()
    job = web(port, "1", env={"VERSION": "1", "READY_DELAY": "0.5"})
    with Daemon(tmp_path, jobs={"web": job}) as d:
        wait_for(lambda: all_running(d), what="RUNNING")
        replies: dict[str, dict] = {}
        threads = [threading.Thread(target=lambda t=t: replies.__setitem__(t, d.request("restart-job", t, rolling=True)))
                   for t in ("web:0", "web:2")]
        for thread in threads:
            thread.start()
            time.sleep(0.1)
        for thread in threads:
            thread.join(60)
        assert replies["web:0"]["response"] == replies["web:2"]["response"] == "success", replies
        # a stop during a rollout ends it: its verb fails, no instance starts after the stop
        old = pids(d)
        verb = threading.Thread(target=lambda: replies.__setitem__("all", d.request("restart-job", "web")))
        verb.start()
        wait_for(lambda: any("second" in i for i in d.instances("web")), what="the rollout under way")
        assert d.request("stop", "web")["response"] == "success"
        verb.join(60)
        assert replies["all"]["response"] == "fail"
        assert replies["all"]["error"].decode() == "rollout interrupted: stop command", replies["all"]
        time.sleep(1)
        assert {i["state"] for i in d.instances("web")} == {"STOPPED"} and not pids(d) - {None} - old
