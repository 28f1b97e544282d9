"""The daemon's listening sockets: TCP, a unix socket, or both.

Bound before daemonizing, so a taken port or a live socket fails the start in the operator's
terminal (exit 1). The unix socket is created 0660 (the umask is set around bind(), so it never
exists with looser bits) with the first control group as its group; the other control users and
groups get POSIX ACL entries on it, so every peer the policy admits can also open the file. A
stale socket file, left by a daemon that died, is replaced; the file is removed on exit only if it
is still the one this daemon made.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import stat
import struct
from typing import Iterable

log = logging.getLogger("taskmasterd.listeners")

SOCKET_MODE = 0o660
_ACL_XATTR = "system.posix_acl_access"
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_ACL_NO_ID = 0xFFFFFFFF
_READ_WRITE = 6  # connect() needs write permission on the file


class Listeners:
    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self._unix: tuple[str, int, int] | None = None  # path, st_dev, st_ino of the file we made

    def describe(self) -> str:
        names = []
        for sock in self.sockets:
            if sock.family == socket.AF_UNIX:
                names.append(sock.getsockname())
            else:
                host, port = sock.getsockname()[:2]
                names.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return " and ".join(names)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        if self._unix is not None:
            path, device, inode = self._unix
            self._unix = None
            try:
                info = os.lstat(path)
                if (info.st_dev, info.st_ino) == (device, inode):
                    os.unlink(path)
            except OSError:
                pass  # gone already, or replaced by someone else's: not ours to remove


def open_listeners(host: str, port: int | None, socket_path: str | None, socket_group: int | None = None,
                   grant_users: Iterable[int] = (), grant_groups: Iterable[int] = ()) -> Listeners:
    """Every configured listener, or OSError with a readable message (nothing left open)."""
    listeners = Listeners()
    try:
        if port is not None:
            listeners.sockets.append(bind_tcp(host, port))
        if socket_path is not None:
            sock = bind_unix(socket_path, socket_group, grant_users, grant_groups)
            info = os.lstat(socket_path)
            listeners.sockets.append(sock)
            listeners._unix = (socket_path, info.st_dev, info.st_ino)
    except BaseException:
        listeners.close()
        raise
    return listeners


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on host:port."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            why += " (is another taskmasterd running?)"
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {why}") from None
    sock.setblocking(False)
    if not ipaddress.ip_address(address[0]).is_loopback:
        log.warning("the control port listens on %s:%d, which is not a loopback address: peers from "
                    "elsewhere are refused unless allow_remote lists their network",
                    address[0], sock.getsockname()[1])
    return sock


def bind_unix(path: str, group: int | None, grant_users: Iterable[int] = (),
              grant_groups: Iterable[int] = ()) -> socket.socket:
    """A listening, non-blocking unix socket at path, mode 0660, in `group` (None: the daemon's)."""
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    previous = os.umask(0o777 & ~SOCKET_MODE)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(previous)
    try:
        if group is not None:
            try:
                os.chown(path, -1, group, follow_symlinks=False)
            except PermissionError:
                raise PermissionError(errno.EPERM, f"cannot give it to group {group}: the daemon's user is "
                                                   "not a member of it") from None
        _grant(path, set(grant_users) - {os.geteuid(), 0}, set(grant_groups) - {group})
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        os.unlink(path)
        raise OSError(exc.errno, f"cannot set up the socket {path}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _clear_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse a live one, or anything that is no socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, f"cannot listen on {path}: it exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # stale
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {path}: cannot tell whether it is in use "
                                     f"({exc.strerror or exc})") from None
        else:
            raise OSError(errno.EADDRINUSE, f"cannot listen on {path}: another taskmasterd is listening there")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _grant(path: str, users: set[int], groups: set[int]) -> None:
    """Read-write ACL entries for the admitted users and groups the file's owner and group miss."""
    if not users and not groups:
        return
    entries = [(_ACL_USER_OBJ, _READ_WRITE, _ACL_NO_ID)]
    entries += [(_ACL_USER, _READ_WRITE, uid) for uid in sorted(users)]
    entries.append((_ACL_GROUP_OBJ, _READ_WRITE, _ACL_NO_ID))
    entries += [(_ACL_GROUP, _READ_WRITE, gid) for gid in sorted(groups)]
    entries += [(_ACL_MASK, _READ_WRITE, _ACL_NO_ID), (_ACL_OTHER, 0, _ACL_NO_ID)]
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)
    try:
        os.setxattr(path, _ACL_XATTR, acl, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        log.warning("%s: the filesystem has no ACLs, so control users outside the socket's group "
                    "(uids %s, gids %s) can reach the daemon over TCP only", path,
                    sorted(users) or "-", sorted(groups) or "-")
