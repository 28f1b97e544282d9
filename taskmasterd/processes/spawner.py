"""What a child is given: its environment, its account, and the `Launch` made from a job spec.

Starting and stopping it is table.py's job; this module only decides what goes in.
"""
from __future__ import annotations

import errno
import os
import subprocess
from typing import TYPE_CHECKING, Mapping

from ..kernel.nss import passwd_entry
from .launch import Account, Launch

if TYPE_CHECKING:
    from ..jobfiles.jobfile import JobSpec

PRVKEY_SUFFIX = "PRVKEY"
# Variables systemd (or another manager) addresses to the daemon itself: a child that saw them
# could send READY=1 in the daemon's name, take its sockets, or feed its watchdog.
DAEMON_PLUMBING = frozenset({
    "NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_PID", "WATCHDOG_USEC",
    "JOURNAL_STREAM", "MAINPID", "MANAGERPID", "INVOCATION_ID", "TRIGGER_UNIT", "TRIGGER_PATH",
    "TRIGGER_TIMER_REALTIME_USEC", "TRIGGER_TIMER_MONOTONIC_USEC", "MONITOR_SERVICE_RESULT",
})
def inherited_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The daemon's environment as jobs see it: never a Colonies private key, never the
    daemon's own service-manager plumbing."""
    return {k: v for k, v in environ.items()
            if k not in DAEMON_PLUMBING and not (k.startswith("COLONIES_") and k.endswith(PRVKEY_SUFFIX))}


def lookup_account(user: str) -> Account:
    """Whom a job's `user` runs as; KeyError when there is no such user. Blocking (NSS): call it
    on a worker thread."""
    entry = passwd_entry(user)
    return Account(
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)),
        env=(("HOME", entry.pw_dir), ("USER", entry.pw_name), ("LOGNAME", entry.pw_name),
             ("SHELL", entry.pw_shell or "/bin/sh")),
    )


# What a login gives (login(1), su -l): the PATH of /etc/login.defs' ENV_PATH and ENV_SUPATH.
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_LANG = "C.UTF-8"


def login_environment(account: Account, daemon_env: Mapping[str, str]) -> dict[str, str]:
    """A job of another user starts from what a login would give that user: HOME, USER, LOGNAME,
    SHELL, a default PATH, and the daemon's LANG (or C.UTF-8) — nothing else of the daemon's."""
    return {**dict(account.env), "PATH": ROOT_PATH if account.uid == 0 else USER_PATH,
            "LANG": daemon_env.get("LANG") or DEFAULT_LANG}


def child_environment(spec: JobSpec, base: Mapping[str, str], account: Account | None,
                      extra: Mapping[str, str] = {}, daemon_uid: int | None = None) -> dict[str, str]:
    """The rule: a job that runs as the daemon's own user inherits the daemon's environment
    (`base`: less its Colonies keys and service-manager plumbing); a job of another `user` starts
    from `login_environment` unless its file says `"inherit_env": true`. Then its `env`, then
    `extra` (the daemon's TASKMASTER_* variables)."""
    uid = os.geteuid() if daemon_uid is None else daemon_uid
    if account is not None and account.uid != uid and not spec.inherit_env:
        env = login_environment(account, base)
    else:
        env = dict(base)
        if account is not None:
            env.update(account.env)
    env.update(spec.env)
    env.update(extra)
    return env


def launch_for(spec: JobSpec, env: Mapping[str, str], account: Account | None,
               extra_args: tuple[str, ...] = (), unit: str | None = None,
               sockets: tuple[tuple[int, str], ...] = ()) -> Launch:
    """`account`: the spec's user resolved (Job.account), or None when it has none; `unit`: what
    the spawn's cgroup is named after (default: the job's name); `sockets`: the held sockets it
    gets as 3, 4, … (descriptor, name)."""
    return Launch(argv=(*spec.argv, *extra_args), env=env, cwd=spec.workingdir, umask=spec.umask,
                  account=account, stopsignal=spec.stopsignal, stoptime=spec.stoptime,
                  unit=unit or spec.name, resources=spec.resources, sockets=sockets)


def spawn_error_text(exc: BaseException) -> str:
    """One line for any reason a spawn failed."""
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOENT and exc.filename:
            return f"spawn error: no such file or directory: {exc.filename}"
        if exc.errno == errno.EACCES:
            return f"spawn error: permission denied: {exc.filename or ''}".rstrip()
        return f"spawn error: {exc.strerror or exc}"
    if isinstance(exc, KeyError):
        return f"spawn error: no such user {exc.args[0]!r}" if exc.args else "spawn error: no such user"
    if isinstance(exc, subprocess.SubprocessError):
        return f"spawn error: {exc}"
    return f"spawn error: {exc}" if str(exc) else f"spawn error: {type(exc).__name__}"
