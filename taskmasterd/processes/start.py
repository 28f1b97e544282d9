"""The one call that turns a Launch into a running process: posix_spawn where it can, Popen else.

posix_spawn does in C what Popen does in a page of Python around the same vfork and exec: at
10 000 spawns that page was a third of the daemon's time (0.57 against 0.32-0.40 ms of CPU per
instance on the 2-core VM). It is called through kernel/posixspawn.py, which lets the event loop
run while the child execs (os.posix_spawn would hold the GIL). It cannot change directory, umask
or user itself: the spawn thread takes the directory and umask for the moment of the spawn
(`settings`: kernel/thread_fs.py), and a launch with another user execs setpriv(1), which takes
the ids and execs the program (Popen with a user forks the whole daemon, GIL held). Only an
inline spawn (no spawn thread) of such a launch, or one without setpriv, still goes through
Popen. A spawn with held sockets goes through posix_spawn and the trampoline of listenfds.py,
which places the sockets at 3, 4, … and applies directory, umask and user itself.

posix_spawn closes no descriptor: the child gets exactly what is not close-on-exec. Every
descriptor the daemon makes is (Python's default, and O_CLOEXEC/SOCK_CLOEXEC wherever one is made
by hand), and `close_inherited_on_exec` marks those the daemon was started with, so a child still
gets its three streams and nothing else, as with Popen's close_fds.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import subprocess
from typing import TYPE_CHECKING, Callable, ContextManager, Protocol

from ..kernel.posixspawn import posix_spawn
from .listenfds import listen_environment, socket_actions, trampoline_argv

if TYPE_CHECKING:
    from .launch import Account, Launch

# What Popen's restore_signals puts back to the default: Python ignores these for itself.
_RESTORED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name))


class Started(Protocol):
    """What the table keeps of a started process: a Popen, or a SpawnedProcess."""

    pid: int

    def poll(self) -> int | None: ...


class SpawnedProcess:
    """A child made by posix_spawn, reaped the way Popen.poll reaps."""

    __slots__ = ("pid", "returncode")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The returncode (negative: killed by that signal) once reaped, None while it runs."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is lost, as Popen says too
                self.returncode = 0
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


# setpriv(1) (util-linux), from the system's own directories only: a spawn with a user execs it
SETPRIV = next((path for path in ("/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv", "/sbin/setpriv")
                if os.access(path, os.X_OK)), None)

Placement = Callable[[], ContextManager[None]]  # puts the forking thread where the child must be born
Settings = Callable[["Launch"], ContextManager[None]]  # gives the forking thread the launch's directory and umask


def start_process(launch: Launch, program: str | None, stdin: int, stdout: int, stderr: int,
                  placement: Placement | None = None, settings: Settings | None = None) -> Started:
    """Start `launch` in a new session with these standard streams (fds, or subprocess.DEVNULL).
    `program`: the file argv[0] names, when it was found on PATH; `placement`: entered around the
    fork (a cgroup cell: the child inherits the forking thread's cgroups); `settings`: gives the
    calling thread the launch's directory and umask for the spawn (the spawn thread's
    thread_fs.taken), so that posix_spawn serves where Popen would fork. Raises what Popen
    raises when the program cannot run."""
    with placement() if placement is not None else contextlib.nullcontext():
        return _start(launch, program, stdin, stdout, stderr, settings)


def _start(launch: Launch, program: str | None, stdin: int, stdout: int, stderr: int,
           settings: Settings | None) -> Started:
    path = program if program is not None else launch.argv[0] if "/" in launch.argv[0] else None
    actions = [_stream_action(fd, target) for target, fd in enumerate((stdin, stdout, stderr))]
    if launch.sockets:
        return _start_with_sockets(launch, path, actions)
    plain = launch.cwd is None and launch.umask is None and launch.account is None
    if path is not None and (plain or settings is not None):  # (not found on PATH: Popen searches it)
        program_path, argv = path, launch.argv
        if launch.account is not None and _other_ids(launch.account):
            _check_runnable(path)  # as Popen would say, not as setpriv's exit code would
            program_path, argv = _as_user(launch.account, path, launch.argv)
        with settings(launch) if settings is not None and not plain else contextlib.nullcontext():
            return SpawnedProcess(posix_spawn(program_path, argv, launch.env, file_actions=actions, setsid=True,
                                              setsigdef=_RESTORED_SIGNALS, setsigmask=()))
    ids: dict = {}
    if launch.account is not None:
        account = launch.account
        ids = {"user": account.uid, "group": account.gid, "extra_groups": list(account.groups)}
    blocked = signal.pthread_sigmask(signal.SIG_SETMASK, ())  # a Popen child inherits the caller's mask
    try:
        return subprocess.Popen(
            launch.argv, executable=program, stdin=stdin, stdout=stdout, stderr=stderr, cwd=launch.cwd,
            env=launch.env, umask=launch.umask if launch.umask is not None else -1, start_new_session=True,
            close_fds=True, **ids)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@functools.cache
def _own_ids() -> tuple[int, int, tuple[int, ...]]:
    return os.getuid(), os.getgid(), tuple(os.getgroups())  # the daemon never changes its own


def _other_ids(account: Account) -> bool:
    return (account.uid, account.gid, tuple(account.groups)) != _own_ids()


def account_taken_in_child(launch: Launch) -> bool:
    """Whether a posix_spawn can give the launch its account: none, the daemon's own, or another
    that setpriv takes (which only root may ask for); else Popen, which fails as it always did."""
    account = launch.account
    return account is None or not _other_ids(account) or (os.geteuid() == 0 and SETPRIV is not None)


def _as_user(account: Account, path: str, argv: tuple[str, ...]) -> tuple[str, list[str]]:
    """setpriv(1) as the program: it takes the account's groups, gid and uid (real, effective,
    and at its exec saved: no way back, no capability left) and execs the program with the same
    argv (found as `path` was, on the launch's PATH), same pid, in the same cell. A vfork and two
    execs instead of Popen's fork of the whole daemon, GIL held."""
    assert SETPRIV is not None
    groups = ["--groups", ",".join(map(str, account.groups))] if account.groups else ["--clear-groups"]
    first = argv[0] if "/" in argv[0] or os.path.basename(path) == argv[0] else path
    return SETPRIV, [SETPRIV, "--reuid", str(account.uid), "--regid", str(account.gid), *groups, "--",
                     first, *argv[1:]]


def _check_runnable(path: str | None, name: str = "") -> None:
    """A program that cannot run fails at the spawn, as Popen's would, not later in a helper."""
    if path is None or not os.access(path, os.X_OK):
        missing = path is None or not os.path.exists(path)
        raise OSError(errno.ENOENT if missing else errno.EACCES, os.strerror(errno.ENOENT if missing else errno.EACCES),
                      path or name)


def _start_with_sockets(launch: Launch, path: str | None, actions: list[tuple]) -> SpawnedProcess:
    """The sockets at 3, 4, … (after the streams: a stream's own number may be among them), then
    the trampoline, which execs the program."""
    _check_runnable(path, launch.argv[0])
    env = {**launch.env, **listen_environment(launch)}  # last: a job's `env` cannot forge them
    argv = trampoline_argv(launch, path, env)
    return SpawnedProcess(posix_spawn(argv[0], argv, env, file_actions=actions + socket_actions(launch),
                                      setsid=True, setsigdef=_RESTORED_SIGNALS, setsigmask=()))


def _stream_action(fd: int, target: int) -> tuple:
    if fd == subprocess.DEVNULL:
        return (os.POSIX_SPAWN_OPEN, target, os.devnull, os.O_RDWR, 0)
    return (os.POSIX_SPAWN_DUP2, fd, target)


def close_inherited_on_exec() -> None:
    """Mark close-on-exec every descriptor above 2 that the daemon was started with (a shell's,
    a parent's): no child may inherit them. Called once, before anything is opened."""
    try:
        inherited = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in inherited:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own descriptor, closed meanwhile
