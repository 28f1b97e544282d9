"""Daemon-level ColonyOS settings: config file section overridden by the environment.

Environment names follow the Go CLI and pycolonies (reference.md §3.2, executor.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

DEFAULT_PORT = 50080
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

    def __repr__(self) -> str:
        key = "<set>" if self.colony_prvkey else None
        return (
            f"ColoniesSettings(host={self.host!r}, port={self.port}, tls={self.tls}, "
            f"colony_name={self.colony_name!r}, colony_prvkey={key}, location={self.location!r})"
        )

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
        return cls(
            host=str(host),
            port=_port(port),
            tls=_flag(tls),
            colony_name=str(pick("colony", "COLONIES_COLONY_NAME") or ""),
            colony_prvkey=_prvkey(prvkey),
            location=location,
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
