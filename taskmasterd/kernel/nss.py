"""The name services (passwd, group): what a job's `user` stands for.

NSS may be a network service (LDAP, SSSD) seconds away, so these calls block: the daemon makes
them on a worker thread (`asyncio.to_thread`), never on its event loop — a job's user when its
file is loaded, a peer's groups when it connects (control/accounts.py). Offline tools
(`taskmasterd --check`) call them directly.
"""
from __future__ import annotations

import pwd


def passwd_entry(user: str) -> pwd.struct_passwd:
    """The passwd entry of a job's `user` (a name, or a uid written in ASCII digits); KeyError
    when there is none."""
    if user.isascii() and user.isdigit():
        try:
            return pwd.getpwuid(int(user))
        except OverflowError:
            raise KeyError(user) from None
    return pwd.getpwnam(user)


def uid_of(user: str) -> int | None:
    """The uid `user` stands for, or None when there is no such user."""
    try:
        return passwd_entry(user).pw_uid
    except KeyError:
        return None


def gid_of(group: str) -> int | None:
    """The gid `group` stands for (a name, or a gid written in ASCII digits), or None when there
    is no such group."""
    import grp

    if group.isascii() and group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None
