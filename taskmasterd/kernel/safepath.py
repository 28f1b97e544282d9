"""Open the files the daemon writes (logs, its pid file) without being steered by someone else's symlink.

A job running as an ordinary user may control a directory on its own log path. The path is
therefore walked one component at a time with O_NOFOLLOW, holding a descriptor of each directory
(no window between a check and its use); a symlink on the way is followed only when it belongs to
root or to the daemon's own user, the file itself never is, and a file with other hard links or
that is not a regular file is refused. The common case, a path with no symlink at all, takes one
openat2(RESOLVE_NO_SYMLINKS) instead of a walk.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
from typing import Callable

MAX_LINKS = 40  # like the kernel's limit on symlinks followed in one lookup
DIRECTORY_MODE = 0o755


class UnsafePath(OSError):
    """A path the daemon refuses to write through; the message says which component and why."""


def _trusted(uid: int) -> bool:
    return uid in (0, os.geteuid())


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_SYS_OPENAT2 = 437  # the same number on every architecture (Linux 5.6+)
_RESOLVE_NO_SYMLINKS = 0x04
_AT_FDCWD = -100
_libc: ctypes.CDLL | None = None
_have_openat2 = True


def _open_without_symlinks(path: str, flags: int) -> int | None:
    """A descriptor of `path` if no component of it is a symlink, in one system call; None when
    that cannot tell (a symlink on the way, a missing directory, no openat2): walk instead."""
    global _libc, _have_openat2
    if not _have_openat2:
        return None
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_NO_SYMLINKS)
    fd = _libc.syscall(_SYS_OPENAT2, _AT_FDCWD, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd >= 0:
        return fd
    if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):  # an old kernel, or a seccomp filter
        _have_openat2 = False
    return None


def open_parent(path: str) -> tuple[int, str]:
    """(descriptor of the directory that holds `path`, final component), creating missing
    directories on the way."""
    pending = os.path.normpath(os.path.abspath(path)).split("/")[1:]
    if not pending or not pending[-1]:
        raise UnsafePath(errno.EISDIR, f"{path}: not a file path")
    name = pending.pop()
    direct = _open_without_symlinks("/" + "/".join(pending), os.O_PATH | os.O_DIRECTORY)
    if direct is not None:
        return direct, name
    here, dir_fd, links = "/", os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), 0
    try:
        while pending:
            part = pending.pop(0)
            try:
                next_fd = _open_directory(part, dir_fd)
            except _SymbolicLink as link:
                links += 1
                if links > MAX_LINKS:
                    raise UnsafePath(errno.ELOOP, f"{path}: too many symbolic links") from None
                if not _trusted(link.owner):
                    raise UnsafePath(errno.EPERM, f"{os.path.join(here, part)} is a symbolic link owned by "
                                     f"uid {link.owner}: not followed") from None
                # Continue from the link's target, resolved against where the link is.
                rest = os.path.normpath(os.path.join(here, link.target, *pending, name)).split("/")[1:]
                name = rest.pop()
                pending = rest
                os.close(dir_fd)
                here, dir_fd = "/", os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                continue
            os.close(dir_fd)
            dir_fd, here = next_fd, os.path.join(here, part)
    except BaseException:
        os.close(dir_fd)
        raise
    return dir_fd, name


class _SymbolicLink(Exception):
    def __init__(self, owner: int, target: str) -> None:
        self.owner, self.target = owner, target


def _open_directory(part: str, dir_fd: int) -> int:
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(2):
        try:
            return os.open(part, flags, dir_fd=dir_fd)
        except FileNotFoundError:
            try:
                os.mkdir(part, DIRECTORY_MODE, dir_fd=dir_fd)
            except FileExistsError:
                pass  # created meanwhile: open it
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            info = os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                raise _SymbolicLink(info.st_uid, os.readlink(part, dir_fd=dir_fd)) from None
            raise UnsafePath(errno.ENOTDIR, f"{part}: not a directory") from None
    return os.open(part, flags, dir_fd=dir_fd)


def open_append(path: str, mode: int) -> int:
    """A descriptor of `path` for appending, created with `mode` if missing."""
    return _open_regular(path, os.O_WRONLY | os.O_APPEND, mode)


def open_read_write(path: str, mode: int) -> int:
    """A descriptor of `path` for reading and writing (a pid file), created with `mode` if missing."""
    return _open_regular(path, os.O_RDWR, mode)


def _open_regular(path: str, flags: int, mode: int) -> int:
    fd = _open_in_parent(path, flags | os.O_CREAT, mode)
    try:
        if os.fstat(fd).st_nlink > 1:
            raise UnsafePath(errno.EPERM, f"{path} has other hard links: not written")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_read(path: str) -> int:
    """A descriptor of the regular file `path` for reading, reached without following a lesser
    user's symlink and never waiting (a FIFO planted there is refused, not opened for good);
    FileNotFoundError when it is not there."""
    return _open_in_parent(path, os.O_RDONLY, 0)


def _open_in_parent(path: str, flags: int, mode: int) -> int:
    """`path` opened non-blocking from its safely walked parent, not followed at its end; a
    regular file or UnsafePath."""
    dir_fd, name = open_parent(path)
    try:
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath(errno.ELOOP, f"{path} is a symbolic link: not followed") from None
            if exc.errno == errno.ENXIO:
                raise UnsafePath(errno.ENXIO, f"{path} is not a regular file") from None
            raise
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(errno.EINVAL, f"{path} is not a regular file")
    return fd


def checked_size(path: str) -> int:
    """The size of the file `path` names (0: not there yet), after the same checks `open_append`
    makes — without creating it. Raises UnsafePath where open_append would refuse."""
    dir_fd, name = open_parent(path)
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return 0
    finally:
        os.close(dir_fd)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePath(errno.ELOOP, f"{path} is a symbolic link: not followed")
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(errno.EINVAL, f"{path} is not a regular file")
    if info.st_nlink > 1:
        raise UnsafePath(errno.EPERM, f"{path} has other hard links: not written")
    return info.st_size


def same_file(path: str, fd: int) -> bool:
    """Whether `path` (walked safely, not followed at its end) is the file open as `fd`."""
    return _when_same(path, fd, None)


def unlink_if_same(path: str, fd: int) -> None:
    """Remove `path` if it still names the file open as `fd` (walked safely): never another file
    that was put in its place."""
    _when_same(path, fd, os.unlink)


def _when_same(path: str, fd: int, act: Callable[..., None] | None) -> bool:
    """Whether `path` names the file open as `fd`; if so, `act(name, dir_fd=...)` on it, relative
    to the directory the walk ended in (gone meanwhile: not an error)."""
    try:
        dir_fd, name = open_parent(path)
    except OSError:
        return False
    try:
        try:
            there = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return False
        here = os.fstat(fd)
        if (there.st_dev, there.st_ino) != (here.st_dev, here.st_ino):
            return False
        if act is not None:
            try:
                act(name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
        return True
    finally:
        os.close(dir_fd)


def private_directory_problem(path: str) -> str | None:
    """Why `path` may not hold the daemon's secrets and journal (Colonies keys, children.json), or
    None. It and every directory above it must belong to root or the daemon's user and be writable
    by nobody else (above it, a sticky directory such as /tmp is fine: others may add entries there
    but not move ours), and no symlink on the way may belong to a lesser user."""
    return _directory_problem(path, writable_by=0o022, owner_checked=True)


def jobs_directory_problem(path: str) -> str | None:
    """Why `path` may not be the jobs directory, whose files the daemon runs as their `user` (as
    root, by default): writable by everyone, or reached through a lesser user's symlink. Its owner
    and its group may write it: that is whom the operator lets define jobs."""
    return _directory_problem(path, writable_by=0o002, owner_checked=False)


def job_file_problem(path: str, info: os.stat_result, directory: os.stat_result) -> str | None:
    """Why the job file at `path` (`info`: the file it opened; `directory`: the jobs directory)
    may not be trusted, or None. Whoever may write it defines a job, as root by default, so that
    must be someone who may write the directory anyway: root, the daemon's user, its owner, or
    (when the directory is group-writable) its group — a file of the directory's group whose
    owner is not root was made by a member, since nobody else may give a file that group. A file
    reached through a symlink is judged with its own directory too."""
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o002:
        return f"{path} is writable by others (mode {mode:04o})"
    team = bool(directory.st_mode & 0o020) and info.st_gid == directory.st_gid
    if mode & 0o020 and not team:
        return f"{path} is writable by group {info.st_gid}, who may not write the jobs directory"
    if not (_trusted(info.st_uid) or info.st_uid == directory.st_uid or team):
        return f"{path} belongs to uid {info.st_uid}, who may not write the jobs directory"
    try:
        here = os.lstat(path)
    except OSError:
        return None  # gone since it was opened: what was read is judged by `info`
    if stat.S_ISLNK(here.st_mode):
        return jobs_directory_problem(os.path.dirname(os.path.realpath(path)))
    return None


def _directory_problem(path: str, writable_by: int, owner_checked: bool) -> str | None:
    parts = os.path.normpath(os.path.abspath(path)).split("/")[1:]
    for depth in range(1, len(parts) + 1):
        prefix = "/" + "/".join(parts[:depth])
        info = os.lstat(prefix)
        if stat.S_ISLNK(info.st_mode) and not _trusted(info.st_uid):
            return f"{prefix} is a symbolic link owned by uid {info.st_uid}"
    real = os.path.realpath(path)
    here = real
    while True:
        info = os.stat(here)
        if owner_checked and not _trusted(info.st_uid):
            return f"{here} belongs to uid {info.st_uid}"
        if info.st_mode & writable_by and (here == real or not info.st_mode & stat.S_ISVTX):
            return f"{here} is writable by others (mode {stat.S_IMODE(info.st_mode):04o})"
        if here == "/":
            return None
        here = os.path.dirname(here)
