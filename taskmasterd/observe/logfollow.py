"""Following a log file: its last lines, then every byte written to it, across rotations.

Event-driven: inotify on the file's directory wakes a follower when the file is written, created,
moved or truncated; nothing polls. Bounded: a wake-up reads at most CHUNK bytes per follower, and
the last lines are found by reading backwards from the end in blocks, never the whole file.

Rotation loses nothing. The daemon rotates `file` → `file.1` and writes on in a new `file`
(logrotate does the same with `create`): the follower keeps the old file open, reads it to its
end, and goes on at the start of the new one; the old one is read once more and closed only after
the new one has data, so late writes to it (logrotate before the daemon reopens) are kept too. A
file truncated in place (`copytruncate`, or rotation with no backups) is read again from its start.
"""
from __future__ import annotations

import asyncio
import os

from ..kernel import inotify
from ..reply import Reply
from ..kernel.safepath import UnsafePath, open_read

CHUNK = 64 * 1024  # bytes read per wake-up and per `file` reply
BLOCK = 64 * 1024  # bytes read backwards at a time when looking for the last lines
MAX_TAIL = 8 * 1024 * 1024  # at most this much of a file's end is read for its last lines
MASK = (inotify.IN_MODIFY | inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM
        | inotify.IN_DELETE | inotify.IN_CLOSE_WRITE)


async def last_lines(fd: int, end: int, count: int) -> bytes:
    """The last `count` lines of the file open on `fd` before offset `end` (a last line without
    its newline counts), at most MAX_TAIL bytes; the loop runs between blocks."""
    if count <= 0 or end <= 0:
        return b""
    blocks: list[bytes] = []
    pos, newlines = end, 0
    while pos > 0 and newlines <= count and end - pos < MAX_TAIL:
        size = min(BLOCK, pos)
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

    def __init__(self, path: str, label: str) -> None:
        self.path = path
        self.label = label
        directory, self._base = os.path.split(path)
        self._wake = asyncio.Event()
        self._fd = -1
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._retired: list[int] = []  # rotated-away files, kept until the new one has data
        # Watch before the first read, so that no write after it goes unnoticed.
        self._watch = inotify.watch(directory or ".", MASK, self._event)

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
        self._fd, self._identity, self._offset = fd, (info.st_dev, info.st_ino), 0
        return True

    def __aiter__(self) -> FileFollower:
        return self

    async def __anext__(self) -> Reply:
        while True:
            self._wake.clear()
            data = self._read_some()
            if data:
                return Reply("file", job=self.label, data=data)
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


async def tail(path: str, label: str, last: int, follow: bool) -> Reply:
    """The `file` reply of the last `last` lines of `path`; with `follow`, its stream of what
    is written from there on. OSError when the file's directory cannot be watched."""
    if not follow:
        try:
            fd = open_read(path)
        except FileNotFoundError:
            return Reply("file", job=label, data=b"")
        try:
            return Reply("file", job=label, data=await last_lines(fd, os.fstat(fd).st_size, last))
        finally:
            os.close(fd)
    follower = FileFollower(path, label)
    try:
        fd, end = follower.open()
        text = await last_lines(fd, end, last) if fd >= 0 else b""
    except BaseException:
        await follower.aclose()
        raise
    return Reply("file", job=label, data=text, stream=follower)
