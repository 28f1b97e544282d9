"""A non-blocking TCP connect on loop callbacks alone: no task, future or coroutine.

The tcp health check is the commonest and, for a thousand instances checked every 10 s, runs a
hundred times a second; asyncio's sock_connect behind a task costs twice the kernel's own work
for the connect (measured: 150 µs a check against 70 µs for a bare non-blocking connect).
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import select
import socket
from dataclasses import dataclass
from typing import Callable

# The connected socket (the receiver owns it), or why there is none.
Outcome = socket.socket | OSError


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    family: socket.AddressFamily | None  # None: a host name, resolved at each connect

    @classmethod
    def of(cls, host: str, port: int) -> Target:
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        except ValueError:
            family = None
        return cls(host, port, family)


class Connect:
    """One connect to `target`; `done` gets the outcome, never after cancel(), and maybe from
    within the constructor: a handshake on loopback is over when connect() returns, and taking
    it then spares the loop a registration and a wake-up. A host name is resolved in the loop's
    executor and each of its addresses tried in turn ("localhost" may give ::1 first to a server
    listening on 127.0.0.1 only)."""

    def __init__(self, target: Target, done: Callable[[Outcome], None], loop: asyncio.AbstractEventLoop):
        self._done: Callable[[Outcome], None] | None = done
        self._loop = loop
        self._sock: socket.socket | None = None
        self._resolving: asyncio.Future | None = None
        self._candidates: list[tuple[int, tuple]] = []
        if target.family is not None:
            self._candidates.append((target.family, (target.host, target.port)))
            self._try_next()
        else:
            self._resolving = loop.run_in_executor(None, socket.getaddrinfo, target.host, target.port, 0,
                                                   socket.SOCK_STREAM)
            self._resolving.add_done_callback(self._resolved)

    def cancel(self) -> None:
        self._done = None
        if self._resolving is not None:
            self._resolving.cancel()
        self._close()

    def _resolved(self, resolving: asyncio.Future) -> None:
        self._resolving = None
        if self._done is None:
            return
        try:
            self._candidates = [(info[0], info[4]) for info in resolving.result()]
        except OSError as exc:  # socket.gaierror
            self._finish(exc)
            return
        self._try_next()

    def _try_next(self, error: OSError | None = None) -> None:
        while self._candidates:
            family, address = self._candidates.pop(0)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            except OSError as exc:  # no descriptor left
                error = exc
                continue
            try:
                code = sock.connect_ex(address)
            except OSError as exc:
                code = exc.errno or errno.EINVAL
            if code in (errno.EINPROGRESS, 0):
                self._sock = sock
                events = select.POLLOUT if code == 0 else _poll_now(sock)
                if events == select.POLLOUT:  # connected, and no error to ask SO_ERROR about
                    self._finish(None)
                elif events:
                    self._connected()
                else:
                    self._loop.add_writer(sock.fileno(), self._writable)
                return
            sock.close()
            error = OSError(code, os.strerror(code))
        self._finish(error or OSError(errno.EHOSTUNREACH, "the host name has no address"))

    def _writable(self) -> None:
        assert self._sock is not None
        self._loop.remove_writer(self._sock.fileno())
        self._connected()

    def _connected(self) -> None:
        """The connect is over: done, or refused (then the next address)."""
        assert self._sock is not None
        code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == 0:
            self._finish(None)
        else:
            self._close()
            self._try_next(OSError(code, os.strerror(code)))

    def _finish(self, error: OSError | None) -> None:
        done, self._done = self._done, None
        outcome: Outcome
        if error is None:
            assert self._sock is not None and done is not None  # cancel() closes the socket
            outcome, self._sock = self._sock, None
        else:
            outcome = error
        if done is not None:
            done(outcome)

    def _close(self) -> None:
        if self._sock is not None:
            self._loop.remove_writer(self._sock.fileno())
            self._sock.close()
            self._sock = None


def _poll_now(sock: socket.socket) -> int:
    """The socket's events now (0: the connect is still under way)."""
    poller = select.poll()  # not select(): the daemon's descriptors go past FD_SETSIZE
    poller.register(sock.fileno(), select.POLLOUT)
    ready = poller.poll(0)
    return ready[0][1] if ready else 0


async def connect(target: Target) -> socket.socket:
    """The same for a coroutine: a connected non-blocking socket, or the OSError raised."""
    loop = asyncio.get_running_loop()
    arrived: asyncio.Future[Outcome] = loop.create_future()

    def done(outcome: Outcome) -> None:
        if not arrived.done():
            arrived.set_result(outcome)
        elif isinstance(outcome, socket.socket):  # cancelled meanwhile
            outcome.close()

    connecting = Connect(target, done, loop)
    try:
        outcome = await arrived
    except asyncio.CancelledError:
        connecting.cancel()
        raise
    if isinstance(outcome, OSError):
        raise outcome
    return outcome
