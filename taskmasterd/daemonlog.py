"""The daemon's own log in memory: the last lines for `maintail`, and a feed for its followers.

A logging handler next to the daemon's stream or file handler, so it works the same in the
foreground (log on stderr) and as a daemon (log file). Records may come from worker threads
(the Colonies key store runs in one): those are handed to the loop thread before they reach a
follower's queue.
"""
from __future__ import annotations

import asyncio
import logging
import logging.handlers
import queue
import threading
from collections import deque

from .fanout import Fanout
from .following import FollowOptions, recent_then_stream
from .reply import Reply, fail

RING_LINES = 1000  # lines kept for `maintail`
QUEUE = 1000  # lines a follower may be behind before it loses the oldest


class RingHandler(logging.Handler):
    """Keeps records, formatted only when someone reads them: a thousand instances stopping log
    two thousand lines, and formatting each at once would cost the loop a good part of it."""

    def __init__(self, capacity: int = RING_LINES) -> None:
        super().__init__()
        self.records: deque[logging.LogRecord] = deque(maxlen=capacity)
        self._fanout: Fanout[logging.LogRecord] = Fanout(QUEUE)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """`record` as QueueHandler.prepare leaves it: its message already merged with its args."""
        self.records.append(record)
        if not self._fanout.subscribers:
            return
        if threading.get_ident() == self._loop_thread:
            self._fanout.publish(record)
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fanout.publish, record)

    def follow(self, options: FollowOptions) -> Reply:
        """The last `options.last` lines as a `file` reply (job ""), with `follow` a stream of
        each later batch."""
        if options.follow:
            self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        return recent_then_stream(self._fanout, self.records, options, self._lines_reply)

    def _lines_reply(self, records: list[logging.LogRecord], lost: int) -> Reply:
        text = "".join(self.format(record) + "\n" for record in records)
        if lost:
            text = f"[taskmasterd: {lost} lines of the daemon's log were lost here: the client reads too slowly]\n" + text
        return Reply("file", job="", data=text.encode("utf-8", "replace"))


class QueueAndRing(logging.handlers.QueueHandler):
    """The daemon's one log handler on the loop thread: each record is prepared once (its
    message merged), queued for the writer thread, and kept in the ring for `maintail`."""

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord], ring: RingHandler) -> None:
        super().__init__(records)
        self.ring = ring

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prepared = self.prepare(record)
            self.enqueue(prepared)
            self.ring.emit(prepared)
        except Exception:
            self.handleError(record)


def installed() -> RingHandler | None:
    """The ring of the daemon's log handler (daemon.setup_logging puts it on the root logger)."""
    for handler in logging.getLogger().handlers:
        ring = handler if isinstance(handler, RingHandler) else getattr(handler, "ring", None)
        if isinstance(ring, RingHandler):
            return ring
    return None


def follow(options: FollowOptions) -> Reply:
    ring = installed()
    if ring is None:
        return fail("this supervisor keeps no log of its own in memory (it is not running as taskmasterd)")
    return ring.follow(options)
