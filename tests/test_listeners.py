"""The listeners of a real daemon: the unix socket's life (stale, live, not a socket, removed on
exit), TCP turned off, and options that are refused before the daemon starts."""
from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from taskmasterd.control.listeners import bind_unix
from tests.support.control_fixtures import SLEEPER, Raw, message
from tests.support.daemon import ROOT, Daemon, free_port, wait_for


def refused_start(daemon: Daemon) -> subprocess.CompletedProcess:
    out = subprocess.run(daemon.command(), capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.returncode == 1, out.stderr
    return out


def unix_exchange(path: Path, frame: bytes) -> dict:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(frame)
        reply = b""
        while not reply.endswith(b";;"):
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += chunk
    return json.loads(reply[:-2])


def test_port_none_listens_on_the_unix_socket_only(tmp_path: Path) -> None:
    path = tmp_path / "tm.sock"
    with Daemon(tmp_path, {"web": SLEEPER}, args=["--port", "none", "--socket", str(path)]) as daemon:
        assert unix_exchange(path, message("list"))["response"] == "list"
        with pytest.raises(ConnectionRefusedError):
            Raw(daemon.port)
        # the daemon's log is written by a thread of its own: the line may follow READY=1
        wait_for(lambda: f"control on {path}" in daemon.stderr(), 10, what="the ready line in the log")
    assert not path.exists()


def test_a_stale_socket_is_replaced_and_a_live_one_refuses_the_start(tmp_path: Path) -> None:
    path = tmp_path / "tm.sock"
    stale = bind_unix(str(path), None)
    stale.close()  # its daemon died without removing it
    with Daemon(tmp_path / "one", {}, args=["--socket", str(path)]):
        assert unix_exchange(path, message("list"))["response"] == "list"
        second = refused_start(Daemon(tmp_path / "two", {}, args=["--socket", str(path)]))
        assert "another taskmasterd is listening there" in second.stderr and str(path) in second.stderr
        assert unix_exchange(path, message("list"))["response"] == "list"  # the first is untouched


def test_the_socket_file_is_removed_on_exit_only_if_it_is_still_ours(tmp_path: Path) -> None:
    path = tmp_path / "tm.sock"
    with Daemon(tmp_path, {}, args=["--socket", str(path)]):
        path.unlink()
        path.write_text("someone else's")
    assert path.read_text() == "someone else's"


def test_what_is_not_a_socket_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "tm.sock"
    path.write_text("precious")
    out = refused_start(Daemon(tmp_path, {}, args=["--socket", str(path)]))
    assert "exists and is not a socket" in out.stderr
    link = tmp_path / "link.sock"
    link.symlink_to(path)
    assert "exists and is not a socket" in refused_start(Daemon(tmp_path, {}, args=["--socket", str(link)])).stderr
    assert path.read_text() == "precious"


@pytest.mark.parametrize("args, complaint", [
    (["--port", "80000"], "port 80000 is out of range"),
    (["--port", "0"], "port 0 is out of range"),
    (["--port", "none"], "nothing to listen on"),
    (["--socket", "/tmp/" + "x" * 120], "too long for a unix socket"),
    (["--control-group", "no-such-group-xyz"], "no such group 'no-such-group-xyz'"),
])
def test_bad_listener_options_refuse_the_start_with_a_message(tmp_path: Path, args: list[str], complaint: str) -> None:
    assert complaint in refused_start(Daemon(tmp_path, {}, args=args)).stderr


def test_port_null_and_control_lists_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "taskmasterd.json"
    path = tmp_path / "tm.sock"
    config.write_text(json.dumps({"port": None, "socket": str(path), "control_users": ["nobody", 4242],
                                  "allow_remote": ["192.0.2.0/24"]}))
    daemon = Daemon(tmp_path, {}, args=["--config", str(config)])
    daemon.port = free_port()
    daemon.args += ["--port", str(daemon.port)]  # the command line still wins
    with daemon:
        assert unix_exchange(path, message("list"))["response"] == "list"
        assert daemon.request("list")["response"] == "list"
    for bad in ({"control_users": [True]}, {"control_groups": "wheel"}, {"allow_remote": ["10.0.0.0/33"]}):
        config.write_text(json.dumps(bad))
        assert refused_start(Daemon(tmp_path, {}, args=["--config", str(config)])).stderr
