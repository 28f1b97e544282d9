"""Watch the jobs directory with inotify: the kernel says which file changed, nothing is polled.

Files: a complete write (IN_CLOSE_WRITE), a rename in or out, a removal, and a new link
(`ln`/`ln -s`, which only makes IN_CREATE) are reported — a plain new file waits for its writer to
close it, so it is never read half-written. Changes settle before they are reported (an editor's
save is several events), and a file that vanished is reported only if it is still gone a moment
later (an editor that renames the old file away before writing the new one restarts nothing).

The directory itself: its parent is watched too, so a directory moved, deleted or swapped (a
deploy's `mv new jobs`, or `ln -sfn` of a symlinked jobs dir) re-arms the watch and rescans once
the path names a directory again; while it names nothing, the jobs keep running as they are. Its
going is reported as a rescan too, so that the supervisor (which then reads nothing, and says why
in `status`) knows at once. A change of the directory's own mode or owner rescans too: the
supervisor reads only a directory that is safe (JobsDirectory.problem), and one made safe again
is read at once.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import stat
import struct
from typing import Callable, Iterable

log = logging.getLogger("taskmasterd.watcher")

IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
FILE_EVENTS = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_CREATE
DIR_MASK = FILE_EVENTS | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
PARENT_MASK = IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_ATTRIB | IN_ONLYDIR
_EVENT = struct.Struct("iIII")
SETTLE = 0.05  # quiet time after the last event before reading
MAX_SETTLE = 0.5  # ... but never later than this after the first one
REMOVAL_GRACE = 0.5  # a vanished file must stay gone this long to count as removed


class DirectoryWatcher:
    def __init__(self, path: str, name_of: Callable[[str], str | None],
                 on_change: Callable[[Iterable[str] | None], None]):
        self.path = path
        self._name_of = name_of  # file name -> job name, or None for files the daemon ignores
        self._on_change = on_change
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = -1
        self._dir_wd = -1
        self._parent_wd = -1
        self._pending: set[str] = set()
        self._rescan = False
        self._first_event = 0.0
        self._flush: asyncio.TimerHandle | None = None
        self._removals: dict[str, asyncio.TimerHandle] = {}

    def start(self) -> bool:
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            log.warning("inotify unavailable (%s): job files are read on SIGHUP and `restart` only",
                        os.strerror(ctypes.get_errno()))
            return False
        self._fd = fd
        parent = os.path.dirname(os.path.abspath(self.path))
        self._parent_wd = self._add_watch(parent, PARENT_MASK)
        if self._parent_wd < 0:
            log.warning("cannot watch %s: %s; a moved or swapped jobs directory will not be noticed",
                        parent, os.strerror(ctypes.get_errno()))
        self._watch_directory()
        asyncio.get_running_loop().add_reader(fd, self._read)
        return True

    def _add_watch(self, path: str, mask: int) -> int:
        return self._libc.inotify_add_watch(self._fd, os.fsencode(path), mask)

    def _watch_directory(self) -> bool:
        if self._dir_wd >= 0:
            self._libc.inotify_rm_watch(self._fd, self._dir_wd)
            self._dir_wd = -1
        wd = self._add_watch(self.path, DIR_MASK)  # follows a symlinked jobs dir to its target
        if wd < 0:
            log.warning("jobs directory %s is not there (%s); the jobs keep running until it comes back",
                        self.path, os.strerror(ctypes.get_errno()))
            return False
        self._dir_wd = wd
        return True

    def _read(self) -> None:
        try:
            buf = os.read(self._fd, 64 * 1024)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return
            raise
        offset = 0
        base = os.path.basename(os.path.abspath(self.path))
        while offset + _EVENT.size <= len(buf):
            wd, mask, _cookie, length = _EVENT.unpack_from(buf, offset)
            raw = buf[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            filename = os.fsdecode(raw)
            if mask & IN_Q_OVERFLOW:
                self._rescan = True
            elif wd == self._parent_wd:
                if filename == base and not mask & IN_ATTRIB:
                    self._rearm()
                elif not filename and mask & IN_ATTRIB:  # the parent's mode: whether it may be swapped
                    self._rescan = True
            elif wd == self._dir_wd:
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    self._rearm()
                elif not filename:
                    if mask & IN_ATTRIB:  # the directory's mode or owner: whether it may be read
                        self._rescan = True
                elif not mask & IN_ATTRIB:
                    self._file_event(filename, mask)
        if self._pending or self._rescan:
            self._schedule()

    def _file_event(self, filename: str, mask: int) -> None:
        name = self._name_of(filename)
        if name is None:
            return
        if mask & IN_CREATE and not _is_link_or_special(os.path.join(self.path, filename)):
            return  # a plain new file: read it when its writer closes it
        self._pending.add(name)

    def _rearm(self) -> None:
        """The path may name another directory now (or none): watch what it names and rescan."""
        if os.path.isdir(self.path) and self._watch_directory():
            log.info("jobs directory %s changed under the daemon; watching it again and rescanning", self.path)
        elif self._dir_wd >= 0:
            self._libc.inotify_rm_watch(self._fd, self._dir_wd)
            self._dir_wd = -1
            log.warning("jobs directory %s is gone; the jobs keep running until it comes back", self.path)
        self._rescan = True  # gone or back: the supervisor looks (and reads nothing while it is gone)
        self._schedule()

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._flush is None:
            self._first_event = now
        else:
            self._flush.cancel()
        self._flush = loop.call_at(min(now + SETTLE, self._first_event + MAX_SETTLE), self._deliver)

    def _deliver(self) -> None:
        self._flush = None
        names, self._pending = self._pending, set()
        if self._rescan:
            self._rescan = False
            self._on_change(None)
            return
        present = []
        for name in sorted(names):
            if os.path.lexists(self._file(name)):
                self._cancel_removal(name)
                present.append(name)
            elif name not in self._removals:
                self._removals[name] = asyncio.get_running_loop().call_later(REMOVAL_GRACE, self._removed, name)
        if present:
            self._on_change(present)

    def _removed(self, name: str) -> None:
        del self._removals[name]
        if os.path.isdir(self.path):  # a vanished directory is not the removal of its files
            self._on_change([name])

    def _cancel_removal(self, name: str) -> None:
        timer = self._removals.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _file(self, name: str) -> str:
        from .names import SUFFIX

        return os.path.join(self.path, name + SUFFIX)

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
        for timer in self._removals.values():
            timer.cancel()
        self._removals.clear()
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


def _is_link_or_special(path: str) -> bool:
    """A created entry that no writer will close: a symlink, a hard link, or not a regular file."""
    try:
        info = os.lstat(path)
    except OSError:
        return True  # gone already: report it, the reload will see
    return not stat.S_ISREG(info.st_mode) or info.st_nlink > 1
