"""Health checks let a service boot: with the defaults, failures before the first pass restart
nothing until `start_period` is over, so a service that takes seconds to open its port is never
killed by its own check, and its dependants waiting for `healthy` go; one that never passes is
still restarted."""
import time

from taskmasterd.jobfiles.readiness_spec import HealthCheckSpec, TcpCheck

from .support.daemon import Daemon, free_port, wait_for
from .support.notify import PYTHON

LISTEN_LATE = "import socket, sys, time; time.sleep(float(sys.argv[2])); " \
              "s = socket.create_server(('127.0.0.1', int(sys.argv[1]))); time.sleep(300)"


def test_a_service_that_opens_its_port_after_seconds_is_not_killed_with_the_defaults(tmp_path):
    port = free_port()
    db = {"cmd": [PYTHON, "-c", LISTEN_LATE, str(port), "4"], "starttime": 0,
          "healthcheck": {"tcp": f"127.0.0.1:{port}", "retries": 1}}
    web = {"cmd": "sleep 300", "starttime": 0, "depends_on": [{"job": "db", "condition": "healthy"}]}
    with Daemon(tmp_path, {"db": db, "web": web}) as daemon:
        wait_for(lambda: daemon.instances("db")[0].get("health") == "healthy", timeout=20, what="db healthy")
        entry = daemon.instances("db")[0]
        assert entry["restarts"] == 0 and entry["state"] == "RUNNING", entry
        wait_for(lambda: daemon.instances("web")[0]["state"] == "RUNNING", timeout=10, what="web let go")


def test_a_service_that_never_opens_its_port_is_restarted_after_its_start_period(tmp_path):
    port = free_port()
    hung = {"cmd": "sleep 300", "starttime": 0,
            "healthcheck": {"tcp": f"127.0.0.1:{port}", "retries": 1, "start_period": 2}}
    with Daemon(tmp_path, {"hung": hung}) as daemon:
        began = time.monotonic()
        wait_for(lambda: daemon.instances("hung")[0]["restarts"] >= 1, timeout=20, what="a restart")
        assert time.monotonic() - began >= 1.5


def test_the_defaults_let_a_ten_second_boot_through_and_restart_a_hung_service_within_a_minute():
    check = HealthCheckSpec(TcpCheck("127.0.0.1", 1))
    assert check.start_period >= 10 + check.start_interval  # a check at 10 s still falls inside it
    # hung at boot (an http check of a program that accepted and never answers): the start period,
    # then `retries` counted failures, each a timeout, start_interval apart
    assert check.start_period + check.retries * (check.start_interval + check.timeout) <= 60
