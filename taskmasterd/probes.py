"""The three health probes: a tcp connect, an http GET, a command run as a child of the daemon.

A probe is a coroutine function that answers one `ProbeResult`; it does not time itself out: the
checker cancels it at its timeout, and a command probe then kills its whole process group.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping

from .readiness_spec import CmdCheck, HttpCheck, TcpCheck, netloc
from .spawner import Child, spawn, spawn_error_text
from .states import describe_exit

if TYPE_CHECKING:
    from .jobfile import JobSpec

OUTPUT_LIMIT = 4096  # of a command's output, the first bytes kept (Docker keeps as many)
STATUS_LINE_LIMIT = 8192  # an http status line longer than this is a bad response
KILL_GRACE = 5.0  # after SIGKILL to a check's group, how long its leader may take to be reaped
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: |\r?\n)")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str  # the reason a change is logged with: "http 503", "tcp connect refused", "exit code 1"
    output: str = ""  # a command's output (its first OUTPUT_LIMIT bytes)


Probe = Callable[[], Awaitable[ProbeResult]]
# Starts `argv` as a process group with stdout and stderr on the fd; the owner of the daemon's
# processes provides it (it decides the user, directory, environment and registry of the child).
SpawnCheck = Callable[[tuple[str, ...], int], Child]


def make_probe(check: CmdCheck | TcpCheck | HttpCheck, spawn_check: SpawnCheck | None = None) -> Probe:
    if isinstance(check, TcpCheck):
        return lambda: _tcp(check)
    if isinstance(check, HttpCheck):
        request = (f"GET {check.target} HTTP/1.1\r\nHost: {netloc(check.host, check.port)}\r\n"
                   "User-Agent: taskmasterd-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n").encode()
        return lambda: _http(check, request)
    if spawn_check is None:
        raise ValueError("a cmd health check needs a spawn function")
    return lambda: _cmd(check, spawn_check)


def _connect_failure(what: str, exc: OSError) -> ProbeResult:
    if isinstance(exc, ConnectionRefusedError):
        return ProbeResult(False, f"{what} connect refused")
    if isinstance(exc, socket.gaierror):
        return ProbeResult(False, f"{what} cannot resolve the host: {exc.strerror or exc}")
    return ProbeResult(False, f"{what} connect failed: {exc.strerror or exc}")


async def _tcp(check: TcpCheck) -> ProbeResult:
    try:
        transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, check.host, check.port)
    except OSError as exc:
        return _connect_failure("tcp", exc)
    transport.close()
    return ProbeResult(True, "tcp connected")


async def _http(check: HttpCheck, request: bytes) -> ProbeResult:
    try:
        reader, writer = await asyncio.open_connection(check.host, check.port, limit=STATUS_LINE_LIMIT)
    except OSError as exc:
        return _connect_failure("http", exc)
    try:
        writer.write(request)
        line = await reader.readline()  # only the status line is read: the rest is never buffered
    except ValueError:  # longer than the limit
        return ProbeResult(False, "http bad response: status line too long")
    except OSError as exc:
        return ProbeResult(False, f"http failed: {exc.strerror or exc}")
    finally:
        writer.close()
    found = _STATUS_LINE.match(line)
    if found is None:
        return ProbeResult(False, "http closed before a response" if not line else "http bad response")
    code = int(found.group(1))
    return ProbeResult(200 <= code < 400, f"http {code}")


class _Output:
    """The read end of a command's output pipe: keeps the first OUTPUT_LIMIT bytes, drains and
    drops the rest so the command never blocks on a full pipe."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop):
        self._fd = fd
        self._loop = loop
        self._kept = bytearray()
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._read)

    def _read(self) -> bool:
        """One read; False at EOF or when nothing is there."""
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return False
        if not data:
            self._loop.remove_reader(self._fd)  # an EOF stays readable: stop listening
            return False
        self._kept += data[: OUTPUT_LIMIT - len(self._kept)]
        return True

    def close(self) -> str:
        """Take what is still in the pipe (bounded: a pipe holds at most a few reads), close it and
        return the kept text."""
        for _ in range(16):
            if not self._read():
                break
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        return self._kept.decode("utf-8", "replace")


async def _cmd(check: CmdCheck, spawn_check: SpawnCheck) -> ProbeResult:
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    output = _Output(read_fd, loop)
    try:
        child = spawn_check(check.argv, write_fd)
    except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        output.close()
        return ProbeResult(False, spawn_error_text(exc) if isinstance(exc, OSError) else f"spawn error: {exc}")
    finally:
        os.close(write_fd)
    try:
        returncode = await asyncio.shield(child.exited)
    except asyncio.CancelledError:  # its timeout, or the checker stopped: nothing of it survives
        await child.stop(signal.SIGKILL, KILL_GRACE)
        raise
    finally:
        child.kill_leftovers()
        text = output.close()
    detail = f"exit code {returncode}" if returncode >= 0 else describe_exit(returncode)
    return ProbeResult(returncode == 0, detail, text)


def job_check_spawner(spec: JobSpec, env: Mapping[str, str]) -> SpawnCheck:
    """A command check runs like the job's own processes: its user, directory, umask and
    environment, in its own process group, through `spawner.spawn`."""
    return lambda argv, output_fd: spawn(replace(spec, argv=argv), env, output_fd, output_fd)
