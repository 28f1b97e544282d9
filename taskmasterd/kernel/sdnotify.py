"""systemd's readiness protocol: one datagram to $NOTIFY_SOCKET (no-op when it is not set).

Sent without blocking: a reader whose queue is full (stuck, or not systemd at all) loses the
datagram rather than freezing the loop that sends it."""
from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            sock.sendto(message.encode(), address)
        return True
    except OSError:  # BlockingIOError included
        return False
