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
import os
import select
import threading
import time
from collections import deque
from typing import Callable

from .fanout import Fanout
from .following import FollowOptions, recent_then_stream
from ..reply import Reply, fail

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
    of the thread and a write per line cost the loop a third of its time, through the GIL.

    A stream that takes nothing (a pager that stopped reading, a full disk) costs lines, never the
    daemon: at most MAX_PENDING wait, the rest are dropped, a failed write is lost without a
    traceback, and the next line written says how many went; `stop` waits STOP_GRACE at most.

    Jobs' output (container mode) comes as blocks of text with flow control instead: a writer
    holding MAX_PENDING_TEXT characters has no room (`room_or_wait`), and the pipes feeding it are
    left unread until it is back under half of that, so a burst slows the jobs that write it and
    costs no line. Only a stream that has taken nothing for STALL seconds costs lines (dropped,
    counted, said), so one stuck reader does not hang every job that writes."""

    BATCH_DELAY = 0.01
    MAX_PENDING = 10_000  # records (a few MB); beyond, the log only costs memory and tells nothing
    MAX_PENDING_TEXT = 4 << 20  # characters of jobs' output queued before their pipes wait
    STALL = 5.0  # seconds without a finished write, with text waiting, after which text is dropped
    STOP_GRACE = 2.0  # seconds `stop` gives a stuck stream before the process exits without it

    def __init__(self, handler: logging.StreamHandler, what: str = "the daemon's log") -> None:
        self.handler = handler
        self.what = what  # named in the notes of lines dropped or lost
        self._pending: deque[logging.LogRecord | str] = deque()
        self._pending_text = 0  # characters of text blocks queued
        self._progress = time.monotonic()  # when the last write finished, or text began to wait
        self._room_waiters: list[Callable[[], None]] = []
        self._wake = threading.Event()
        self._stopping = False
        self._dropped = 0  # records refused since the last line written: the queue was full
        self._lost = 0  # records whose write failed since then
        self._why_lost = ""
        self._mid_line = False  # the last write stopped inside a line
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="taskmasterd-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, record: logging.LogRecord) -> None:
        """From any thread; cheap: the thread is woken only when it sleeps."""
        if len(self._pending) >= self.MAX_PENDING:
            with self._count_lock:
                self._dropped += 1
            if not self._wake.is_set():
                self._wake.set()
            return
        self._pending.append(record)
        if not self._wake.is_set():
            self._wake.set()

    def put_text(self, text: str, lines: int) -> None:
        """A block of `lines` whole lines, each with its newline, written as it is (from the loop
        thread; its callers ask `room_or_wait` first). Past MAX_PENDING_TEXT, with the stream
        stalled, it is dropped and counted."""
        with self._count_lock:
            if self._pending_text >= self.MAX_PENDING_TEXT and self.stalled():
                self._dropped += lines
                self._wake.set()  # the thread says so as soon as the stream moves
                return
            if not self._pending_text:
                self._progress = time.monotonic()
            self._pending_text += len(text)
        self._pending.append(text)
        if not self._wake.is_set():
            self._wake.set()

    def room_or_wait(self, resume: Callable[[], None]) -> bool:
        """Whether text may be put now: under MAX_PENDING_TEXT, or the stream has stalled (what is
        put then is dropped). If not, `resume` is called, from the writer's thread, once the queue
        is back under half of that."""
        with self._count_lock:
            if self._pending_text < self.MAX_PENDING_TEXT or self.stalled():
                return True
            self._room_waiters.append(resume)
            return False

    def stalled(self) -> bool:
        return bool(self._pending_text) and time.monotonic() - self._progress > self.STALL

    def stop(self) -> None:
        """Write what is still queued, then end the thread; give up after STOP_GRACE (the thread
        is a daemon thread: a stream stuck for good does not keep the process alive)."""
        self._stopping = True
        self._wake.set()
        self._thread.join(self.STOP_GRACE)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if not self._stopping:
                self._let_a_burst_gather()
            self._wake.clear()
            batch, text = self._take()
            self._write(batch)
            self._wrote(text)
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

    def _take(self) -> tuple[list[logging.LogRecord | str], int]:
        """What is queued, and how many characters of text blocks that is."""
        batch, text = [], 0
        while self._pending:
            item = self._pending.popleft()
            batch.append(item)
            if isinstance(item, str):
                text += len(item)
        return batch, text

    def _wrote(self, taken: int) -> None:
        """After a write (done or failed): the `taken` characters of text it held no longer wait;
        pipes paused for room may be read again."""
        with self._count_lock:
            self._progress = time.monotonic()
            self._pending_text -= taken
            if self._pending_text >= self.MAX_PENDING_TEXT // 2 or not self._room_waiters:
                return
            waiters, self._room_waiters = self._room_waiters, []
        for resume in waiters:
            resume()

    def _write(self, batch: list[logging.LogRecord | str]) -> None:
        """The batch, after a note of the lines dropped or lost since the last write (written on
        its own when nothing else comes: a stream that moves again says what it missed)."""
        with self._count_lock:
            dropped, lost, why = self._dropped, self._lost, self._why_lost
        if not batch and not dropped and not lost:
            return
        handler = self.handler
        try:
            data = "".join(item if isinstance(item, str) else handler.format(item) + handler.terminator
                           for item in batch).encode("utf-8", "replace")
        except Exception:
            handler.handleError(batch[-1])  # a bug of ours, not of the stream: say it
            return
        notes = []
        if dropped:
            notes.append(f"{dropped} lines of {self.what} were dropped: they came faster than it could be written")
        if lost:
            notes.append(f"{lost} lines of {self.what} were lost: {why}")
        head = b"\n" if self._mid_line else b""  # a write that failed halfway left half a line
        head += "".join(f"[taskmasterd: {note}]\n" for note in notes).encode()
        # The handler's lock is not held across the write: logging.shutdown takes it at exit, and
        # a stream stuck for good would keep the process from exiting.
        with handler.lock or contextlib.nullcontext():
            try:
                if isinstance(handler, logging.handlers.WatchedFileHandler):
                    handler.reopenIfNeeded()  # after logrotate moved the file, write a fresh one
                handler.stream.flush()  # whatever else was written to it goes first
                fd = handler.stream.fileno()
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed
                self._count_lost(data.count(b"\n"), exc)
                return
        written, error = _write_all(fd, head + data)
        if error is not None:
            self._mid_line = 0 < written and (head + data)[written - 1:written] != b"\n"
            self._count_lost(data[max(0, written - len(head)):].count(b"\n"), error)
            return
        self._mid_line = False
        with self._count_lock:  # what the notes told is told; what came meanwhile is not
            self._dropped -= dropped
            self._lost -= lost

    def _count_lost(self, lines: int, error: OSError | ValueError) -> None:
        with self._count_lock:
            self._lost += lines
            self._why_lost = getattr(error, "strerror", None) or str(error)


def _write_all(fd: int, data: bytes) -> tuple[int, OSError | None]:
    """Write all of `data` (waiting on a non-blocking stream); (bytes written, the error that
    stopped it or None). os.write, not the stream's buffers: after a failure, what was written
    is known, and nothing unwritten lingers in a buffer to come out later."""
    view, written = memoryview(data), 0
    while written < len(data):
        try:
            written += os.write(fd, view[written:])
        except BlockingIOError:
            waiter = select.poll()  # not select(): the fd may be above FD_SETSIZE after a reopen
            waiter.register(fd, select.POLLOUT)
            waiter.poll(1000)
        except InterruptedError:
            continue
        except OSError as exc:
            return written, exc
    return written, None


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
