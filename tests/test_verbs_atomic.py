"""A verb is one event of the instance's table: what arrives during a `restart-job` is applied
after it, never lost; a `start` whose dependencies are not coming answers at once and says why;
`start` with `deps` brings them up first. With a real daemon and real processes."""
import threading
import time

from .support.ctl import ctl, err
from .support.daemon import Daemon, wait_for

# Takes a second to stop: SIGTERM is handled by sleeping, then exiting.
SLOW_STOP = {"cmd": ["python3", "-c", "import signal, sys, time\n"
                     "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1), sys.exit(0)))\n"
                     "time.sleep(300)"], "starttime": 0.3, "stoptime": 10}
SLEEP = {"cmd": "sleep 300", "starttime": 0.2}


def state_of(daemon: Daemon, job: str) -> str:
    return daemon.instances(job)[0]["state"]


def test_a_stop_sent_during_a_restart_job_is_applied_after_it(tmp_path):
    with Daemon(tmp_path, {"w": SLOW_STOP}) as daemon:
        wait_for(lambda: state_of(daemon, "w") == "RUNNING", what="w RUNNING")
        replies = {}
        restart = threading.Thread(target=lambda: replies.setdefault("restart", daemon.request("restart-job", "w")))
        restart.start()
        wait_for(lambda: state_of(daemon, "w") == "STOPPING", what="the restart's stop under way")
        stop = daemon.request("stop", "w")
        restart.join(30)
        assert stop["response"] == "success", stop
        assert "restart" in replies
        # whatever the restart answered, the stop came after it: the job ends stopped, and stays so
        time.sleep(1)
        assert state_of(daemon, "w") == "STOPPED", daemon.instances("w")


def test_start_of_a_job_whose_dependency_is_stopped_answers_at_once_and_says_what_to_do(tmp_path):
    jobs = {"web": {**SLEEP, "autostart": False},
            "api": {**SLEEP, "autostart": False, "depends_on": ["web"]}}
    with Daemon(tmp_path, jobs) as daemon:
        began = time.monotonic()
        reply = daemon.request("start", "api", timeout=20)
        assert time.monotonic() - began < 5
        assert reply["response"] == "fail", reply
        assert reply["error"].decode() == "waiting for web (STOPPED): start it too, or use --nowait"
        # it still waits: starting web lets it go
        assert state_of(daemon, "api") == "WAITING"
        assert daemon.request("start", "web")["response"] == "success"
        wait_for(lambda: state_of(daemon, "api") == "RUNNING", what="api let go")


def test_start_nowait_of_a_job_whose_dependency_is_stopped_leaves_it_waiting(tmp_path):
    jobs = {"web": {**SLEEP, "autostart": False},
            "api": {**SLEEP, "autostart": False, "depends_on": ["web"]}}
    with Daemon(tmp_path, jobs) as daemon:
        assert daemon.request("start", "api", nowait=True)["response"] == "success"
        assert state_of(daemon, "api") == "WAITING"
        assert state_of(daemon, "web") == "STOPPED"


def test_start_with_deps_brings_the_dependencies_up_first(tmp_path):
    jobs = {"db": {**SLEEP, "autostart": False},
            "web": {**SLEEP, "autostart": False, "depends_on": ["db"]},
            "api": {**SLEEP, "autostart": False, "depends_on": ["web"]}}
    with Daemon(tmp_path, jobs) as daemon:
        reply = daemon.request("start", "api", deps=True, timeout=20)
        assert reply["response"] == "success", reply
        assert [state_of(daemon, name) for name in ("db", "web", "api")] == ["RUNNING"] * 3
        # each started once its own dependency was RUNNING
        since = {name: daemon.instances(name)[0]["since"] for name in ("db", "web", "api")}
        assert since["db"] <= since["web"] <= since["api"]


def test_taskmasterctl_start_says_what_a_start_waits_for_and_with_deps_starts_it(tmp_path):
    jobs = {"web": {**SLEEP, "autostart": False},
            "api": {**SLEEP, "autostart": False, "depends_on": ["web"]}}
    with Daemon(tmp_path, jobs) as daemon:
        waiting = ctl(daemon, "start", "api", timeout=20)
        assert waiting.returncode == 1
        assert err(waiting) == "taskmasterctl: start api: waiting for web (STOPPED): start it too, or use --nowait\n"
        started = ctl(daemon, "start", "--with-deps", "api", timeout=20)
        assert started.returncode == 0, err(started)
        assert [state_of(daemon, name) for name in ("web", "api")] == ["RUNNING", "RUNNING"]


def test_start_with_deps_of_a_job_whose_dependency_is_not_loaded_says_so_and_starts_nothing(tmp_path):
    jobs = {"web": {**SLEEP, "autostart": False},
            "api": {**SLEEP, "autostart": False, "depends_on": ["web", "cache"]}}
    with Daemon(tmp_path, jobs) as daemon:
        reply = daemon.request("start", "api", deps=True, timeout=20)
        assert reply["response"] == "fail", reply
        assert reply["error"].decode() == 'cannot start api\'s dependency cache: job "cache" does not exist'
        assert [state_of(daemon, name) for name in ("web", "api")] == ["STOPPED", "STOPPED"]
