"""The daemon's own log in memory: the last lines for `maintail`, and a feed for its followers.

A logging handler next to the daemon's stream or file handler, so it works the same in the
foreground (log on stderr) and as a daemon (log file). Records may come from worker threads
(the Colonies key store runs in one): those are handed to the loop thread before they reach a
follower's queue.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque

from .fanout import Fanout
from .following import FollowOptions, recent_then_stream
from .reply import Reply, fail

RING_LINES = 1000  # lines kept for `maintail`
QUEUE = 1000  # lines a follower may be behind before it loses the oldest


class RingHandler(logging.Handler):
    def __init__(self, capacity: int = RING_LINES) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=capacity)
        self._fanout: Fanout[str] = Fanout(QUEUE)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self.lines.append(line)
        if not self._fanout.subscribers:
            return
        if threading.get_ident() == self._loop_thread:
            self._fanout.publish(line)
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fanout.publish, line)

    def follow(self, options: FollowOptions) -> Reply:
        """The last `options.last` lines as a `file` reply (job ""), with `follow` a stream of
        each later batch."""
        if options.follow:
            self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        return recent_then_stream(self._fanout, self.lines, options, _lines_reply)


def _lines_reply(lines: list[str], lost: int) -> Reply:
    text = "".join(lines)
    if lost:
        text = f"[taskmasterd: {lost} lines of the daemon's log were lost here: the client reads too slowly]\n" + text
    return Reply("file", job="", data=text.encode("utf-8", "replace"))


def installed() -> RingHandler | None:
    """The ring handler on the root logger (daemon.setup_logging puts it there)."""
    return next((h for h in logging.getLogger().handlers if isinstance(h, RingHandler)), None)


def follow(options: FollowOptions) -> Reply:
    ring = installed()
    if ring is None:
        return fail("this supervisor keeps no log of its own in memory (it is not running as taskmasterd)")
    return ring.follow(options)
