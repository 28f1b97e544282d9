"""Watch the jobs directory with inotify: the kernel says which file changed, nothing is polled.

Only complete files are reported: IN_CLOSE_WRITE (a writer finished, even a slow `cp`) and
IN_MOVED_TO (an atomic rename), plus removals. Names of files the daemon ignores are dropped here.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from typing import Callable, Iterable

from .names import job_name_from_filename

log = logging.getLogger("taskmasterd.watcher")

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
MASK = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")
COALESCE = 0.02  # an editor's save is several events; answer them as one


class DirectoryWatcher:
    def __init__(self, path: str, on_change: Callable[[Iterable[str] | None], None]):
        self.path = path
        self._on_change = on_change
        self._fd = -1
        self._pending: set[str] = set()
        self._rescan = False
        self._flush: asyncio.TimerHandle | None = None

    def start(self) -> bool:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            log.warning("inotify unavailable (%s): job files are read on SIGHUP and `restart` only",
                        os.strerror(ctypes.get_errno()))
            return False
        if libc.inotify_add_watch(fd, os.fsencode(self.path), MASK) < 0:
            log.warning("cannot watch %s: %s", self.path, os.strerror(ctypes.get_errno()))
            os.close(fd)
            return False
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._read)
        return True

    def _read(self) -> None:
        try:
            buf = os.read(self._fd, 64 * 1024)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return
            raise
        offset = 0
        while offset + _EVENT.size <= len(buf):
            _wd, mask, _cookie, length = _EVENT.unpack_from(buf, offset)
            raw = buf[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                self._rescan = True
            elif mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                log.warning("jobs directory %s was moved or removed; watching stopped", self.path)
                self._rescan = True
            elif raw:
                name = job_name_from_filename(os.fsdecode(raw))
                if name:
                    self._pending.add(name)
        if (self._pending or self._rescan) and self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(COALESCE, self._deliver)

    def _deliver(self) -> None:
        self._flush = None
        names, self._pending = self._pending, set()
        if self._rescan:
            self._rescan = False
            self._on_change(None)
        elif names:
            self._on_change(sorted(names))

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
