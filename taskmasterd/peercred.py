"""Who is at the other end of a control connection, as the kernel knows it.

A unix socket tells with SO_PEERCRED: the credentials of the process that connected. A TCP peer on
this host owns a socket of its own whose address pair mirrors ours; one netlink sock_diag request
(SOCK_DIAG_BY_FAMILY, exact lookup of that pair) names its owner. The kernel answers during the
send, so the reply is already queued when we read it: a round trip of some 15 microseconds, and the
event loop never waits. Where netlink is unavailable (no tcp_diag, a sandbox that forbids
AF_NETLINK) the same facts are read from /proc/net/tcp{,6}, which is slower with many sockets.

A socket that is already closed has no owner any more (the kernel reports a TIME_WAIT remnant as
uid 0 with no inode): such a peer is unidentified, never root.
"""
from __future__ import annotations

import errno
import itertools
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("taskmasterd.peercred")

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2 up to its socket id: family, protocol, ext, pad, states
_SOCKET_ID = struct.Struct("!HH16s16s")  # inet_diag_sockid: ports (big-endian), then source and destination
_TAIL = struct.Struct("=III")  # interface, then the cookie (no cookie: skip the check)
_OWNER = struct.Struct("=II")  # inet_diag_msg's uid and inode
_OWNER_OFFSET = _HEADER.size + 4 + 48 + 12
_ALL_STATES = 0xFFFFFFFF
_NO_COOKIE = 0xFFFFFFFF
_UCRED = struct.Struct("=iII")  # pid, uid, gid


@dataclass(frozen=True, slots=True)
class Peer:
    """uid: the owner of the connecting socket, or None when the kernel cannot tell (a host
    elsewhere, or a socket closed before it was looked at). address: a TCP peer's IP (an
    IPv4-mapped IPv6 address written as IPv4), None on a unix socket."""

    uid: int | None
    address: str | None = None


class SocketLike(Protocol):  # a socket, or asyncio's TransportSocket around one
    family: int

    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...
    def getsockname(self) -> tuple: ...
    def getpeername(self) -> tuple: ...


def _plain(family: int, address: str) -> tuple[int, str]:
    """(family, address) with an IPv4-mapped IPv6 address unmapped (such a peer is IPv4 on the
    wire) and an IPv6 zone dropped."""
    if family == socket.AF_INET6:
        if address.startswith("::ffff:") and "." in address:
            return socket.AF_INET, address[7:]
        return family, address.split("%", 1)[0]
    return family, address


class PeerIdentifier:
    """One per daemon: holds the netlink socket its lookups share."""

    def __init__(self) -> None:
        self._sequence = itertools.count(1)
        self._netlink = self._open_netlink()
        if self._netlink is None:
            log.info("netlink sock_diag is unavailable: TCP peers are identified from /proc/net/tcp")

    def close(self) -> None:
        if self._netlink is not None:
            self._netlink.close()
            self._netlink = None

    def identify(self, sock: SocketLike) -> Peer:
        if sock.family == socket.AF_UNIX:
            _, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            return Peer(uid)
        try:
            ours, theirs = sock.getsockname(), sock.getpeername()
        except OSError:  # reset before we looked
            return Peer(None)
        family, address = _plain(sock.family, theirs[0])
        _, our_address = _plain(sock.family, ours[0])
        return Peer(self.tcp_owner(family, (address, theirs[1]), (our_address, ours[1])), address)

    def tcp_owner(self, family: int, peer: tuple[str, int], ours: tuple[str, int]) -> int | None:
        """The uid owning the TCP socket bound to `peer` and connected to `ours` on this host, or
        None if there is none (the peer is elsewhere, or has closed)."""
        if self._netlink is not None:
            try:
                return _netlink_owner(self._netlink, next(self._sequence), family, peer, ours)
            except OSError as exc:
                log.warning("netlink sock_diag failed (%s): identifying TCP peers from /proc from now on", exc)
                self.close()
        return _proc_owner(family, peer, ours)

    def _open_netlink(self) -> socket.socket | None:
        """A netlink socket that has shown it can find a TCP socket (without tcp_diag the kernel
        answers ENOENT to every lookup, which would look like a peer that is not on this host)."""
        try:
            netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                    NETLINK_SOCK_DIAG)
        except OSError:
            return None
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                probe.listen(1)
                if _netlink_owner(netlink, 0, socket.AF_INET, probe.getsockname(), ("0.0.0.0", 0)) is not None:
                    return netlink
        except OSError:
            pass
        netlink.close()
        return None


def _netlink_owner(netlink: socket.socket, sequence: int, family: int, peer: tuple[str, int],
                   ours: tuple[str, int]) -> int | None:
    sequence &= 0xFFFFFFFF
    socket_id = _SOCKET_ID.pack(peer[1], ours[1], socket.inet_pton(family, peer[0]).ljust(16, b"\0"),
                                socket.inet_pton(family, ours[0]).ljust(16, b"\0"))
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, _ALL_STATES) + socket_id + _TAIL.pack(0, _NO_COOKIE, _NO_COOKIE)
    netlink.send(_HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, sequence, 0) + body)
    while True:  # skip what answers an earlier request that failed halfway
        try:
            reply = netlink.recv(4096)
        except BlockingIOError:
            raise OSError(errno.ETIMEDOUT, "no reply queued after the request") from None
        if len(reply) < _HEADER.size + 4:
            raise OSError(errno.EPROTO, "short netlink reply")
        _, kind, _, answered, _ = _HEADER.unpack_from(reply)
        if answered == sequence:
            break
    if kind == NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", reply, _HEADER.size)
        if -code == errno.ENOENT:
            return None
        raise OSError(-code, f"sock_diag: {errno.errorcode.get(-code, -code)}")
    if kind != SOCK_DIAG_BY_FAMILY or len(reply) < _OWNER_OFFSET + _OWNER.size:
        raise OSError(errno.EPROTO, f"unexpected netlink reply type {kind}")
    uid, inode = _OWNER.unpack_from(reply, _OWNER_OFFSET)
    return uid if inode else None


def _proc_address(family: int, address: str, port: int) -> str:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host byte order, then the port."""
    raw = socket.inet_pton(family, address)
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    return "".join(f"{word:08X}" for word in words) + f":{port:04X}"


def _proc_owner(family: int, peer: tuple[str, int], ours: tuple[str, int]) -> int | None:
    table = "/proc/net/tcp" if family == socket.AF_INET else "/proc/net/tcp6"
    needle = f" {_proc_address(family, *peer)} {_proc_address(family, *ours)} ".encode()
    try:
        with open(table, "rb") as source:
            listing = source.read()
    except OSError:
        return None
    at = listing.find(needle)
    if at < 0:
        return None
    fields = listing[at:listing.find(b"\n", at)].split()
    # local remote state queues timer retransmits uid timeout inode
    uid, inode = int(fields[6]), int(fields[8])
    return uid if inode else None
