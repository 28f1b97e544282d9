"""Following a log file: its last lines, then every byte written to it, across rotations.

Event-driven: inotify on the file's directory wakes a follower when the file is written, created,
moved or truncated; nothing polls. Bounded: a wake-up reads at most CHUNK bytes per follower, and
the last lines are found by reading backwards from the end in blocks, never the whole file.

Rotation loses nothing. The daemon rotates `file` → `file.1` and writes on in a new `file`
(logrotate does the same with `create`): the follower keeps the old file open, reads it to its
end, and goes on at the start of the new one; the old one is read once more and closed only after
the new one has data, so late writes to it (logrotate before the daemon reopens) are kept too. A
file truncated in place (`copytruncate`, or rotation with no backups) is read again from its start.

A follower holds at most MAX_RETIRED rotated-away files: whoever owns the log directory (the job's
user) could otherwise make it hold one descriptor per file it puts at the path. Past that the
oldest is closed, and only writes that still reach a file rotated away that many times are lost.
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Sequence

from ..kernel import inotify
from ..processes.logcapture import MARK_EVERY
from ..reply import Reply
from ..kernel.safepath import UnsafePath, open_read

CHUNK = 64 * 1024  # bytes read per wake-up and per `file` reply
BLOCK = 64 * 1024  # bytes read backwards at a time when looking for the last lines
MAX_TAIL = 8 * 1024 * 1024  # at most this much of a file's end is read for its last lines
MAX_RETIRED = 2  # rotated-away files a follower keeps reading for late writes
MASK = (inotify.IN_MODIFY | inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM
        | inotify.IN_DELETE | inotify.IN_CLOSE_WRITE)


async def last_lines(fd: int, end: int, count: int, start: int = 0) -> bytes:
    """The last `count` lines of the file open on `fd` between offsets `start` and `end` (a last
    line without its newline counts), at most MAX_TAIL bytes; the loop runs between blocks."""
    if count <= 0 or end <= start:
        return b""
    blocks: list[bytes] = []
    pos, newlines = end, 0
    while pos > start and newlines <= count and end - pos < MAX_TAIL:
        size = min(BLOCK, pos - start)
        pos -= size
        block = os.pread(fd, size, pos)
        blocks.append(block)
        newlines += block.count(b"\n")
        await asyncio.sleep(0)
    return cut_last_lines(b"".join(reversed(blocks)), count)


def cut_last_lines(text: bytes, count: int) -> bytes:
    """The last `count` lines of `text` (all of it when it has fewer)."""
    pos = len(text) - 1 if text.endswith(b"\n") else len(text)
    for _ in range(count):
        pos = text.rfind(b"\n", 0, pos)
        if pos < 0:
            return text
    return text[pos + 1:]


class FileFollower:
    """The bytes written to `path` from a given offset on, as `file` replies labelled `label`.
    Iterate it (each `__anext__` waits for new bytes); `aclose()` releases the file and the watch."""

    def __init__(self, path: str, label: str, stamp: bool = False) -> None:
        self.path = path
        self.label = label
        self.stamp = stamp  # each reply says when it was read (`times`): moments after it was written
        directory, self._base = os.path.split(path)
        self._wake = asyncio.Event()
        self._fd = -1
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._retired: list[int] = []  # rotated-away files, kept until the new one has data
        # Watch before the first read, so that no write after it goes unnoticed.
        self._watch = inotify.watch(directory or ".", MASK, self._event, about=self._base)

    def _event(self, name: str | None) -> None:
        if name is None or name == self._base or name.startswith(self._base + "."):
            self._wake.set()

    def open(self) -> tuple[int, int]:
        """Open the file as it is now, to be followed from its end: (fd or -1 when there is no
        file yet, its size)."""
        if self._open_current():
            self._offset = os.lseek(self._fd, 0, os.SEEK_END)
        return self._fd, self._offset

    def _open_current(self) -> bool:
        """Open what is at the path now, to be read from its start; the file open before is kept
        as retired."""
        try:
            fd = open_read(self.path)
        except (FileNotFoundError, UnsafePath):  # an unsafe replacement is not followed
            return False
        info = os.fstat(fd)
        if self._fd >= 0:
            self._retired.append(self._fd)
            if len(self._retired) > MAX_RETIRED:
                os.close(self._retired.pop(0))
        self._fd, self._identity, self._offset = fd, (info.st_dev, info.st_ino), 0
        return True

    def __aiter__(self) -> FileFollower:
        return self

    async def __anext__(self) -> Reply:
        while True:
            self._wake.clear()
            data = self._read_some()
            if data:
                times = {"times": [[0, round(time.time(), 3)]]} if self.stamp else None
                return Reply("file", job=self.label, data=data, value=times)
            await self._wake.wait()

    def _read_some(self) -> bytes:
        data = self._read_retired()
        if data:
            return data
        if self._fd < 0 and not self._open_current():  # a file that appears later: all of it is new
            return b""
        data = os.read(self._fd, CHUNK)
        if data:
            self._offset += len(data)
            return data
        if os.fstat(self._fd).st_size < self._offset:  # truncated in place
            os.lseek(self._fd, 0, os.SEEK_SET)
            self._offset = 0
            return self._read_some()
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return b""  # moved away and not yet created again: the old one may still grow
        if (info.st_dev, info.st_ino) != self._identity and self._open_current():
            return self._read_some()
        return b""

    def _read_retired(self) -> bytes:
        while self._retired:
            moved_on = os.fstat(self._fd).st_size > 0  # asked before the read: no write falls between
            data = os.read(self._retired[0], CHUNK)
            if data or not moved_on:
                return data
            os.close(self._retired.pop(0))
        return b""

    async def aclose(self) -> None:
        self._watch.close()
        for fd in [self._fd, *self._retired]:
            if fd >= 0:
                os.close(fd)
        self._fd, self._retired = -1, []


async def tail(path: str, label: str, last: int, follow: bool, since: float | None = None,
               marks: Sequence[tuple[float, int]] = (), stamp: bool = False) -> Reply:
    """The `file` reply of the last `last` lines of `path` (written from `since` on, as far as the
    file's time `marks` tell); with `follow`, its stream of what is written from there on.
    `stamp`: each reply carries `times`, when its parts were written. OSError when the file's
    directory cannot be watched."""
    follower = None
    if follow:
        follower = FileFollower(path, label, stamp)
        fd, end = follower.open()
    else:
        try:
            fd = open_read(path)
        except FileNotFoundError:
            return Reply("file", job=label, data=b"")
        end = os.fstat(fd).st_size
    try:
        start = 0 if since is None or fd < 0 else since_offset(os.fstat(fd).st_mtime, end, marks, since)
        text = await last_lines(fd, end, last, start) if fd >= 0 else b""
        value = {"times": times_of(marks, end - len(text), end)} if stamp else None
    except BaseException:
        if follower is not None:
            await follower.aclose()
        raise
    finally:
        if follower is None:
            os.close(fd)
    return Reply("file", job=label, data=text, value=value, stream=follower)


def since_offset(mtime: float, end: int, marks: Sequence[tuple[float, int]], since: float) -> int:
    """Where the part of a file written from `since` on begins. A mark is made at most every
    MARK_EVERY, at the first write after that, so what lies between two marks was written within
    MARK_EVERY of the first: it starts at the first mark less than that before `since`. Nothing
    when the file was last written before `since`; the whole file when `since` is before its
    first mark (what came before the marks was written at a time nobody noted)."""
    if mtime < since:
        return end
    for position, (when, offset) in enumerate(marks):
        if when + MARK_EVERY > since:
            return 0 if position == 0 and when > since else min(offset, end)
    return end if marks else 0


def times_of(marks: Sequence[tuple[float, int]], start: int, end: int) -> list[list[float]]:
    """[offset from `start`, Unix time] for the marks of the span: each part of it from its
    offset on was written at that time (to the second). The span's beginning takes the time of
    the mark before it; with none, its first part has no time."""
    times: list[list[float]] = []
    for when, offset in marks:
        if offset >= end:
            break
        if offset <= start:
            times[:] = [[0, round(when, 3)]]
        else:
            times.append([offset - start, round(when, 3)])
    return times
