"""A job's user, groups, directory and umask taken by the calling thread alone, for one spawn.

glibc's setresuid, setresgid and setgroups change every thread of the process (POSIX asks it to:
glibc signals each thread to follow); the system calls themselves change only the caller. The
spawn thread takes a job's ids this way around a posix_spawn, so the child is born with them, as
Popen's child would take them after its fork — without the fork: a full fork of the daemon holds
the GIL while it copies the daemon's page tables (3-8 ms on the 2-core VM), where posix_spawn is
a vfork that lets the loop run. The loop thread stays root all the while.

The saved uid is left as it is (0), so the thread can take its ids back; the child's exec sets
its saved ids to its effective ones, and with no id 0 left it keeps no capability (capabilities(7):
the exec of a program without file capabilities by a non-root process). Directory and umask are
the thread's own once it has unshared CLONE_FS (its fs_struct), so they too change for the spawn
alone. The order is Popen's: directory and umask first (as root), then groups, gid, uid.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from typing import Iterator

# syscall numbers: setgroups, setresgid, setresuid
_NUMBERS = {"x86_64": (116, 119, 117), "aarch64": (159, 149, 147)}.get(platform.machine())
_libc = ctypes.PyDLL(None, use_errno=True)  # system calls of microseconds: the GIL stays held
_KEEP = -1  # an id left as it is


def available() -> bool:
    """Whether this machine's system call numbers are known here."""
    return _NUMBERS is not None


def _call(number: int, *args: object) -> None:
    if _libc.syscall(number, *args) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _set_groups(groups: tuple[int, ...]) -> None:
    assert _NUMBERS is not None
    listed = (ctypes.c_uint * max(len(groups), 1))(*groups)
    _call(_NUMBERS[0], ctypes.c_size_t(len(groups)), listed)


def _set_gid(real: int, effective: int) -> None:
    assert _NUMBERS is not None
    _call(_NUMBERS[1], ctypes.c_int(real), ctypes.c_int(effective), ctypes.c_int(_KEEP))


def _set_uid(real: int, effective: int) -> None:
    assert _NUMBERS is not None
    _call(_NUMBERS[2], ctypes.c_int(real), ctypes.c_int(effective), ctypes.c_int(_KEEP))


class CannotGoBack(Exception):
    """The thread could not take its own ids, directory or umask back: it must not spawn again."""


@contextlib.contextmanager
def taken(uid: int | None, gid: int | None, groups: tuple[int, ...] | None, cwd: str | None,
          umask: int | None, home: int) -> Iterator[None]:
    """The calling thread (which has unshared CLONE_FS) with these ids (None: its own), in `cwd`,
    with `umask`; back in `home` (a descriptor of its usual directory) with its own ids and umask
    after. Raises what a change raises (nothing is left changed then), and CannotGoBack when it
    cannot return."""
    undo: list[tuple[str, object]] = []
    try:
        if cwd is not None:
            os.chdir(cwd)
            undo.append(("cwd", None))
        if umask is not None:
            undo.append(("umask", os.umask(umask)))
        if uid is not None:
            assert gid is not None and groups is not None
            undo.append(("groups", tuple(os.getgroups())))
            _set_groups(groups)
            undo.append(("gid", os.getresgid()[:2]))
            _set_gid(gid, gid)
            undo.append(("uid", os.getresuid()[:2]))
            _set_uid(uid, uid)
        yield
    finally:
        _undo(undo, home)


def _undo(undo: list[tuple[str, object]], home: int) -> None:
    try:
        for what, value in reversed(undo):  # uid first: it gives the capabilities back
            if what == "uid":
                _set_uid(*value)  # type: ignore[misc]
            elif what == "gid":
                _set_gid(*value)  # type: ignore[misc]
            elif what == "groups":
                _set_groups(value)  # type: ignore[arg-type]
            elif what == "umask":
                os.umask(value)  # type: ignore[arg-type]
            else:
                os.fchdir(home)
    except OSError as exc:
        raise CannotGoBack(f"cannot take back its own {what}: {exc.strerror}") from None
