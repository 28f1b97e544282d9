"""Whether an IP address is one of this host's own, as the kernel routes it.

One rtnetlink RTM_GETROUTE request for the address (answered during the send, like sock_diag's):
the route's type is RTN_LOCAL exactly when a packet to that address would be delivered here. A
control connection from such an address comes from a process on this host, whatever interface
the address is on; one from any other address comes from a host elsewhere.
"""
from __future__ import annotations

import errno
import itertools
import socket
import struct

NETLINK_ROUTE = 0
RTM_GETROUTE = 26
RTM_NEWROUTE = 24
RTN_LOCAL = 2
RTA_DST = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_ATTRIBUTE = struct.Struct("=HH")  # rtattr: length, type
_TYPE_OFFSET = _HEADER.size + 7


class LocalAddresses:
    """A netlink socket for route lookups. `is_local` raises OSError where rtnetlink is
    unavailable (a sandbox without AF_NETLINK); the caller then treats the address as elsewhere."""

    def __init__(self) -> None:
        self._sequence = itertools.count(1)
        self._netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                      NETLINK_ROUTE)

    def close(self) -> None:
        self._netlink.close()

    def is_local(self, family: int, address: str) -> bool:
        raw = socket.inet_pton(family, address)
        sequence = next(self._sequence) & 0xFFFFFFFF
        body = _RTMSG.pack(family, len(raw) * 8, 0, 0, 0, 0, 0, 0, 0) + _ATTRIBUTE.pack(_ATTRIBUTE.size + len(raw),
                                                                                      RTA_DST) + raw
        self._netlink.send(_HEADER.pack(_HEADER.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, sequence, 0) + body)
        while True:  # skip what answers an earlier request that failed halfway
            try:
                reply = self._netlink.recv(8192)
            except BlockingIOError:
                raise OSError(errno.ETIMEDOUT, "no route reply queued after the request") from None
            if len(reply) < _HEADER.size + 4:
                raise OSError(errno.EPROTO, "short netlink reply")
            _, kind, _, answered, _ = _HEADER.unpack_from(reply)
            if answered == sequence:
                break
        if kind == NLMSG_ERROR:
            return False  # no route to it at all (ENETUNREACH and the like): not ours
        if kind != RTM_NEWROUTE or len(reply) <= _TYPE_OFFSET:
            raise OSError(errno.EPROTO, f"unexpected netlink reply type {kind}")
        return reply[_TYPE_OFFSET] == RTN_LOCAL
