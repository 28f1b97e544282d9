"""Accepting control connections, so that each peer is named in the very callback that accepts it.

asyncio's own server accepts a burst of connections in one callback and makes each one's
transport in a task of its own, iterations later; a peer named only then may have gone (and its
port been taken by someone else) in between. Here the listener's readiness callback accepts and
hands each socket to `on_accept` at once, which names the peer before the loop runs anything
else. Bounded: at most ACCEPTS_PER_WAKE connections per wake-up, so a flood cannot hold the loop.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Callable

log = logging.getLogger("taskmasterd.server")

ACCEPTS_PER_WAKE = 64
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
PAUSE_WHEN_OUT = 1.0  # seconds without accepting once the process is out of descriptors or memory


class Acceptor:
    def __init__(self, listener: socket.socket, on_accept: Callable[[socket.socket], None]) -> None:
        self._listener = listener
        self._on_accept = on_accept
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resume: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._listener.setblocking(False)
        self._listener.listen(socket.SOMAXCONN)  # again: a listener handed over may have a small backlog
        self._loop.add_reader(self._listener.fileno(), self._ready)

    def _ready(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    raise
                log.warning("cannot accept control connections for %g s: %s", PAUSE_WHEN_OUT, exc.strerror)
                self._pause()
                return
            self._on_accept(sock)

    def _pause(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self._listener.fileno())
        self._resume = self._loop.call_later(PAUSE_WHEN_OUT, self._loop.add_reader, self._listener.fileno(), self._ready)

    def close(self) -> None:
        """Stop accepting and close the listener (connections already made are the server's)."""
        if self._resume is not None:
            self._resume.cancel()
        if self._loop is not None and self._listener.fileno() >= 0:
            self._loop.remove_reader(self._listener.fileno())
        self._listener.close()
