"""The daemon's own log in memory: the last lines for `maintail`, and a feed for its followers.

A logging handler next to the daemon's stream or file handler, so it works the same in the
foreground (log on stderr) and as a daemon (log file). Records may come from worker threads
(the Colonies key store runs in one): those are handed to the loop thread before they reach a
follower's queue.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import threading
import time
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
        """`record` as DaemonLogHandler leaves it: its message already merged with its args."""
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


class LogWriter:
    """Writes the daemon's log lines from a thread of its own, so a slow terminal, journald or disk
    never blocks the event loop. Lines are written in batches (one write for whatever queued up
    meanwhile, at most BATCH_DELAY late): 10 000 instances starting log 20 000 lines, and a wake-up
    of the thread and a write per line cost the loop a third of its time, through the GIL."""

    BATCH_DELAY = 0.01

    def __init__(self, handler: logging.StreamHandler) -> None:
        self.handler = handler
        self._pending: deque[logging.LogRecord] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="taskmasterd-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, record: logging.LogRecord) -> None:
        """From any thread; cheap: the thread is woken only when it sleeps."""
        self._pending.append(record)
        if not self._wake.is_set():
            self._wake.set()

    def stop(self) -> None:
        """Write what is still queued, then end the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if not self._stopping:
                self._let_a_burst_gather()
            self._wake.clear()
            self._write(self._take())
            if self._stopping and not self._pending:
                return

    def _let_a_burst_gather(self) -> None:
        """Wait BATCH_DELAY, so that a burst goes out in one write. A sleep that fails (seen under
        an interposed clock: libfaketime answers EINVAL) only costs the batching: the thread must
        live on, or every later line of the daemon's log would be lost."""
        try:
            time.sleep(self.BATCH_DELAY)
        except OSError:
            pass

    def _take(self) -> list[logging.LogRecord]:
        batch = []
        while self._pending:
            batch.append(self._pending.popleft())
        return batch

    def _write(self, batch: list[logging.LogRecord]) -> None:
        if not batch:
            return
        handler = self.handler
        try:
            text = "".join(handler.format(record) + handler.terminator for record in batch)
            with handler.lock or contextlib.nullcontext():
                if isinstance(handler, logging.handlers.WatchedFileHandler):
                    handler.reopenIfNeeded()  # after logrotate moved the file, write a fresh one
                handler.stream.write(text)
                handler.stream.flush()
        except Exception:
            handler.handleError(batch[-1])


class DaemonLogHandler(logging.Handler):
    """The daemon's one log handler: each record gets its message merged with its args on the
    calling thread (what they refer to may change later), is handed to the writer, and is kept in
    the ring for `maintail`."""

    def __init__(self, writer: LogWriter, ring: RingHandler) -> None:
        super().__init__()
        self.writer = writer
        self.ring = ring

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg = record.message = record.getMessage()
            record.args = None
            if record.exc_info:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
                record.exc_info = None
            self.writer.put(record)
            self.ring.emit(record)
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
