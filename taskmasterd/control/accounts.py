"""Accounts from NSS (passwd and group): the operator's names as ids, and a peer's groups.

NSS may be a network service (LDAP, SSSD), so the lookup for a connecting peer runs on a worker
thread and its answer is kept for `ttl` seconds: the event loop never waits on NSS, and a change
of membership applies within that time. The names in the configuration are looked up once, at
start-up, where an unknown one stops the daemon with a message.
"""
from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import time
from typing import Callable, Iterable

from .access import AccessPolicy, PeerAccount, parse_networks
from ..tasks import TaskOwner

log = logging.getLogger("taskmasterd.accounts")
ACCOUNT_TTL = 60.0


def user_ids(names: Iterable[str | int]) -> frozenset[int]:
    """uids of `control_users` entries (names, or numeric uids); ValueError names an unknown one."""
    uids = set()
    for name in names:
        if isinstance(name, int) or name.isdigit():
            uids.add(int(name))
            continue
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            raise ValueError(f"control_users: no such user {name!r}") from None
    return frozenset(uids)


def group_id(name: str) -> int:
    """gid of a `control_groups` entry (a name, or a numeric gid); ValueError if unknown."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"control_groups: no such group {name!r} (create it with: groupadd {name})") from None


def account(uid: int) -> PeerAccount:
    """The passwd name and every group (primary and supplementary) of uid; blocking."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return PeerAccount(uid, None)
    try:
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError:
        groups = [entry.pw_gid]
    return PeerAccount(uid, entry.pw_name, frozenset(groups))


class AccountCache:
    def __init__(self, ttl: float = ACCOUNT_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._known: dict[int, tuple[float, PeerAccount]] = {}
        self._asked: dict[int, asyncio.Task[PeerAccount]] = {}  # lookups under way, shared by their askers
        self._lookups = TaskOwner(log)

    def cached(self, uid: int) -> PeerAccount | None:
        known = self._known.get(uid)
        if known is None or self._clock() - known[0] >= self.ttl:
            return None
        return known[1]

    async def get(self, uid: int) -> PeerAccount:
        found = self.cached(uid)
        if found is not None:
            return found
        asked = self._asked.get(uid)
        if asked is None:
            asked = self._lookups.spawn(asyncio.to_thread(account, uid), None)  # its askers read its failure
            self._asked[uid] = asked
            asked.add_done_callback(lambda done: self._learn(uid, done))
        await asyncio.wait([asked])  # an asker that goes away leaves the lookup to the others
        return asked.result()

    async def close(self) -> None:
        """The lookups still under way end (their threads finish in the background)."""
        await self._lookups.close()

    def _learn(self, uid: int, done: asyncio.Future[PeerAccount]) -> None:
        del self._asked[uid]
        if not done.cancelled() and done.exception() is None:
            now = self._clock()
            if len(self._known) > 4096:  # uids are few; still, keep only what is fresh
                self._known = {key: entry for key, entry in self._known.items() if now - entry[0] < self.ttl}
            self._known[uid] = (now, done.result())


def resolve_policy(control_users: Iterable[str | int], control_groups: Iterable[str],
                   allow_remote: Iterable[str]) -> tuple[AccessPolicy, list[int]]:
    """The access policy of the configured names, and the control groups' gids in the order given
    (the first owns the unix socket); ValueError names what is wrong."""
    gids = [group_id(name) for name in control_groups]
    policy = AccessPolicy(os.geteuid(), user_ids(control_users), frozenset(gids), parse_networks(allow_remote))
    return policy, gids
