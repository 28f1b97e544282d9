"""The jobs' output on the daemon's own stdout and stderr, each line prefixed: `web[0] | …`.

In container mode an instance whose job names no log file (`stdout`/`stderr` left to their
default) writes into a pipe drained by logcapture.Drain as usual, but into a `ConsoleStream`
instead of a file: its bytes are cut into lines, each prefixed with the instance's label (in a
colour of its job's own when the stream is a terminal) and handed to a `LogWriter` thread, so a
slow `docker logs` reader never blocks the loop. While the writer is full the pipes are not read:
a job writing faster than the stream takes slows down, as it would writing to the stream itself
(and as under Docker's default `mode: blocking`), and loses nothing. Only a stream that has taken
nothing for LogWriter.STALL seconds costs lines, dropped, counted, and said in the stream. A job
that names a file, or discards its output (null), keeps doing so.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import zlib
from typing import TYPE_CHECKING, Callable

from ..observe.daemonlog import LogWriter
from ..processes.logcapture import CHUNK

if TYPE_CHECKING:
    from ..jobfiles.jobfile import JobSpec

MAX_LINE = 16 * 1024  # characters of one line; a longer one is cut into several
_COLOURS = (32, 33, 34, 35, 36, 92, 93, 94, 95, 96)  # ANSI foreground colours, told apart on dark and light


class ConsoleStream:
    """One instance's stream: a sink for logcapture.Drain (room, write, check, rotate)."""

    def __init__(self, writer: LogWriter, prefix: str) -> None:
        self.path = prefix  # what logcapture names in a message about this sink
        self.dropped = 0
        self._writer = writer
        self._prefix = prefix
        self._partial = b""

    def room(self) -> int:
        return CHUNK

    def room_or_wait(self, resume: Callable[[], None]) -> bool:
        """Whether the writer takes more now; if not, `resume` is called on the loop once it does
        (or once the stream has stalled long enough for what comes to be dropped)."""
        loop = asyncio.get_running_loop()

        def from_writer_thread() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed at exit: nothing to resume
                loop.call_soon_threadsafe(resume)

        if self._writer.room_or_wait(from_writer_thread):
            return True
        loop.call_later(self._writer.STALL, resume)
        return False

    def write(self, data: memoryview) -> None:
        lines = (self._partial + bytes(data)).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            lines.append(self._partial)
            self._partial = b""
        if lines:
            self._put(lines)

    def _put(self, lines: list[bytes]) -> None:
        prefix, pieces = self._prefix, []
        for line in lines:
            text = line.decode("utf-8", "replace")
            if len(text) <= MAX_LINE:
                pieces.append(text)
            else:
                pieces.extend(text[start:start + MAX_LINE] for start in range(0, len(text), MAX_LINE))
        self._writer.put_text("".join(f"{prefix}{piece}\n" for piece in pieces), len(pieces))

    def check(self) -> None:
        """Nothing to check: the daemon's stream is not a file of ours."""

    def rotate(self) -> None:
        """Never called: room() is never 0."""

    def close(self) -> None:
        """The pipe's last writer closed it: a last line without its newline still goes out."""
        if self._partial:
            self._put([self._partial])
            self._partial = b""


class Console:
    """The daemon's stdout and stderr as the destination of jobs' output."""

    def __init__(self, colour: bool | None = None) -> None:
        self._writers = {"stdout": _writer(sys.stdout), "stderr": _writer(sys.stderr)}
        self._colour = {stream: (os.isatty(fd) if colour is None else colour)
                        for stream, fd in (("stdout", 1), ("stderr", 2))}
        for writer in self._writers.values():
            writer.start()

    def stream_for(self, spec: JobSpec, stream: str, index: int) -> ConsoleStream | None:
        """Where instance `index`'s `stream` goes when its job names no file; None when it does
        (or discards it)."""
        if (spec.stdout if stream == "stdout" else spec.stderr) != "":
            return None
        label = f"{spec.name}[{index}]"
        if self._colour[stream]:
            colour = _COLOURS[zlib.crc32(spec.name.encode()) % len(_COLOURS)]
            return ConsoleStream(self._writers[stream], f"\x1b[{colour}m{label} |\x1b[0m ")
        return ConsoleStream(self._writers[stream], f"{label} | ")

    def close(self) -> None:
        """Write out what is queued (at shutdown, after every job has stopped)."""
        for writer in self._writers.values():
            writer.stop()


def _writer(stream: object) -> LogWriter:
    handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(message)s"))
    return LogWriter(handler, what="the jobs' output")
