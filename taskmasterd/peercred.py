"""Who is at the other end of a control connection, as the kernel knows it.

A unix socket tells with SO_PEERCRED: the credentials of the process that connected. A TCP peer on
this host owns a socket of its own whose address pair mirrors ours; one sock_diag lookup of that
pair (sockdiag.py, some 15 microseconds, the loop never waits) names its owner. Where netlink is
unavailable (no tcp_diag, a sandbox that forbids AF_NETLINK) the same facts are read from
/proc/net/tcp{,6}, which is slower with many sockets.

A socket that is already closed has no owner any more (the kernel reports a TIME_WAIT remnant as
uid 0 with no inode): such a peer is unidentified, never root.
"""
from __future__ import annotations

import logging
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

from .sockdiag import SockDiagOrElse

log = logging.getLogger("taskmasterd.peercred")

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
        self._diag = SockDiagOrElse(log, "TCP peers are identified from /proc/net/tcp")
        self._diag.available()  # opened now: the first peer is not kept waiting for it

    def close(self) -> None:
        self._diag.close()

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
        if self._diag.available():
            try:
                found = self._diag.lookup(family, peer, ours)
                return found.uid if found is not None and found.inode else None
            except OSError:
                pass  # logged; /proc from now on
        return _proc_owner(family, peer, ours)


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
