"""Whether an IP address is one of this host's own, as the kernel routes it.

One rtnetlink RTM_GETROUTE request for the address (answered during the send, like sock_diag's):
the route's type is RTN_LOCAL exactly when a packet to that address would be delivered here. A
control connection from such an address comes from a process on this host, whatever interface
the address is on; one from any other address comes from a host elsewhere.
"""
from __future__ import annotations

import errno
import socket
import struct

from .netlink import HEADER, NLMSG_ERROR, NetlinkSocket

NETLINK_ROUTE = 0
RTM_GETROUTE = 26
RTM_NEWROUTE = 24
RTN_LOCAL = 2
RTA_DST = 1
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_ATTRIBUTE = struct.Struct("=HH")  # rtattr: length, type
_TYPE_OFFSET = HEADER.size + 7


class LocalAddresses:
    """A netlink socket for route lookups. `is_local` raises OSError where rtnetlink is
    unavailable (a sandbox without AF_NETLINK); the caller then treats the address as elsewhere."""

    def __init__(self) -> None:
        self._netlink = NetlinkSocket(NETLINK_ROUTE)

    def close(self) -> None:
        self._netlink.close()

    def is_local(self, family: int, address: str) -> bool:
        raw = socket.inet_pton(family, address)
        body = (_RTMSG.pack(family, len(raw) * 8, 0, 0, 0, 0, 0, 0, 0)
                + _ATTRIBUTE.pack(_ATTRIBUTE.size + len(raw), RTA_DST) + raw)
        kind, reply = self._netlink.ask(RTM_GETROUTE, body, 8192)
        if kind == NLMSG_ERROR:
            return False  # no route to it at all (ENETUNREACH and the like): not ours
        if kind != RTM_NEWROUTE or len(reply) <= _TYPE_OFFSET:
            raise OSError(errno.EPROTO, f"unexpected netlink reply type {kind}")
        return reply[_TYPE_OFFSET] == RTN_LOCAL
