"""A spawn with held sockets, with real processes, sockets and uids: the sockets at 3, 4, …,
LISTEN_PID its own pid (what sd_listen_fds checks), LISTEN_FDS and LISTEN_FDNAMES, nothing else
inherited, the job's directory, umask and user applied, and the environment and signals as a
spawn without sockets gets them — from the loop's spawn and from the spawn thread alike."""
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from taskmasterd.jobfiles.sockets_spec import SocketSpec, parse_listen
from taskmasterd.processes.heldsockets import bind
from taskmasterd.processes.launch import Account, Launch
from taskmasterd.processes.spawnthread import SpawnThread
from taskmasterd.processes.start import close_inherited_on_exec, start_process
from tests.support.daemon import free_port
from tests.support.readme import python_example

EXAMPLE = "<!-- example: socket activation -->"

NOBODY = pwd.getpwnam("nobody")
# What the child saw, as JSON in the file given as its argument.
REPORT = r"""
import json, os, socket, sys
def sock(fd):
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    with s:
        return [s.family.name, str(s.getsockname()), s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)]
initial = dict(item.split("=", 1) for item in open("/proc/self/environ").read().split("\0") if item)  # before Python's own start-up
report = {"pid": os.getpid(), "env": {k: v for k, v in initial.items() if k.startswith(("LISTEN_", "LC_", "MARK"))},
          "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")), "socks": [sock(3), sock(4), sock(5)],
          "cwd": os.getcwd(), "umask": os.umask(0), "ids": [os.getuid(), os.geteuid(), os.getgid(), sorted(os.getgroups())],
          "sid": os.getsid(0) == os.getpid(), "argv": sys.argv[1:]}
open(sys.argv[1], "w").write(json.dumps(report))
"""


def held(listen: str, name: str):
    normalized, family, host, port = parse_listen(listen)
    return bind(SocketSpec(normalized, family, host, port, name=name))


def report_of(path, started) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if started.poll() is not None and path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
        time.sleep(0.01)
    raise TimeoutError(f"no report (returncode {started.poll()})")


@pytest.fixture
def sockets():
    close_inherited_on_exec()  # as the daemon does first: the test runner's own descriptors stay here
    a, b = held(f"127.0.0.1:{free_port()}", "http"), held(f"[::1]:{free_port()}", "http6")
    yield a, b
    a.close()
    b.close()


def launch_for(tmp_path, sockets, **settings) -> tuple[Launch, object]:
    out = tmp_path / "report.json"
    env = {"PATH": os.environ["PATH"], "MARK": "1", "LISTEN_PID": "1", "LISTEN_FDS": "9"}  # forged: overridden
    launch = Launch(argv=(sys.executable, "-c", REPORT, str(out), "a b"), env=env,
                    sockets=tuple((s.fd, s.spec.name) for s in sockets), **settings)
    return launch, out


def check(report: dict, sockets) -> None:
    assert report["env"]["LISTEN_PID"] == str(report["pid"])
    assert report["env"]["LISTEN_FDS"] == "2" and report["env"]["LISTEN_FDNAMES"] == "http:http6"
    assert report["socks"][0] == ["AF_INET", str(("127.0.0.1", sockets[0].spec.port)), 1]
    assert report["socks"][1][0] == "AF_INET6" and report["socks"][1][2] == 1
    assert report["socks"][2] is None and report["fds"] == [0, 1, 2, 3, 4, 5]  # 5: the listing's own
    assert "LC_CTYPE" not in report["env"]  # Python's start-up in the trampoline added it: taken back
    assert report["sid"] and report["argv"][1] == "a b"


def test_the_sockets_come_as_3_and_4_with_the_process_own_pid(tmp_path, sockets):
    launch, out = launch_for(tmp_path, sockets)
    started = start_process(launch, None, subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL)
    report = report_of(out, started)
    check(report, sockets)
    assert report["pid"] == started.pid and report["ids"][0] == os.getuid()


def test_directory_umask_and_user_are_applied_by_the_trampoline(tmp_path, sockets):
    workdir = tmp_path / "work"
    workdir.mkdir()
    os.chmod(tmp_path, 0o755)
    account = Account(NOBODY.pw_uid, NOBODY.pw_gid, (NOBODY.pw_gid, 4), ())
    out_dir = Path(tempfile.mkdtemp())  # where nobody may write (the test's own directory is private)
    os.chmod(out_dir, 0o777)
    launch, _ = launch_for(tmp_path, sockets, cwd=str(workdir), umask=0o027, account=account)
    out = out_dir / "report.json"
    # the system's Python: a program nobody may run (the test's own may be under /root)
    launch = Launch(argv=("/usr/bin/python3", *launch.argv[1:3], str(out), "a b"), env={**launch.env, "LC_CTYPE": "C"},
                    cwd=launch.cwd, umask=launch.umask, account=account, sockets=launch.sockets)
    started = start_process(launch, None, subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL)
    report = report_of(out, started)
    assert report["cwd"] == str(workdir) and report["umask"] == 0o027
    assert report["ids"] == [NOBODY.pw_uid, NOBODY.pw_uid, NOBODY.pw_gid, sorted({NOBODY.pw_gid, 4})]
    assert report["env"]["LC_CTYPE"] == "C"  # as the job gave it, not Python's coercion
    assert report["env"]["LISTEN_PID"] == str(started.pid)


def test_the_signals_python_ignores_are_not_ignored_by_the_program(tmp_path, sockets):
    out = tmp_path / "status"
    launch = Launch(argv=("/bin/sh", "-c", 'exec grep SigIgn /proc/self/status >"$0"', str(out)), env={},
                    sockets=((sockets[0].fd, "http"),))
    started = start_process(launch, None, subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL)
    while started.poll() is None:
        time.sleep(0.01)
    ignored = int(out.read_text().split()[1], 16)
    assert ignored & (1 << (signal.SIGPIPE - 1)) == 0 and ignored & (1 << (signal.SIGXFSZ - 1)) == 0


def test_from_the_spawn_thread_too(tmp_path, sockets):
    thread = SpawnThread(-1)
    try:
        launch, out = launch_for(tmp_path, sockets)
        started = thread.start(launch, None, subprocess.DEVNULL, subprocess.DEVNULL)
        check(report_of(out, started), sockets)
    finally:
        thread.close()


def test_a_program_that_cannot_run_fails_the_spawn_as_without_sockets(tmp_path, sockets):
    launch, _ = launch_for(tmp_path, sockets)
    missing = Launch(argv=("no-such-program-x",), env=launch.env, sockets=launch.sockets)
    with pytest.raises(FileNotFoundError):
        start_process(missing, None, subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL)
    (tmp_path / "not-executable").write_text("")
    with pytest.raises(PermissionError):
        start_process(Launch(argv=(str(tmp_path / "not-executable"),), env={}, sockets=launch.sockets),
                      None, subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL)


def test_the_readme_example_serves_on_what_it_was_given(tmp_path, sockets):
    """The README's ten lines, run as a child: they serve HTTP on the held socket."""
    launch = Launch(argv=(sys.executable, "-c", python_example(EXAMPLE)), env={"PATH": os.environ["PATH"]},
                    cwd=str(tmp_path), sockets=((sockets[0].fd, "http"),))
    started = start_process(launch, None, subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL)
    try:
        with socket.create_connection(("127.0.0.1", sockets[0].spec.port), timeout=10) as client:
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.0 200")
    finally:
        os.kill(started.pid, 9)
        while started.poll() is None:
            time.sleep(0.01)
