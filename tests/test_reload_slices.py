"""A reload of every job file (SIGHUP, `restart`) reads and parses them a slice at a time: with
2000 files the loop still answers a request within milliseconds meanwhile."""
import json
import signal
import socket
import threading
import time

from .support.daemon import Daemon, write_job

QUIET = {"cmd": "sleep 300", "autostart": False, "stdout": None, "stderr": None}


def test_sighup_with_2000_job_files_never_holds_the_loop(tmp_path):
    daemon = Daemon(tmp_path)
    for n in range(2000):
        write_job(daemon.jobs_dir, f"j{n:04}", {**QUIET, "env": {"N": str(n)}})
    with daemon:
        latencies: list[float] = []
        done = threading.Event()

        def probe() -> None:
            request = json.dumps({"command": "status", "job": "bm9uZQ=="}).encode() + b";;"  # "none"
            with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
                while not done.is_set():
                    began = time.perf_counter()
                    sock.sendall(request)
                    buf = b""
                    while not buf.endswith(b";;"):
                        buf += sock.recv(65536)
                    latencies.append(time.perf_counter() - began)
                    time.sleep(0.001)

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            time.sleep(0.3)
            quiet = max(latencies)
            latencies.clear()
            daemon.signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while "reload: nothing changed" not in daemon.stderr():
                assert time.monotonic() < deadline, daemon.stderr()[-2000:]
                time.sleep(0.05)
        finally:
            done.set()
            prober.join()
        assert len(latencies) > 10
        assert max(latencies) < max(0.1, 3 * quiet), (max(latencies), quiet)
