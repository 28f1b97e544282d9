"""A wall-clock alarm the kernel keeps: one timerfd on CLOCK_REALTIME, armed at an absolute time.

Why not `loop.call_at`: the loop's clock is monotonic, which stops while the host sleeps and does
not follow a step of the wall clock, so a due time of a schedule (a wall-clock time) would be
missed or come late. An absolute CLOCK_REALTIME timer expires when the wall clock reaches it,
however it got there (a step, NTP, a resume), and TFD_TIMER_CANCEL_ON_SET also wakes us when the
clock is set, so the caller can look again. One descriptor, read by the loop: no thread, no poll.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import math
import os
from typing import Callable

from .inotify import _c_library, _os_error

CLOCK_REALTIME = 0
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1
TFD_TIMER_CANCEL_ON_SET = 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class WallClockAlarm:
    """Calls `callback(clock_set)` on the loop once the wall clock reaches the time given to `arm`
    (False), or when the wall clock is set, a step either way (True)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[bool], None]) -> None:
        fd = _c_library().timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            raise _os_error("timerfd_create")
        self._fd = fd
        self._loop = loop
        self._callback = callback
        self.armed_at: float | None = None
        loop.add_reader(fd, self._expired)

    def arm(self, when: float | None) -> None:
        """Expire at Unix time `when` (at once if it has passed); None disarms."""
        if self._fd < 0 or when == self.armed_at:
            return
        self.armed_at = when
        spec = _Itimerspec()
        if when is not None:
            seconds = math.floor(when)
            # An all-zero it_value would disarm: a past time is at least 1 ns after the epoch.
            spec.it_value = _Timespec(max(seconds, 0), max(int((when - seconds) * 1e9), 0 if seconds > 0 else 1))
        flags = TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET
        if _c_library().timerfd_settime(self._fd, flags, ctypes.byref(spec), None) != 0:
            raise _os_error("timerfd_settime")

    def _expired(self) -> None:
        clock_set = False
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.ECANCELED:
                raise
            clock_set = True  # the caller arms the timer again, which clears the cancellation
        self.armed_at = None
        self._callback(clock_set)

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
