"""One restart throttle for every cause: a run that stayed up less than a window is restarted
after 0, 1, 2, 4 … s, whether it exited, crashed, missed its watchdog, turned unhealthy or sent
WATCHDOG=trigger; a single SIGKILL of an instance that has been up a while restarts at once."""
import os
import signal
import time

from .support.daemon import Daemon, wait_for
from .support.notify import PYTHON

# READY=1, then WATCHDOG=trigger at once: every run reaches RUNNING, then asks to be restarted.
READY_THEN_TRIGGER = ("import os, socket, time\n"
                      "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                      "s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n"
                      "s.sendto(b'WATCHDOG=trigger', os.environ['NOTIFY_SOCKET'])\n"
                      "time.sleep(300)\n")


def test_a_notify_program_that_triggers_its_watchdog_at_once_is_throttled(tmp_path):
    job = {"cmd": [PYTHON, "-c", READY_THEN_TRIGGER], "ready": "notify", "ready_timeout": 20, "watchdog": 60}
    with Daemon(tmp_path, {"trig": job}) as daemon:
        wait_for(lambda: daemon.instances("trig")[0]["restarts"] >= 1, what="a first restart")
        time.sleep(4)
        entry = daemon.instances("trig")[0]
        # at once, then 1 s, 2 s, 4 s later: not ~50 times a second
        assert 2 <= entry["restarts"] <= 5, entry
        events = daemon.request("events", data=b'{"last":1000}')["data"]
        assert b"restart in 1s" in events and b"restart in 2s" in events, events


def test_a_single_sigkill_of_an_instance_up_for_a_while_restarts_at_once(tmp_path):
    with Daemon(tmp_path, {"s": {"cmd": "sleep 300", "starttime": 0}}) as daemon:
        wait_for(lambda: daemon.instances("s")[0]["state"] == "RUNNING")
        time.sleep(1.2)  # past the window of a quick exit
        pid = daemon.instances("s")[0]["pid"]
        began = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (e := daemon.instances("s")[0])["pid"] not in (None, pid) and e["state"] == "RUNNING",
                 interval=0.005)
        assert time.monotonic() - began < 1.0
