"""The spawner: turn a job spec into a running process group leader watched through a pidfd.

Each child gets its own session (so its own process group: signals go to the group, and a
terminal's Ctrl-C never reaches it). Only a job that asks for `user` pays for the slower
setuid path; everything else stays on subprocess's vfork path.
"""
from __future__ import annotations

import asyncio
import errno
import os
import pwd
import signal
import subprocess
from dataclasses import dataclass
from typing import Mapping

from .jobfile import JobSpec

PRVKEY_SUFFIX = "PRVKEY"


def inherited_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The daemon's environment as jobs see it: never a Colonies private key."""
    return {k: v for k, v in environ.items() if not (k.startswith("COLONIES_") and k.endswith(PRVKEY_SUFFIX))}


@dataclass(frozen=True, slots=True)
class Account:
    uid: int
    gid: int
    groups: tuple[int, ...]
    env: tuple[tuple[str, str], ...]


def lookup_account(user: str) -> Account:
    entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    return Account(
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)),
        env=(("HOME", entry.pw_dir), ("USER", entry.pw_name), ("LOGNAME", entry.pw_name)),
    )


def child_environment(spec: JobSpec, base: Mapping[str, str], extra: Mapping[str, str] = {}) -> dict[str, str]:
    env = dict(base)
    if spec.user is not None:
        env.update(lookup_account(spec.user).env)
    env.update(spec.env)
    env.update(extra)
    return env


class Child:
    """A spawned process group leader. `exited` resolves with subprocess's returncode
    (negative = killed by that signal) as soon as the kernel reports the exit on the pidfd."""

    def __init__(self, popen: subprocess.Popen, loop: asyncio.AbstractEventLoop):
        self.pid = popen.pid
        self._popen = popen
        self._loop = loop
        self.exited: asyncio.Future[int] = loop.create_future()
        self._pidfd = os.pidfd_open(popen.pid)
        loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        returncode = self._popen.poll()  # reaps through Popen so it never reaps a recycled pid later
        if returncode is None:
            return
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        if not self.exited.done():
            self.exited.set_result(returncode)

    def signal_group(self, sig: int) -> bool:
        """Signal the whole process group; False when nothing of it is left."""
        try:
            os.killpg(self.pid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:  # a group member changed user; still try the leader
            try:
                os.kill(self.pid, sig)
                return True
            except ProcessLookupError:
                return False

    def kill_leftovers(self) -> None:
        """After the leader exited, SIGKILL what it left in its group (no orphan survives it)."""
        self.signal_group(signal.SIGKILL)

    async def stop(self, sig: int, grace: float) -> int:
        """Stop signal to the group, SIGKILL after `grace` seconds; returns the returncode."""
        self.signal_group(sig)
        try:
            return await asyncio.wait_for(asyncio.shield(self.exited), grace)
        except asyncio.TimeoutError:
            self.signal_group(signal.SIGKILL)
            return await self.exited


def spawn(
    spec: JobSpec,
    env: Mapping[str, str],
    stdout: int,
    stderr: int,
    extra_args: tuple[str, ...] = (),
) -> Child:
    """Start `spec`'s command (plus `extra_args`) in a new session. `stdout`/`stderr` are fds or
    subprocess.DEVNULL. Raises OSError when the program cannot be started."""
    kwargs: dict = {}
    if spec.user is not None:
        account = lookup_account(spec.user)
        kwargs = {"user": account.uid, "group": account.gid, "extra_groups": list(account.groups)}
    popen = subprocess.Popen(
        (*spec.argv, *extra_args),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=spec.workingdir,
        env=env,
        umask=spec.umask if spec.umask is not None else -1,
        start_new_session=True,
        close_fds=True,
        **kwargs,
    )
    return Child(popen, asyncio.get_running_loop())


def spawn_error_text(exc: OSError) -> str:
    if exc.errno == errno.ENOENT and exc.filename:
        return f"spawn error: no such file or directory: {exc.filename}"
    if exc.errno == errno.EACCES:
        return f"spawn error: permission denied: {exc.filename or ''}".rstrip()
    return f"spawn error: {exc.strerror or exc}"
