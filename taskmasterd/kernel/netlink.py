"""One netlink request and its reply, for the kernel's answers that come during the send
(sock_diag's exact lookup, rtnetlink's route lookup): the reply is already queued when it is
read, so the loop never waits, and a socket that has nothing queued is a failure, not a wait."""
from __future__ import annotations

import errno
import itertools
import socket
import struct

NLM_F_REQUEST = 1
NLMSG_ERROR = 2
HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id


class NetlinkSocket:
    """A non-blocking netlink socket of `protocol`; OSError where the sandbox forbids it."""

    def __init__(self, protocol: int) -> None:
        self._sequence = itertools.count(1)
        self._netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                      protocol)

    def close(self) -> None:
        self._netlink.close()

    def ask(self, kind: int, body: bytes, size: int = 4096) -> tuple[int, bytes]:
        """Send one request of message type `kind`; (the reply's type, the whole reply). A reply
        of type NLMSG_ERROR carries the negative errno right after the header."""
        sequence = next(self._sequence) & 0xFFFFFFFF
        self._netlink.send(HEADER.pack(HEADER.size + len(body), kind, NLM_F_REQUEST, sequence, 0) + body)
        while True:  # skip what answers an earlier request that failed halfway
            try:
                reply = self._netlink.recv(size)
            except BlockingIOError:
                raise OSError(errno.ETIMEDOUT, "no netlink reply queued after the request") from None
            if len(reply) < HEADER.size + 4:
                raise OSError(errno.EPROTO, "short netlink reply")
            _, answer, _, answered, _ = HEADER.unpack_from(reply)
            if answered == sequence:
                return answer, reply


def error_code(reply: bytes) -> int:
    """The errno of an NLMSG_ERROR reply (0: an acknowledgement)."""
    (code,) = struct.unpack_from("=i", reply, HEADER.size)
    return -code
