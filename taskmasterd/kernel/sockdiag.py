"""What the kernel knows of one TCP socket on this host, found by its address pair.

One netlink sock_diag request (SOCK_DIAG_BY_FAMILY, an exact lookup, no dump): the kernel answers
during the send, so the reply is already queued when it is read, some 15 microseconds in all, and
the event loop never waits. The exact lookup is the one an arriving packet gets (established
sockets first, then listeners, wildcard binds and dual-stack IPv6 listeners included), so asking
for `local` = an address and port with `remote` = 0.0.0.0:0 finds the socket listening there.

That fallback to a listener is why a connection's owner is taken only from `connection()`: asked
for a pair that no connection holds any more, the kernel answers with whatever listens on the
local port, which is not the socket that was asked for. `connection()` accepts only a socket whose
own address pair is the one asked for, in a connected state, still held by a process.
Used to name the owner of a control connection's peer (peercred) and to tell whether something
listens at a tcp health check's loopback address (probes).
"""
from __future__ import annotations

import errno
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Callable

from .netlink import HEADER, NLMSG_ERROR, NetlinkSocket, error_code

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
TCP_LISTEN = 10
# States of a socket that is one end of a connection, which a process may still hold: established,
# or closing from either side (a client that shut down its writing half waits for our reply).
TCP_CONNECTED = frozenset({1, 4, 5, 8, 9, 11})  # ESTABLISHED FIN_WAIT1 FIN_WAIT2 CLOSE_WAIT LAST_ACK CLOSING
_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2 up to its socket id: family, protocol, ext, pad, states
_SOCKET_ID = struct.Struct("!HH16s16s")  # inet_diag_sockid: ports (big-endian), then source and destination
_TAIL = struct.Struct("=III")  # interface, then the cookie (no cookie: skip the check)
_STATE_OFFSET = HEADER.size + 1  # inet_diag_msg: family, state, timer, retrans, id, expires, ...
_ID_OFFSET = HEADER.size + 4
_QUEUES = struct.Struct("=IIII")  # ... rqueue, wqueue, uid, inode
_QUEUES_OFFSET = HEADER.size + 4 + 48 + 4
_ALL_STATES = 0xFFFFFFFF
_NO_COOKIE = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class TcpSocket:
    """state: TCP_LISTEN and so on. For a listener, `queued` counts the connections waiting for
    accept() and `backlog` is that queue's limit. `inode` is 0 for a socket no process holds any
    more (a TIME_WAIT remnant, reported as uid 0). `local` and `remote`: the socket's own address
    pair as the kernel reports it (a listener's remote is the zero address, port 0)."""

    state: int
    queued: int
    backlog: int
    uid: int
    inode: int
    local: tuple[str, int]
    remote: tuple[str, int]


class SockDiag:
    """A netlink socket for exact lookups; raises OSError where sock_diag is unavailable (no
    tcp_diag module, a sandbox without AF_NETLINK) or cannot find a socket it should."""

    def __init__(self) -> None:
        self._netlink = NetlinkSocket(NETLINK_SOCK_DIAG)
        try:
            self._proves_it_works()
        except OSError:
            self._netlink.close()
            raise

    def close(self) -> None:
        self._netlink.close()

    def lookup(self, family: int, local: tuple[str, int], remote: tuple[str, int]) -> TcpSocket | None:
        """The TCP socket bound to `local` and connected to `remote` (0.0.0.0:0 or [::]:0 for a
        listener), or None when there is none."""
        socket_id = _SOCKET_ID.pack(local[1], remote[1], socket.inet_pton(family, local[0]).ljust(16, b"\0"),
                                    socket.inet_pton(family, remote[0]).ljust(16, b"\0"))
        body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, _ALL_STATES) + socket_id + _TAIL.pack(0, _NO_COOKIE, _NO_COOKIE)
        kind, reply = self._netlink.ask(SOCK_DIAG_BY_FAMILY, body)
        if kind == NLMSG_ERROR:
            code = error_code(reply)
            if code == errno.ENOENT:
                return None
            raise OSError(code, f"sock_diag: {errno.errorcode.get(code, code)}")
        if kind != SOCK_DIAG_BY_FAMILY or len(reply) < _QUEUES_OFFSET + _QUEUES.size:
            raise OSError(errno.EPROTO, f"unexpected netlink reply type {kind}")
        local_port, remote_port, local_raw, remote_raw = _SOCKET_ID.unpack_from(reply, _ID_OFFSET)
        width = 4 if family == socket.AF_INET else 16
        return TcpSocket(reply[_STATE_OFFSET], *_QUEUES.unpack_from(reply, _QUEUES_OFFSET),
                         local=(socket.inet_ntop(family, local_raw[:width]), local_port),
                         remote=(socket.inet_ntop(family, remote_raw[:width]), remote_port))

    def connection(self, family: int, local: tuple[str, int], remote: tuple[str, int]) -> TcpSocket | None:
        """The socket that is exactly this connection's end at `local`, still held by a process;
        None for anything else the kernel may answer with (a listener on that port, a socket no
        process holds, one not connected)."""
        found = self.lookup(family, local, remote)
        if found is None or found.state not in TCP_CONNECTED or not found.inode:
            return None
        if not _same_end(family, found.local, local) or not _same_end(family, found.remote, remote):
            return None
        return found

    def _proves_it_works(self) -> None:
        """Without tcp_diag the kernel answers ENOENT to every lookup, which would look like
        nothing there: find a listener of our own first."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            probe.listen(1)
            found = self.lookup(socket.AF_INET, probe.getsockname(), ("0.0.0.0", 0))
            if found is None or found.state != TCP_LISTEN:
                raise OSError(errno.ENOENT, "sock_diag does not find TCP sockets here")


def _same_end(family: int, reported: tuple[str, int], asked: tuple[str, int]) -> bool:
    return reported[1] == asked[1] and socket.inet_pton(family, reported[0]) == socket.inet_pton(family, asked[0])


class SockDiagOrElse:
    """One SockDiag for a kind of lookup, opened at the first, and given up for good (with one log
    line naming `instead`, what the caller does then) when it cannot be opened or a lookup fails:
    `lookup` then raises OSError and `available` is False."""

    def __init__(self, log: logging.Logger, instead: str) -> None:
        self._log = log
        self._instead = instead
        self._diag: SockDiag | None = None
        self._given_up = False

    def available(self) -> bool:
        if self._diag is None and not self._given_up:
            try:
                self._diag = SockDiag()
            except OSError as exc:
                self._given_up = True
                self._log.info("netlink sock_diag is unavailable (%s): %s", exc.strerror or exc, self._instead)
        return self._diag is not None

    def lookup(self, family: int, local: tuple[str, int], remote: tuple[str, int]) -> TcpSocket | None:
        """SockDiag.lookup, or OSError once given up."""
        return self._ask(SockDiag.lookup, family, local, remote)

    def connection(self, family: int, local: tuple[str, int], remote: tuple[str, int]) -> TcpSocket | None:
        """SockDiag.connection, or OSError once given up."""
        return self._ask(SockDiag.connection, family, local, remote)

    def _ask(self, question: Callable[..., TcpSocket | None], family: int, local: tuple[str, int], remote: tuple[str, int]) -> TcpSocket | None:
        if not self.available():
            raise OSError(errno.ENOPROTOOPT, "sock_diag is not available")
        assert self._diag is not None
        try:
            return question(self._diag, family, local, remote)
        except OSError as exc:
            self._log.warning("netlink sock_diag failed (%s): %s from now on", exc.strerror or exc, self._instead)
            self.give_up()
            raise

    def give_up(self) -> None:
        self._given_up = True
        self.close()

    def close(self) -> None:
        if self._diag is not None:
            self._diag.close()
            self._diag = None
