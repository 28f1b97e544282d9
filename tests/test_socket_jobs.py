"""Jobs with held sockets, with the real daemon, real sockets and real uids: the socket is open
from the load to the removal whatever the instances do, a socket that cannot be bound is the
job's error alone, a privileged port is the root daemon's business, `autostart: "socket"`."""
import os
import pwd
import socket
import sys
import time
from pathlib import Path

from .support.daemon import Daemon, free_port, wait_for, write_job
from .support.held_server import ask

SERVER = str(Path(__file__).resolve().parent / "support" / "held_server.py")
NOBODY = pwd.getpwnam("nobody")


def get(port: int) -> list[str]:
    """One HTTP request on a new connection: the answer's words (pid, VERSION, instance)."""
    head, body = ask(port, timeout=10)
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode().split()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def web(port: int, **fields) -> dict:
    return {"cmd": [sys.executable, SERVER], "sockets": [{"listen": f"127.0.0.1:{port}", "name": "http"}],
            "starttime": 0.3, "stoptime": 5, **fields}


def running_pids(d: Daemon, job: str) -> list[int]:
    return [i["pid"] for i in d.instances(job) if i["state"] == "RUNNING"]


def test_the_socket_is_held_from_load_to_removal(tmp_path):
    port = free_port()
    with Daemon(tmp_path, jobs={"web": web(port, numprocs=2, env={"VERSION": "1"})}) as d:
        wait_for(lambda: len(running_pids(d, "web")) == 2, what="both RUNNING")
        pids = set(running_pids(d, "web"))
        answers = {tuple(get(port)) for _ in range(20)}
        assert {int(pid) for pid, _, _ in answers} <= pids and {v for _, v, _ in answers} == {"1"}
        assert d.request("stop", "web")["response"] == "success"
        # nobody accepts, yet nothing is refused: the daemon holds the socket; the kernel queues
        waiting = socket.create_connection(("127.0.0.1", port), timeout=5)
        waiting.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert d.request("start", "web")["response"] == "success"
        waiting.settimeout(10)
        assert waiting.recv(100).startswith(b"HTTP/1.1 200")  # served by the new run
        waiting.close()
        write_job(d.jobs_dir, "web", web(port, numprocs=2, env={"VERSION": "2"}))
        wait_for(lambda: {tuple(get(port))[1] for _ in range(6)} == {"2"}, what="the new version serving")
        os.unlink(d.jobs_dir / "web.tm.json")
        wait_for(lambda: refused(port), what="the socket closed with the job")


def test_a_socket_that_cannot_be_bound_is_the_jobs_error_alone(tmp_path):
    port = free_port()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    jobs = {"web": web(port), "bad": web(taken), "other": {"cmd": "sleep 60", "starttime": 0}}
    with Daemon(tmp_path, jobs=jobs) as d:
        wait_for(lambda: running_pids(d, "web") and running_pids(d, "other"), what="the others up")
        (bad,) = d.status("bad")["jobs"]
        assert bad["state"] == "INVALID"
        assert f'field "sockets": cannot hold 127.0.0.1:{taken}: Address already in use' in bad["error"]
        # a loaded job whose new version asks for it keeps its last valid version, and its socket
        pid = running_pids(d, "web")[0]
        write_job(d.jobs_dir, "web", {**web(port), "sockets": [{"listen": f"127.0.0.1:{port}"},
                                                             {"listen": f"127.0.0.1:{taken}"}]})
        wait_for(lambda: d.status("web")["jobs"][0]["error"], what="the error shown")
        assert running_pids(d, "web") == [pid] and int(get(port)[0]) == pid
        squatter.close()
        assert d.request("reload", "bad")["response"] == "success"
        wait_for(lambda: running_pids(d, "bad"), what="bad loads once the port is free")


def test_a_privileged_port_is_bound_by_the_daemon_for_a_job_of_another_user(tmp_path):
    port = next(p for p in range(700, 1000) if not _busy(p))
    code = ("import os, socket; s = socket.socket(fileno=3); c, _ = s.accept(); "
            "c.sendall(f'{os.getuid()} {os.environ[\"LISTEN_PID\"] == str(os.getpid())}'.encode())")
    job = {"cmd": ["/usr/bin/python3", "-c", code], "user": "nobody", "autorestart": "never",
           "sockets": [{"listen": f"127.0.0.1:{port}"}], "starttime": 0}
    with Daemon(tmp_path, jobs={"priv": job}) as d:
        wait_for(lambda: running_pids(d, "priv"), what="RUNNING")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            assert conn.recv(100).decode() == f"{NOBODY.pw_uid} True"


def _busy(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_autostart_socket_starts_at_the_first_connection_and_again_once_down(tmp_path):
    port = free_port()
    with Daemon(tmp_path, jobs={"lazy": web(port, autostart="socket")}) as d:
        time.sleep(0.5)
        assert d.instances("lazy")[0]["state"] == "STOPPED"
        began = time.monotonic()
        pid = int(get(port)[0])  # this very connection is accepted by the program it started
        assert time.monotonic() - began < 10
        wait_for(lambda: running_pids(d, "lazy") == [pid], what="RUNNING")
        assert d.request("stop", "lazy")["response"] == "success"
        assert int(get(port)[0]) != pid  # started again by the next connection
        assert d.request("disable", "lazy")["response"] == "success"
        assert d.request("stop", "lazy")["response"] == "success"
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)  # queued; nothing starts it
        time.sleep(0.5)
        assert d.instances("lazy")[0]["state"] == "STOPPED"
        conn.close()


def test_a_unix_socket_job(tmp_path):
    path = tmp_path / "run" / "app.sock"
    job = {"cmd": [sys.executable, SERVER], "sockets": [{"listen": f"unix:{path}", "mode": "0600"}],
           "starttime": 0.3}
    with Daemon(tmp_path, jobs={"app": job}) as d:
        wait_for(lambda: running_pids(d, "app"), what="RUNNING")
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(10)
            conn.connect(str(path))
            conn.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.1 200")
    assert not path.exists()  # removed with the socket when the daemon stopped
