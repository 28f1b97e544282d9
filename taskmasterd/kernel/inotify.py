"""inotify for followers of files: one kernel instance per event loop, shared by every watch.

The kernel allows a user only a few inotify instances (128 by default), so the daemon opens one
and multiplexes it: a watch is a directory, a mask and a callback told the name of the entry each
event is about (None when the kernel's queue overflowed and events were lost: look again). A
watch `about` one file is told only of that file and its rotations (`about.N`) — looked up by
name, so 200 followers of files of one directory cost one lookup per event, not 200 calls.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
from typing import Callable

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_MASK_ADD = 0x20000000
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows
READ_SIZE = 64 * 1024  # bytes of events taken per wake-up

Callback = Callable[[str | None], None]
_libc: ctypes.CDLL | None = None
_by_loop: dict[asyncio.AbstractEventLoop, _Inotify] = {}


def watch(directory: str, mask: int, callback: Callback, about: str | None = None,
          keep_open: bool = False) -> Watch:
    """Call `callback(name)` for each event of `mask` on an entry of `directory` (with `about`:
    only on the entry of that name and on `about.<anything>`); OSError if the directory cannot
    be watched. `keep_open`: the instance stays open when its last watch goes, until
    `release()` — for watches made and dropped many times a second (closing an inotify instance
    waits for an RCU grace period: ~4 ms)."""
    loop = asyncio.get_running_loop()
    shared = _by_loop.get(loop)
    if shared is None:
        shared = _by_loop[loop] = _Inotify(loop)
    shared.kept_open = shared.kept_open or keep_open
    return shared.add(directory, mask, callback, about)


def release() -> None:
    """The running loop's instance may close again once it has no watch (see `keep_open`)."""
    shared = _by_loop.get(asyncio.get_running_loop())
    if shared is not None:
        shared.kept_open = False
        if not shared._watches:
            shared._close()


class Watch:
    def __init__(self, owner: _Inotify, wd: int, callback: Callback, about: str | None) -> None:
        self._owner = owner
        self.wd = wd
        self.callback = callback
        self.about = about

    def close(self) -> None:
        self._owner.remove(self)


def _c_library() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return _libc


def _os_error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


class _Inotify:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        fd = _c_library().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise _os_error("inotify_init1")
        self._fd = fd
        self.kept_open = False
        self._watches: dict[int, list[Watch]] = {}  # the kernel gives one wd per directory
        self._named: dict[int, dict[str, list[Watch]]] = {}  # wd -> `about` -> the watches about it
        self._unnamed: dict[int, list[Watch]] = {}  # wd -> the watches told of every entry
        loop.add_reader(fd, self._read)

    def add(self, directory: str, mask: int, callback: Callback, about: str | None = None) -> Watch:
        wd = _c_library().inotify_add_watch(self._fd, os.fsencode(directory), mask | IN_ONLYDIR | IN_MASK_ADD)
        if wd < 0:
            error = _os_error(f"cannot watch {directory}")
            if not self._watches:
                self._close()
            raise error
        watch = Watch(self, wd, callback, about)
        self._watches.setdefault(wd, []).append(watch)
        if about is not None:
            self._named.setdefault(wd, {}).setdefault(about, []).append(watch)
        else:
            self._unnamed.setdefault(wd, []).append(watch)
        return watch

    def remove(self, watch: Watch) -> None:
        watches = self._watches.get(watch.wd)
        if watches is not None and watch in watches:
            watches.remove(watch)
            if watch.about is not None:
                named = self._named[watch.wd][watch.about]
                named.remove(watch)
                if not named:
                    del self._named[watch.wd][watch.about]
            else:
                self._unnamed[watch.wd].remove(watch)
            if not watches:
                del self._watches[watch.wd]
                self._named.pop(watch.wd, None)
                self._unnamed.pop(watch.wd, None)
                _c_library().inotify_rm_watch(self._fd, watch.wd)
        if not self._watches and not self.kept_open:
            self._close()

    def _targets(self, wd: int, name: str | None) -> list[Watch]:
        """The watches of directory `wd` an event on entry `name` is for."""
        watches = self._watches.get(wd, ())
        named = self._named.get(wd)
        if name is None or not named:
            return list(watches)
        targets = list(self._unnamed.get(wd, ()))
        targets += named.get(name, ())
        base = name.rpartition(".")[0]
        if base and base != name:
            targets += named.get(base, ())
        return targets

    def _close(self) -> None:
        if self._fd < 0:
            return
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        if _by_loop.get(self._loop) is self:
            del _by_loop[self._loop]

    def _read(self) -> None:
        try:
            buf = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return
        offset = 0
        while offset + _HEADER.size <= len(buf):
            wd, mask, _cookie, length = _HEADER.unpack_from(buf, offset)
            name = buf[offset + _HEADER.size: offset + _HEADER.size + length].rstrip(b"\0")
            offset += _HEADER.size + length
            if mask & IN_Q_OVERFLOW:
                targets = [w for watches in self._watches.values() for w in watches]
                told: str | None = None
            else:
                told = os.fsdecode(name) if name else None
                targets = self._targets(wd, told)
            if mask & IN_IGNORED:  # the directory itself is gone: its watchers look once more
                self._watches.pop(wd, None)
                self._named.pop(wd, None)
                self._unnamed.pop(wd, None)
            for target in targets:
                target.callback(told)
