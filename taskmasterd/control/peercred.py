"""Who is at the other end of a control connection, as the kernel knows it.

A unix socket tells with SO_PEERCRED: the credentials of the process that connected. A loopback
TCP peer owns a socket of its own whose address pair mirrors ours; one sock_diag lookup of that
pair (sockdiag.py, some 15 microseconds, the loop never waits) names its owner. Where netlink is
unavailable (no tcp_diag, a sandbox that forbids AF_NETLINK) the same facts are read from
/proc/net/tcp{,6}, which is slower with many sockets.

Only the peer's own socket counts: the exact address pair, both ends, connected, held by a
process. Anything else the kernel might name — the socket listening on the peer's port (which is
what an exact lookup falls back to once the connection is gone), a TIME_WAIT remnant (uid 0, no
inode) — leaves the peer unidentified, and an unidentified local peer is refused. A peer that is
not on loopback is never given a uid at all: a host elsewhere picks its own source port, so
whatever listens on that port here says nothing about it; only `allow_remote` admits it. Whether
an address is this host's own is the kernel's routing answer (localaddress.py), not a guess from
its form: a local process that connects through a public address of this host is judged by its
uid like any local peer, and cannot pass for a host elsewhere.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

from ..kernel.localaddress import LocalAddresses
from ..kernel.sockdiag import TCP_CONNECTED, SockDiagOrElse

log = logging.getLogger("taskmasterd.peercred")

_UCRED = struct.Struct("=iII")  # pid, uid, gid


@dataclass(frozen=True, slots=True)
class Peer:
    """uid: the owner of the connecting socket, or None when the kernel cannot tell (a host
    elsewhere, or a socket closed before it was looked at). address: a TCP peer's IP (an
    IPv4-mapped IPv6 address written as IPv4), None on a unix socket. elsewhere: the address is
    not this host's (then uid is None: only allow_remote can admit it)."""

    uid: int | None
    address: str | None = None
    elsewhere: bool = False


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
        self._routes: LocalAddresses | None = None
        try:
            self._routes = LocalAddresses()
        except OSError as exc:
            log.warning("rtnetlink is unavailable (%s): every TCP peer not on loopback is taken for a host "
                        "elsewhere", exc.strerror or exc)

    def close(self) -> None:
        self._diag.close()
        if self._routes is not None:
            self._routes.close()

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
        if not ipaddress.ip_address(address).is_loopback and not self._is_ours(family, address):
            return Peer(None, address, elsewhere=True)
        return Peer(self.tcp_owner(family, (address, theirs[1]), (our_address, ours[1])), address)

    def _is_ours(self, family: int, address: str) -> bool:
        if self._routes is None:
            return False
        try:
            return self._routes.is_local(family, address)
        except OSError as exc:
            log.warning("rtnetlink failed (%s): every TCP peer not on loopback is taken for a host elsewhere",
                        exc.strerror or exc)
            self._routes.close()
            self._routes = None
            return False

    def tcp_owner(self, family: int, peer: tuple[str, int], ours: tuple[str, int]) -> int | None:
        """The uid holding the connected TCP socket bound to `peer` and connected to `ours` on
        this host, or None if there is none (the peer has closed; no such connection)."""
        if self._diag.available():
            try:
                found = self._diag.connection(family, peer, ours)
                return found.uid if found is not None else None
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
    at = listing.find(needle)  # the exact pair: a listener's line reads "<peer> 00000000:0000"
    if at < 0:
        return None
    fields = listing[at:listing.find(b"\n", at)].split()
    # local remote state queues timer retransmits uid timeout inode
    state, uid, inode = int(fields[2], 16), int(fields[6]), int(fields[8])
    return uid if inode and state in TCP_CONNECTED else None
