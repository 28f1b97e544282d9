"""Who may control the daemon: the access policy, as pure code.

The kernel says who the peer is (`peercred.Peer`), NSS what groups it is in (`accounts.PeerAccount`);
this module only decides. Admitted: root, the daemon's own uid, the uids of `control_users`, and
members of `control_groups`. A host elsewhere is never given a uid and is admitted only from an
`allow_remote` network (unauthenticated). A local peer is judged by its uid whatever address it
used, so binding a public address does not let a local user in through it; a local peer whose
socket the kernel cannot name (closed before it was looked at) is refused.
"""
from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable

from .peercred import Peer

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class PeerAccount:
    """Who a connecting peer is in NSS: its passwd name and groups (not to be confused with the
    account a child runs as, processes.launch.Account)."""

    uid: int
    name: str | None  # None: no passwd entry for the uid
    groups: frozenset[int] = frozenset()  # primary and supplementary gids


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """`allow_remote` entries: CIDR blocks or single addresses; ValueError names a bad one."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ValueError(f"allow_remote: {cidr!r} is not an IP network (write e.g. 192.0.2.0/24)") from None
    return tuple(networks)


@dataclass(frozen=True)
class AccessPolicy:
    daemon_uid: int
    users: frozenset[int] = frozenset()
    groups: frozenset[int] = frozenset()
    remote: tuple[Network, ...] = field(default=())

    def admits_by_uid(self, uid: int) -> bool:
        return uid == 0 or uid == self.daemon_uid or uid in self.users

    def needs_account(self, peer: Peer) -> bool:
        """Whether `decide` needs the peer's account: for its groups, or its name in a refusal."""
        return peer.uid is not None and not self.admits_by_uid(peer.uid)

    def decide(self, peer: Peer, account: PeerAccount | None = None) -> str | None:
        """None when the peer may control the daemon, else the refusal to send it."""
        if peer.elsewhere:
            assert peer.address is not None and peer.uid is None
            address = ipaddress.ip_address(peer.address)
            if any(address in network for network in self.remote):
                return None
            return f"permission denied: {peer.address} is not on this host and not in allow_remote"
        if peer.uid is not None:
            if self.admits_by_uid(peer.uid) or account is not None and account.groups & self.groups:
                return None
            name = account.name if account is not None and account.name else "unknown user"
            return f"permission denied: uid {peer.uid} ({name}) may not control this daemon"
        return "permission denied: the kernel cannot tell who owns this connection (closed already?)"


class RefusalThrottle:
    """One log line per refused peer (a uid, or a remote address) per `interval` seconds, with at
    most `remembered` peers kept in mind (past that, newcomers go unlogged until some go quiet)."""

    def __init__(self, interval: float = 60.0, remembered: int = 4096) -> None:
        self.interval = interval
        self.remembered = remembered
        self._last: OrderedDict[object, float] = OrderedDict()  # oldest first

    def should_log(self, who: object, now: float) -> bool:
        last = self._last.get(who)
        if last is not None and now - last < self.interval:
            return False
        self._last.pop(who, None)
        while self._last and now - next(iter(self._last.values())) >= self.interval:
            self._last.popitem(last=False)
        if len(self._last) >= self.remembered:
            return False
        self._last[who] = now
        return True
