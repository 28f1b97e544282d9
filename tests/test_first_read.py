"""The control port answers from the moment it is bound, but a request that names jobs is
answered once the jobs directory has been read: `taskmasterd & taskmasterctl start web` starts
web, it never hears that web does not exist."""
import socket
import time

from .support.daemon import Daemon, write_job

QUIET = {"cmd": "sleep 300", "autostart": False, "stdout": None, "stderr": None}


def test_a_start_sent_as_soon_as_the_port_answers_finds_the_job(tmp_path):
    daemon = Daemon(tmp_path)
    for n in range(1000):
        write_job(daemon.jobs_dir, f"a{n:04}", QUIET)
    write_job(daemon.jobs_dir, "zweb", {**QUIET, "starttime": 0})
    daemon.start(wait=False)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", daemon.port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, daemon.stderr()
                time.sleep(0.002)
        reply = daemon.request("start", "zweb")
        assert reply == {"response": "success"}, reply
        listed = daemon.request("list")
        assert listed["response"] == "list"
    finally:
        daemon.stop()
        if daemon.notify_sock is not None:
            daemon.notify_sock.close()
