"""The job-file fields of held sockets: `sockets`, `reuseport`, and `autostart: "socket"`. Pure.

The daemon binds each socket when it loads the file (processes/heldsockets.py), keeps it open
across every restart of the job, and gives it to each instance as descriptor 3, 4, … with
LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES (systemd's socket-activation protocol:
processes/listenfds.py).

```
"sockets": [{"listen": "127.0.0.1:8080"},
            {"listen": "[::1]:8080", "name": "web6", "backlog": 1024},
            {"listen": "unix:/run/app/app.sock", "mode": "0660", "owner": "app", "group": "www-data"}]
```

A host is an IP address (IPv6 in brackets; `[::]` is IPv6 only, `0.0.0.0` IPv4 only): the daemon
binds before any name service could be trusted to answer. A unix socket's path is absolute; its
last component is at most 80 bytes (the daemon binds it as /proc/self/fd/<directory>/<name>).
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any

from .fields import FieldError, boolean, got, refuse

SOCKET_ACTIVATION = "socket"  # `autostart: "socket"`: start the job at its first connection
MAX_SOCKETS = 64  # per job: descriptors 3 … 66, far below where the daemon keeps its copies
DEFAULT_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
MAX_BACKLOG = 65535
DEFAULT_UNIX_MODE = 0o660
MAX_SOCKET_NAME = 255  # systemd's limit for FileDescriptorName=
MAX_UNIX_NAME = 80  # bytes of a unix socket path's last component
MAX_PATH = 4096
UNIX_PREFIX = "unix:"
_KEYS = ("listen", "name", "backlog", "mode", "owner", "group")
_UNIX_ONLY = ("mode", "owner", "group")
_NAME = re.compile(r"[!-9;-~]{1,255}\Z")  # printable ASCII without ':' (LISTEN_FDNAMES' separator) or spaces
_ACCOUNT = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,255}\Z")


@dataclass(frozen=True, slots=True)
class SocketSpec:
    """One socket the daemon holds for a job. `listen` is its normalized address, the socket's
    identity: a new version of the file with the same `listen` keeps the socket open."""

    listen: str  # "127.0.0.1:8080", "[::1]:8080", "unix:/run/app/app.sock"
    family: str  # "inet", "inet6" or "unix"
    host: str  # the address (IPv6 without brackets), or the unix path
    port: int = 0  # 0 for a unix socket
    name: str | None = None  # its LISTEN_FDNAMES entry (None: the job's name)
    backlog: int = DEFAULT_BACKLOG
    mode: int = DEFAULT_UNIX_MODE  # unix only, as the rest:
    owner: str | None = None  # a user name or uid (None: the daemon's)
    group: str | None = None  # a group name or gid (None: the daemon's)

    @property
    def unix(self) -> bool:
        return self.family == "unix"

    def wildcard(self) -> bool:
        return not self.unix and ipaddress.ip_address(self.host).is_unspecified


def parse_listen(value: Any) -> tuple[str, str, str, int]:
    """(normalized listen, family, host or path, port) of a `listen` value; FieldError if bad."""
    if not isinstance(value, str) or not value:
        raise refuse('"listen" must be "HOST:PORT" (an IP address, IPv6 in brackets) or "unix:/PATH"', value)
    if value.startswith(UNIX_PREFIX):
        return _unix_path(value[len(UNIX_PREFIX):], value)
    host, colon, port_text = value.rpartition(":")
    if not colon or not host:
        raise refuse('"listen" must be "HOST:PORT" (an IP address, IPv6 in brackets) or "unix:/PATH"', value)
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise refuse('"listen" must have a port 1…65535', value)
    port = int(port_text)
    try:
        if host.startswith("[") and host.endswith("]"):
            address = str(ipaddress.IPv6Address(host[1:-1]))
            return f"[{address}]:{port}", "inet6", address, port
        address = str(ipaddress.IPv4Address(host))
    except ValueError:
        raise refuse('"listen" must have an IP address (a name is not resolved; IPv6 in brackets)', value) from None
    return f"{address}:{port}", "inet", address, port


def _unix_path(path: str, value: str) -> tuple[str, str, str, int]:
    if not path.startswith("/") or len(path) > MAX_PATH:
        raise refuse('"listen" must have an absolute path after "unix:" (an abstract socket is not supported)', value)
    normalized = os.path.normpath(path)
    name = os.path.basename(normalized)
    if not name or normalized == "/":
        raise refuse('"listen" must name a socket file, not a directory', value)
    if len(os.fsencode(name)) > MAX_UNIX_NAME:
        raise refuse(f'"listen" must end in a file name of at most {MAX_UNIX_NAME} bytes', value)
    return UNIX_PREFIX + normalized, "unix", normalized, 0


def _mode(value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value):
        return int(value, 8)
    raise refuse('"mode" must be an octal string like "0660"', value)


def _account(key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < (1 << 32) - 1:
        return str(value)
    if isinstance(value, str) and _ACCOUNT.match(value):
        return value
    raise refuse(f'"{key}" must be a name or a numeric id', value)


def _one_socket(item: Any) -> SocketSpec:
    if not isinstance(item, dict):
        raise refuse('every entry must be an object like {"listen": "127.0.0.1:8080"}', item)
    unknown = sorted(set(item) - set(_KEYS))
    if unknown:
        raise refuse(f"unknown key {got(unknown[0])} (an entry has {', '.join(_KEYS)})")
    if "listen" not in item:
        raise refuse('an entry needs "listen"', item)
    listen, family, host, port = parse_listen(item["listen"])
    settings: dict[str, Any] = {}
    if item.get("name") is not None:
        if not isinstance(item["name"], str) or not _NAME.match(item["name"]):
            raise refuse(f'"name" must be 1…{MAX_SOCKET_NAME} printable ASCII characters without ":" or spaces',
                         item["name"])
        settings["name"] = item["name"]
    if item.get("backlog") is not None:
        backlog = item["backlog"]
        if isinstance(backlog, bool) or not isinstance(backlog, int) or not 1 <= backlog <= MAX_BACKLOG:
            raise refuse(f'"backlog" must be an integer 1…{MAX_BACKLOG}', backlog)
        settings["backlog"] = backlog
    for key in _UNIX_ONLY:
        if item.get(key) is None:
            continue
        if family != "unix":
            raise refuse(f'"{key}" is for a unix socket only ({listen} is a TCP socket)')
        settings[key] = _mode(item[key]) if key == "mode" else _account(key, item[key])
    return SocketSpec(listen, family, host, port, **settings)


def _sockets(value: Any) -> tuple[SocketSpec, ...]:
    if not isinstance(value, list) or not value:
        raise refuse('must be a non-empty list of {"listen": …} objects', value)
    if len(value) > MAX_SOCKETS:
        raise FieldError(f"must list at most {MAX_SOCKETS} sockets, got {len(value)}")
    sockets = []
    for position, item in enumerate(value):
        try:
            sockets.append(_one_socket(item))
        except FieldError as bad:
            raise FieldError(f"entry {position}: {bad}") from None
    seen: set[str] = set()
    for sock in sockets:
        if sock.listen in seen:
            raise FieldError(f"lists {sock.listen} twice")
        seen.add(sock.listen)
    return tuple(sockets)


def autostart_value(value: Any) -> bool | str:
    """`autostart`: true, false, or "socket" (started at the first connection to its sockets)."""
    if value == SOCKET_ACTIVATION:
        return SOCKET_ACTIVATION
    try:
        return boolean(value)
    except FieldError:
        raise refuse('must be true, false or "socket"', value) from None


SOCKET_FIELDS = {"sockets": _sockets, "reuseport": boolean}


# --- rules across fields -------------------------------------------------------------------------


def socket_problems(spec: Any, source: str) -> list[str]:
    """What no single field can tell (`spec`: a JobSpec): reuseport and socket activation need
    sockets; a health check must not ask a held address, which any instance may answer."""
    problems = []
    sockets: tuple[SocketSpec, ...] = spec.sockets
    if spec.reuseport:
        if not sockets:
            problems.append(f'{source}: field "reuseport": needs "sockets"')
        elif any(sock.unix for sock in sockets):
            problems.append(f'{source}: field "reuseport": is for TCP sockets only (SO_REUSEPORT), '
                            f'not {next(s.listen for s in sockets if s.unix)}')
    if spec.autostart == SOCKET_ACTIVATION and not sockets:
        problems.append(f'{source}: field "autostart": "socket" needs "sockets" (it starts at their first connection)')
    check = spec.healthcheck
    probe = getattr(check.probe, "port", None) if check is not None else None
    if probe is not None:
        held = held_address(sockets, check.probe.host, check.probe.port)
        if held is not None:
            problems.append(
                f'{source}: field "healthcheck": {check.probe.describe()} reaches the held socket {held}, which '
                'any instance (or none: the daemon holds it open) may answer, so it cannot judge one instance; '
                'use "ready": "notify", a "cmd" check, or a port of the instance\'s own')
    return problems


def held_address(sockets: tuple[SocketSpec, ...], host: str, port: int) -> str | None:
    """The held socket a connection to host:port would reach, or None."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = ipaddress.ip_address("127.0.0.1") if host == "localhost" else None
    for sock in sockets:
        if sock.unix or sock.port != port:
            continue
        if sock.wildcard() or (address is not None and ipaddress.ip_address(sock.host) == address):
            return sock.listen
    return None


def socket_identity(sockets: tuple[SocketSpec, ...], reuseport: bool) -> tuple[Any, ...]:
    """What an instance was started with: which sockets, in which order, under which names. A
    change here needs new processes; a socket's backlog, mode, owner and group change live."""
    return (tuple((sock.listen, sock.name) for sock in sockets), reuseport)
