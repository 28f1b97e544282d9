"""Shared pieces of the control-plane tests: a real daemon with a few jobs, and a raw client.

The raw client writes and reads bytes itself (base64 and JSON by hand), so the conformance suite
does not depend on the codec it checks.
"""
from __future__ import annotations

import base64
import json
import os
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.daemon import Daemon

SLEEPER = {"cmd": ["sleep", "1000"], "starttime": 0, "stdout": None, "stderr": None}
# Ignores the stop signal (inherited across exec), so a stop lasts the whole stoptime. The
# starttime gives sh the moment it needs to install the trap before anyone may stop it.
STUBBORN = {"cmd": ["sh", "-c", "trap '' TERM; exec sleep 1000"], "starttime": 0.5, "stoptime": 10,
            "autostart": False, "stdout": None, "stderr": None}
JOBS = {"nginx": SLEEPER, "web": {**SLEEPER, "numprocs": 2}, "stubborn": STUBBORN}


def b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


def text(value: str) -> str:
    return base64.b64decode(value, validate=True).decode()


def message(verb: str, job: str | None = None, data: bytes | None = None, **extra: Any) -> bytes:
    """A compact request, terminator included."""
    fields: dict[str, Any] = {"command": verb}
    if job is not None:
        fields["job"] = b64(job)
    if data is not None:
        fields["data"] = b64(data)
    fields.update(extra)
    return json.dumps(fields, separators=(",", ":")).encode() + b";;"


class Raw:
    """One TCP connection to the daemon, read and written as bytes."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply_bytes(self) -> bytes:
        """The exact bytes of the next reply, `;;` included (a reply never holds `;;` inside)."""
        while b";;" not in self.buffer:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"closed by the daemon; unread: {self.buffer[:200]!r}")
            self.buffer += chunk
        end = self.buffer.index(b";;") + 2
        reply, self.buffer = self.buffer[:end], self.buffer[end:]
        return reply

    def reply(self) -> dict:
        return json.loads(self.reply_bytes()[:-2])

    def exchange(self, data: bytes) -> dict:
        self.send(data)
        return self.reply()

    def closed_by_peer(self) -> bool:
        """Wait (up to the socket timeout) for the daemon to close; True if it did."""
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return True
                self.buffer += chunk
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below root with its size and mtime: 'nothing on disk touched' is equality.
    (The daemon's own log, its notify socket and its registry of children, rewritten 0.2 s after
    any spawn or exit of an earlier test, are left out.)"""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if not path.endswith((".sock", "daemon.stderr", "children.json")):
                info = os.stat(path)
                found[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return found


def serving_daemon(root: Path, jobs: dict[str, dict], args: list[str] | None = None) -> Iterator[Daemon]:
    """A daemon for a test module; afterwards it must still be alive and have logged no traceback."""
    with Daemon(root, jobs=jobs, args=args) as daemon:
        yield daemon
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.stderr()
        assert daemon.request("status")["response"] == "status"
    assert "Traceback" not in daemon.stderr(), daemon.stderr()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from serving_daemon(tmp_path_factory.mktemp("control"), JOBS)
