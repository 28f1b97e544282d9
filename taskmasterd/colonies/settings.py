"""Daemon-level ColonyOS settings: config file section overridden by the environment.

Environment names follow the Go CLI and pycolonies (reference.md §3.2, executor.md).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from typing import Any, Mapping

DEFAULT_PORT = 50080
DEFAULT_KEEPALIVE = 10.0  # seconds: the assign long-poll, and the keep-alive of a busy executor
MAX_KEEPALIVE = 3600.0
SERVER_STALE_DEFAULT = 600.0  # the server's COLONIES_STALE_EXECUTOR_DURATION when it is not set
_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # it goes into executor names
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class ColoniesSettings:
    host: str
    port: int = DEFAULT_PORT
    tls: bool = False
    colony_name: str = ""
    # The colony owner key lets the daemon add/approve executors itself; never shown.
    colony_prvkey: str | None = None
    location: str = ""  # the executors' location name, unless a job file names its own
    # How often the server hears from each executor: the assign long-poll's timeout, and the
    # period of the keep-alive of a busy one. The server removes an executor it has not heard from
    # for its stale-executor duration (and queues its running processes again).
    keepalive: float = DEFAULT_KEEPALIVE
    # The server's COLONIES_STALE_EXECUTOR_DURATION, when it is not its default; None: unknown.
    stale_executor_duration: float | None = None
    # This daemon's name in the colony: its executors' default `<job>.<hostname>`, and what a
    # blueprint's `hosts` are matched against.
    hostname: str = field(default_factory=socket.gethostname)
    blueprints: bool = False  # run the TaskmasterJob blueprints placed on this host (blueprints.py)
    # Who a blueprint's job may run as (names or uids); None: anyone but root. Any member of the
    # colony may declare a blueprint, so by default none runs a command as root here.
    blueprint_users: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        key = "<set>" if self.colony_prvkey else None
        return (
            f"ColoniesSettings(host={self.host!r}, port={self.port}, tls={self.tls}, "
            f"colony_name={self.colony_name!r}, colony_prvkey={key}, location={self.location!r}, "
            f"keepalive={self.keepalive!r}, stale_executor_duration={self.stale_executor_duration!r}, "
            f"hostname={self.hostname!r}, blueprints={self.blueprints!r}, blueprint_users={self.blueprint_users!r})"
        )

    def contact_problem(self) -> str | None:
        """Why the contact period is unsafe against the server's stale-executor duration, or None:
        it must leave room for one late contact, so at most half of it."""
        stale = self.stale_executor_duration or SERVER_STALE_DEFAULT
        if self.keepalive * 2 <= stale:
            return None
        source = ("COLONIES_STALE_EXECUTOR_DURATION" if self.stale_executor_duration
                  else "the server's default COLONIES_STALE_EXECUTOR_DURATION")
        return (f"colonies.keepalive is {self.keepalive:g} s, but the server removes an executor it has not heard "
                f"from for {stale:g} s ({source}) and queues its running processes again: one late contact is "
                f"enough; set colonies.keepalive to at most {stale / 2:g} s")

    @classmethod
    def from_sources(cls, config: Mapping[str, Any], environ: Mapping[str, str]) -> ColoniesSettings | None:
        """Settings from ``config["colonies"]`` then the environment; None without a host."""
        section = config.get("colonies") or {}
        if not isinstance(section, Mapping):
            raise ValueError('"colonies" must be an object')

        def pick(file_key: str, *env_names: str) -> Any:
            for name in env_names:
                if environ.get(name):
                    return environ[name]
            return section.get(file_key)

        host = pick("host", "COLONIES_SERVER_HOST")
        if not host:
            return None
        port = pick("port", "COLONIES_SERVER_HTTP_PORT", "COLONIES_SERVER_PORT")
        tls = pick("tls", "COLONIES_TLS", "COLONIES_SERVER_TLS")
        prvkey = pick("colony_prvkey", "COLONIES_COLONY_PRVKEY")
        location = section.get("location", "")
        if not isinstance(location, str):
            raise ValueError(f"invalid Colonies location {location!r} (want a string)")
        stale = pick("stale_executor_duration", "COLONIES_STALE_EXECUTOR_DURATION")
        hostname = section.get("hostname", socket.gethostname())
        if "hostname" in section and (not isinstance(hostname, str) or not _HOSTNAME.fullmatch(hostname)):
            raise ValueError(f"invalid Colonies hostname {hostname!r} (want letters, digits, '.', '_' and '-')")
        blueprints = section.get("blueprints", False)
        if not isinstance(blueprints, bool):
            raise ValueError(f"invalid Colonies blueprints {blueprints!r} (want true or false)")
        users = section.get("blueprint_users")
        if users is not None and (not isinstance(users, list) or any(
                isinstance(u, bool) or not isinstance(u, (str, int)) or u == "" for u in users)):
            raise ValueError(f"invalid Colonies blueprint_users {users!r} (want a list of user names or uids)")
        return cls(
            host=str(host),
            port=_port(port),
            tls=_flag(tls),
            colony_name=str(pick("colony", "COLONIES_COLONY_NAME") or ""),
            colony_prvkey=_prvkey(prvkey),
            location=location,
            keepalive=_seconds("keepalive", section.get("keepalive", DEFAULT_KEEPALIVE), 1.0, MAX_KEEPALIVE),
            stale_executor_duration=None if stale in (None, "") else _seconds(
                "stale_executor_duration", stale, 1.0, float(2**31)),
            hostname=hostname,
            blueprints=blueprints,
            blueprint_users=None if users is None else tuple(str(u) for u in users),
        )


from_sources = ColoniesSettings.from_sources


def _port(value: Any) -> int:
    if value is None or value == "":
        return DEFAULT_PORT
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid Colonies port {value!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"invalid Colonies port {value!r}")
    return port


def _seconds(name: str, value: Any, low: float, high: float) -> float:
    """A number of seconds from the file (a number) or the environment (its text)."""
    try:
        seconds = float(value) if isinstance(value, str) else value
    except ValueError:
        seconds = None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not low <= seconds <= high:
        raise ValueError(f"invalid Colonies {name} {value!r} (want seconds from {low:g} to {high:g})")
    return float(seconds)


def _flag(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"invalid Colonies TLS flag {value!r}")


def _prvkey(value: Any) -> str | None:
    if not value:
        return None
    text = str(value).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        # Say what is wrong without echoing any part of the secret.
        raise ValueError("invalid Colonies colony private key (want 64 hex characters)")
    return text
