"""taskmasterctl over the daemon's unix socket: `--socket PATH` or TASKMASTER_SOCKET, every verb
and the shell, exactly as over TCP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.control_fixtures import SLEEPER
from tests.support.daemon import ROOT, Daemon

TRANSPORTS = ["tcp", "--socket", "TASKMASTER_SOCKET"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("ctl-unix")
    with Daemon(root, {"web": {**SLEEPER, "numprocs": 2}}, args=["--socket", str(root / "tm.sock")]) as running:
        yield running


def ctl(daemon: Daemon, transport: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "TASKMASTER_SOCKET"}
    where = ["--port", str(daemon.port)]  # over the socket, a port that nobody listens on must not matter
    if transport == "--socket":
        where = ["--port", "1", "--socket", str(daemon.root / "tm.sock")]
    elif transport == "TASKMASTER_SOCKET":
        where, env["TASKMASTER_SOCKET"] = ["--port", "1"], str(daemon.root / "tm.sock")
    return subprocess.run([sys.executable, "-m", "taskmasterctl", *where, *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, timeout=60)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_verb(daemon: Daemon, transport: str, tmp_path: Path) -> None:
    job = f"u-{transport.strip('-').lower()}"
    source = tmp_path / f"{job}.tm.json"
    source.write_bytes(json.dumps({**SLEEPER, "autostart": False}).encode())

    def ok(*args: str) -> str:
        result = ctl(daemon, transport, *args)
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout.decode()

    assert ok("push", str(source)) == f"push {job}: success\n"
    assert ok("pull", job).encode() == source.read_bytes()
    assert job in ok("list")
    assert ok("start", job) == f"start {job}: success\n"
    assert "RUNNING" in ok("status", job)
    assert json.loads(ok("--json", "status", "web"))["data"]["jobs"][0]["name"] == "web"
    assert ok("stop", job) == f"stop {job}: success\n"
    assert ok("repair", job) == ""  # redundant: noted on stderr only
    assert ok("start", "--nowait", job) == f"start {job}: success\n"
    assert ok("kill", job) == f"kill {job}: success\n"
    assert ok("reload", job) == ""
    assert ok("reload") == "reload: success\n"  # every file (the wire's `restart`)
    assert ok("restart", job) == f"restart {job}: success\n"
    assert ok("delete", job) == f"delete {job}: success\n"
    failed = ctl(daemon, transport, "start", job)
    assert failed.returncode == 1 and f'job "{job}" does not exist' in failed.stderr.decode()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_shell(daemon: Daemon, transport: str) -> None:
    result = ctl(daemon, transport, stdin=b"status web\nlist\nstop nope\nexit\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    address = f"127.0.0.1:{daemon.port}" if transport == "tcp" else str(daemon.root / "tm.sock")
    assert f"taskmasterd at {address}" in out
    assert out.count("RUNNING") == 4  # the job and its two instances in its block, the job in the list
    assert 'stop nope: job "nope" does not exist' in result.stderr.decode()


def test_an_unreachable_socket_exits_3_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.sock"
    result = subprocess.run([sys.executable, "-m", "taskmasterctl", "--socket", str(missing), "status"], cwd=ROOT,
                            capture_output=True, timeout=60)
    assert result.returncode == 3 and f"cannot connect to taskmasterd at {missing}" in result.stderr.decode()
