"""The listening sockets the daemon holds for a job (its `sockets` field): bound when the job's
file is loaded, kept open across every restart, stop, start and reload of the job, closed only
when the job goes or its file stops listing them.

Why the daemon holds them: between an old process closing its socket and a new one binding it,
connections are refused. Held here, the socket never closes; while no process accepts, the
kernel queues connections in its backlog, and whichever instance runs takes them.

- Each socket's own descriptor is moved to 256 or above (F_DUPFD_CLOEXEC): a spawn places the
  held sockets at 3, 4, … with dup2 (processes/listenfds.py), and a source below 3 + their
  number could be overwritten by an earlier dup2. Close-on-exec: no child gets one by accident.
- A socket stays blocking (the description is shared with every child; programs written for
  systemd expect what systemd gives them). The daemon never accepts on it.
- A privileged port is bound by the daemon (root): the child, running as its `user`, never needs
  the privilege. TCP sockets get SO_REUSEADDR, IPv6 ones IPV6_V6ONLY (`[::]` is IPv6 only).
- A unix socket is made like a log file: its directory is walked with `safepath.open_parent`
  (created 0755 if missing; never through a lesser user's symlink), and the socket is bound as
  /proc/self/fd/<that directory>/<name>, inside the directory already opened (short, whatever the
  path's length). A stale socket file there is replaced; a live one, or anything else, is
  refused. Its mode, owner and group are set through an O_PATH descriptor of the file (never
  following a symlink) before listen(): until then a connect is refused, so no one ever reaches
  it with looser permissions. On close the file is removed if it is still the one made.
- With `reuseport`, each instance index gets a SO_REUSEPORT socket of its own on the address.

A new version of the file: `prepare` binds the sockets it adds and shares the ones it keeps (the
same `listen`); the file is refused, and nothing changed, if one cannot be bound. `commit` then
closes what the old version had and the new one does not (its processes keep their own copies
until they exit), and applies a kept socket's new backlog, mode, owner and group live.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
from dataclasses import dataclass, field
from typing import Iterable

from ..jobfiles.sockets_spec import SocketSpec
from ..kernel.nss import gid_of, passwd_entry
from ..kernel.safepath import UnsafePath, open_parent, unlink_if_same

FIRST_HELD_FD = 256  # every held socket's descriptor is at or above it (far above 3 + MAX_SOCKETS)


class SocketError(Exception):
    """A socket that cannot be held: the message names it and says why."""


Key = tuple[str, int | None]  # (listen, instance index with reuseport, else None)
Owners = dict[str, tuple[int, int]]  # listen -> (uid, gid) of a unix socket file (-1: the daemon's)
_SAME = (-1, -1)  # chown(-1, -1): the daemon's own


@dataclass(eq=False)
class HeldSocket:
    spec: SocketSpec
    sock: socket.socket
    path_fd: int = -1  # unix: an O_PATH descriptor of the socket file (its identity, for chmod and unlink)

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        if self.path_fd >= 0:
            unlink_if_same(self.spec.host, self.path_fd)
            os.close(self.path_fd)
            self.path_fd = -1
        self.sock.close()

    def update(self, spec: SocketSpec, owner: tuple[int, int]) -> None:
        """A new version of the file with the same `listen`: its backlog, mode and owner, live."""
        if spec.backlog != self.spec.backlog:
            self.sock.listen(spec.backlog)
        if self.path_fd >= 0 and (spec.mode, spec.owner, spec.group) != (self.spec.mode, self.spec.owner, self.spec.group):
            uid, gid = owner  # a name no longer given: the daemon's own again
            _set_owner_and_mode(self.path_fd, spec, (uid if uid >= 0 else os.geteuid(), gid if gid >= 0 else os.getegid()))
        self.spec = spec


@dataclass(eq=False)
class HeldSockets:
    """A job's held sockets, in the order of its file (with `reuseport`, per instance index), and
    the settings this version of the file gives each."""

    held: dict[Key, HeldSocket] = field(default_factory=dict)
    specs: dict[Key, SocketSpec] = field(default_factory=dict)
    reuseport: bool = False

    def prepare(self, specs: tuple[SocketSpec, ...], reuseport: bool, numprocs: int,
                owners: Owners | None = None) -> HeldSockets:
        """The sockets a new version of the file asks for: the ones held under the same key are
        shared with this object, the others bound now. Raises SocketError, and then nothing newly
        bound is left open."""
        owners = owners or {}
        indexes: Iterable[int | None] = range(numprocs) if reuseport else (None,)
        planned = HeldSockets(reuseport=reuseport)
        try:
            for index in indexes:
                for spec in specs:
                    key = (spec.listen, index)
                    held = self.held.get(key)
                    planned.held[key] = held if held is not None else bind(spec, reuseport, owners.get(spec.listen, _SAME))
                    planned.specs[key] = spec
        except SocketError:
            planned.abandon(self)
            raise
        return planned

    def commit(self, new: HeldSockets, owners: Owners | None = None) -> None:
        """`new` (made by `prepare`) replaces this version: close what only this one has, and give
        the kept sockets their new settings."""
        owners = owners or {}
        for key, held in self.held.items():
            if new.held.get(key) is not held:
                held.close()
            else:
                spec = new.specs[key]
                try:
                    held.update(spec, owners.get(spec.listen, _SAME))
                except OSError:
                    pass  # it keeps its old settings; the socket itself is fine
        self.held, self.specs = {}, {}

    def abandon(self, old: HeldSockets) -> None:
        """`prepare` made this one and it is not used: close what it bound beside `old`."""
        for key, held in self.held.items():
            if old.held.get(key) is not held:
                held.close()
        self.held, self.specs = {}, {}

    def for_instance(self, index: int) -> tuple[HeldSocket, ...]:
        """What instance `index` is given, in the order of the file."""
        wanted = index if self.reuseport else None
        return tuple(held for (_, at), held in self.held.items() if at == wanted)

    def all(self) -> list[HeldSocket]:
        return list(self.held.values())

    def close(self) -> None:
        for held in self.held.values():
            held.close()
        self.held, self.specs = {}, {}

    def describe(self) -> list[str]:
        """The addresses held, once each."""
        return list(dict.fromkeys(listen for listen, _ in self.held))


NO_SOCKETS = HeldSockets()


def owners_of(specs: tuple[SocketSpec, ...]) -> Owners:
    """(uid, gid) of each unix socket that names an owner or a group; SocketError for a name that
    is not there. Blocking (NSS): call it on a worker thread."""
    owners: Owners = {}
    for spec in specs:
        if spec.owner is None and spec.group is None:
            continue
        uid = gid = -1
        if spec.owner is not None:
            try:
                uid = int(spec.owner) if spec.owner.isascii() and spec.owner.isdigit() else passwd_entry(spec.owner).pw_uid
            except KeyError:
                raise SocketError(f"cannot hold {spec.listen}: no such user {spec.owner!r}") from None
        if spec.group is not None:
            found = gid_of(spec.group)
            if found is None:
                raise SocketError(f"cannot hold {spec.listen}: no such group {spec.group!r}")
            gid = found
        owners[spec.listen] = (uid, gid)
    return owners


def bind(spec: SocketSpec, reuseport: bool = False, owner: tuple[int, int] = _SAME) -> HeldSocket:
    """One listening socket, its descriptor at FIRST_HELD_FD or above; SocketError if it cannot be."""
    try:
        if spec.unix:
            return _bind_unix(spec, owner)
        return HeldSocket(spec, _bind_inet(spec, reuseport))
    except UnsafePath as exc:
        raise SocketError(f"cannot hold {spec.listen}: {exc.strerror}") from None
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.EACCES and spec.port and spec.port < 1024 and os.geteuid() != 0:
            why += " (a port below 1024 needs a daemon started as root)"
        raise SocketError(f"cannot hold {spec.listen}: {why}") from None


def _high(sock: socket.socket) -> socket.socket:
    """The same socket under a descriptor at FIRST_HELD_FD or above (close-on-exec)."""
    try:
        fd = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, FIRST_HELD_FD)
    finally:
        sock.close()
    return socket.socket(fileno=fd)


def _bind_inet(spec: SocketSpec, reuseport: bool) -> socket.socket:
    family = socket.AF_INET6 if spec.family == "inet6" else socket.AF_INET
    sock = _high(socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((spec.host, spec.port))
        sock.listen(spec.backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(spec: SocketSpec, owner: tuple[int, int]) -> HeldSocket:
    dir_fd, name = open_parent(spec.host)
    try:
        _clear_stale(dir_fd, name, spec.host)
        sock = _high(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC))
        path_fd = -1
        try:
            sock.bind(f"/proc/self/fd/{dir_fd}/{name}")
            path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            if not stat.S_ISSOCK(os.fstat(path_fd).st_mode):
                raise OSError(errno.EEXIST, "replaced by something else while it was made")
            _set_owner_and_mode(path_fd, spec, owner)
            sock.listen(spec.backlog)  # only now may a connect succeed: the permissions are set
        except BaseException:
            if path_fd >= 0:
                _unlink_if(dir_fd, name, path_fd)
                os.close(path_fd)
            sock.close()
            raise
    finally:
        os.close(dir_fd)
    return HeldSocket(spec, sock, path_fd)


def _unlink_if(dir_fd: int, name: str, path_fd: int) -> None:
    """Remove `name` if it is still the file `path_fd` holds."""
    try:
        there, here = os.stat(name, dir_fd=dir_fd, follow_symlinks=False), os.fstat(path_fd)
        if (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino):
            os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _set_owner_and_mode(path_fd: int, spec: SocketSpec, owner: tuple[int, int]) -> None:
    """Through the file's O_PATH descriptor: what it names is the socket made, never a symlink."""
    magic = f"/proc/self/fd/{path_fd}"
    if owner != _SAME:
        os.chown(magic, *owner)
    os.chmod(magic, spec.mode)


def _clear_stale(dir_fd: int, name: str, path: str) -> None:
    """Remove a socket file nobody listens on; refuse a live one, or anything that is no socket."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as probe:
        try:
            probe.connect(f"/proc/self/fd/{dir_fd}/{name}")
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # stale: nobody listens
        except BlockingIOError:
            raise OSError(errno.EADDRINUSE, f"another process listens on {path}") from None
        else:
            raise OSError(errno.EADDRINUSE, f"another process listens on {path}")
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
