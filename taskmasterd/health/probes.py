"""The three health probes: a tcp connect, an http GET, a command run as a child of the daemon.

A probe starts one check and hands its result to a callback; it does not time itself out: the
checker cancels it at its timeout (a command probe then kills its whole process group). The tcp
probe runs on loop callbacks alone; the http and command probes, rarer, are short tasks.

A tcp check of a loopback address asks the kernel instead of connecting: one sock_diag lookup
tells whether a socket listens there and whether its accept queue has room, which is what a
connect would find out (the kernel completes the handshake for the listener, whatever its
program is doing). It costs a fifth of a connect and reset, of which the daemon pays both ends on
loopback, and the checked service sees no connection to accept, time out or log.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import signal
import socket
import struct
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Mapping, Protocol

from .connect import Connect, Outcome, Target, connect
from ..kernel.sockdiag import TCP_LISTEN, SockDiagOrElse, TcpSocket
from ..jobfiles.readiness_spec import CmdCheck, HttpCheck, TcpCheck, netloc
from ..processes.table import Child, ProcessTable
from ..processes.spawner import Account, launch_for, spawn_error_text
from ..processes.exits import describe_exit
from ..tasks import TaskOwner

if TYPE_CHECKING:
    from ..jobfiles.jobfile import JobSpec

log = logging.getLogger("taskmasterd.health")
OUTPUT_LIMIT = 4096  # of a command's output, the first bytes kept (Docker keeps as many)
STATUS_LINE_LIMIT = 8192  # an http status line longer than this is a bad response
KILL_GRACE = 5.0  # after SIGKILL to a check's group, how long its leader may take to be reaped
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: |\r?\n)")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str  # the reason a change is logged with: "http 503", "tcp connect refused", "exit code 1"
    output: str = ""  # a command's output (its first OUTPUT_LIMIT bytes)


class Running(Protocol):
    def cancel(self) -> Any: ...


Done = Callable[[ProbeResult], None]
# Starts one check: `done` gets its result, never after cancel(); maybe before the call returns.
Probe = Callable[[Done], Running]
# Starts `argv` as a process group with stdout and stderr on the fd; the owner of the daemon's
# processes provides it (it decides the user, directory, environment and registry of the child).
SpawnCheck = Callable[[tuple[str, ...], int], Child]


def make_probe(check: CmdCheck | TcpCheck | HttpCheck, spawn_check: SpawnCheck | None, tasks: TaskOwner) -> Probe:
    """The probe of `check`; the http and command ones run as tasks of `tasks`."""
    if isinstance(check, TcpCheck):
        target = Target.of(check.host, check.port)
        if _is_loopback(target) and _listeners.available():
            return lambda done: _listeners.check(target, done)
        return lambda done: _connect(target, done)
    if isinstance(check, HttpCheck):
        target = Target.of(check.host, check.port)
        request = (f"GET {check.target} HTTP/1.1\r\nHost: {netloc(check.host, check.port)}\r\n"
                   "User-Agent: taskmasterd-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n").encode()
        return _in_task(lambda: _http(target, request), tasks)
    if spawn_check is None:
        raise ValueError("a cmd health check needs a spawn function")
    return _in_task(lambda: _cmd(check, spawn_check), tasks)


def _in_task(coroutine: Callable[[], Coroutine[Any, Any, ProbeResult]], tasks: TaskOwner) -> Probe:
    return lambda done: _TaskRun(coroutine(), done, tasks)


class _TaskRun:
    """A check run as a task of `tasks` (which shutdown awaits: a cancelled command check still
    kills its group). Once cancelled it never calls back, even if its clean-up fails."""

    def __init__(self, coroutine: Coroutine[Any, Any, ProbeResult], done: Done, tasks: TaskOwner):
        self._done: Done | None = done
        self._task = tasks.spawn(coroutine, None)  # its failure is a failed check: _finished
        self._task.add_done_callback(self._finished)

    def cancel(self) -> None:
        self._done = None
        self._task.cancel()

    def _finished(self, task: asyncio.Task[ProbeResult]) -> None:
        done, self._done = self._done, None
        if done is None or task.cancelled():
            return
        error = task.exception()
        if error is not None:  # a probe's bug must not end the checking
            log.error("health check failed unexpectedly", exc_info=error)
        done(task.result() if error is None else ProbeResult(False, f"check error: {error}"))


def _connect_failure(what: str, exc: OSError) -> ProbeResult:
    if isinstance(exc, ConnectionRefusedError):  # OSError(ECONNREFUSED, …) is one too
        return ProbeResult(False, f"{what} connect refused")
    if isinstance(exc, socket.gaierror):
        return ProbeResult(False, f"{what} cannot resolve the host: {exc.strerror or exc}")
    return ProbeResult(False, f"{what} connect failed: {exc.strerror or exc}")


def _tcp_result(outcome: Outcome) -> ProbeResult:
    if isinstance(outcome, OSError):
        return _connect_failure("tcp", outcome)
    # Closed with a reset (SO_LINGER 0), as kubelet and other probers do: nothing was sent, and
    # a hundred checks a second would otherwise keep thousands of sockets in TIME_WAIT.
    outcome.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    outcome.close()
    return ProbeResult(True, "tcp connected")


def _connect(target: Target, done: Done) -> Running:
    return Connect(target, lambda outcome: done(_tcp_result(outcome)), asyncio.get_running_loop())


def _is_loopback(target: Target) -> bool:
    return target.family is not None and ipaddress.ip_address(target.host).is_loopback


class _Finished:
    """What a probe that answered at once returns: there is nothing left to cancel."""

    def cancel(self) -> None:
        pass


class _ListenerLookup:
    """The daemon's one sock_diag socket for tcp checks, opened at the first; where it cannot be
    (or a lookup fails), checks connect instead."""

    def __init__(self) -> None:
        self._diag = SockDiagOrElse(log, "tcp checks connect")

    def available(self) -> bool:
        return self._diag.available()

    def check(self, target: Target, done: Done) -> Running:
        assert target.family is not None
        wildcard = "::" if target.family == socket.AF_INET6 else "0.0.0.0"
        try:
            found = self._diag.lookup(target.family, (target.host, target.port), (wildcard, 0))
        except OSError:  # logged; connect from now on
            return _connect(target, done)
        done(_listener_result(found))
        return _Finished()


_listeners = _ListenerLookup()


def _listener_result(found: TcpSocket | None) -> ProbeResult:
    if found is None or found.state != TCP_LISTEN:
        return ProbeResult(False, "tcp connect refused")  # what a connect gets: nothing listens there
    if found.queued > found.backlog:  # as the kernel judges it: a new connection would be dropped
        return ProbeResult(False, f"tcp accept queue full ({found.queued} waiting, backlog {found.backlog})")
    return ProbeResult(True, "tcp listening")


async def _http(target: Target, request: bytes) -> ProbeResult:
    loop = asyncio.get_running_loop()
    try:
        sock = await connect(target)
    except OSError as exc:
        return _connect_failure("http", exc)
    head = b""
    try:
        await loop.sock_sendall(sock, request)
        while b"\n" not in head and len(head) < STATUS_LINE_LIMIT:  # only the status line is read
            chunk = await loop.sock_recv(sock, STATUS_LINE_LIMIT - len(head))
            if not chunk:
                break
            head += chunk
    except OSError as exc:
        return ProbeResult(False, f"http failed: {exc.strerror or exc}")
    finally:
        sock.close()
    found = _STATUS_LINE.match(head)
    if found is None:
        if not head:
            return ProbeResult(False, "http closed before a response")
        too_long = b"\n" not in head and len(head) >= STATUS_LINE_LIMIT
        return ProbeResult(False, "http bad response" + (": status line too long" if too_long else ""))
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
    except Exception as exc:
        output.close()
        return ProbeResult(False, spawn_error_text(exc))
    finally:
        os.close(write_fd)
    try:
        await asyncio.wait([child.exited])  # never cancels the exit the process table resolves
        returncode = child.exited.result()
    except asyncio.CancelledError:  # its timeout, or the checker stopped: nothing of it survives
        await child.stop(signal.SIGKILL, KILL_GRACE)
        raise
    finally:
        child.kill_leftovers()
        text = output.close()
    detail = f"exit code {returncode}" if returncode >= 0 else describe_exit(returncode)
    return ProbeResult(returncode == 0, detail, text)


def job_check_spawner(processes: ProcessTable, spec: JobSpec, env: Mapping[str, str],
                      account: Account | None) -> SpawnCheck:
    """A command check runs like the job's own processes: its user, directory, umask and
    environment, in its own process group, owned by the daemon's process table."""
    check_env = {**env, "TASKMASTER_CHECK": "1"}

    def spawn_check(argv: tuple[str, ...], output_fd: int) -> Child:
        launch = launch_for(replace(spec, argv=argv), check_env, account, unit=f"{spec.name}.check")
        return processes.spawn(launch, output_fd, output_fd)

    return spawn_check
