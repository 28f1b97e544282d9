"""systemd's socket-activation protocol for a spawn: the held sockets as descriptors 3, 4, …,
with LISTEN_FDS (how many), LISTEN_FDNAMES (their names, colon-separated) and LISTEN_PID (the
process's own pid: sd_listen_fds() refuses the sockets unless it is).

Nothing written for sd_listen_fds runs without LISTEN_PID, and only the child knows its pid.
os.posix_spawn runs no code between the fork and the exec, and Popen, which could, cannot place
descriptors at 3, 4, … (pass_fds keeps their numbers) nor change the environment it execs with.
So a spawn with sockets places them with posix_spawn's file actions (dup2 from the daemon's copies,
all at FIRST_HELD_FD or above, so no dup2 overwrites a copy still to be placed) and execs a tiny
trampoline in the same process: the daemon's own Python, isolated and without site, which sets
LISTEN_PID to its pid, applies the job's working directory, umask and user, and execs the
program — same pid, same descriptors. It costs ~10 ms per spawn of such a job (measured: 9.6 ms
p50 on the 2-core VM against 0.9 ms for a bare posix_spawn; `sh -c 'LISTEN_PID=$$ exec …'` took
1.5 ms, but a shell drops environment variables whose names are not shell names and cannot
change user). The trampoline puts back what Python's start-up changes: the signals it ignores
(SIGPIPE, SIGXFSZ: an ignored signal stays ignored across exec) and LC_CTYPE, which it sets in a
C locale (PEP 538).
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .launch import Launch

SD_LISTEN_FDS_START = 3
_ABSENT = "-"  # LC_CTYPE was not in the environment (else "=" + its value)

TRAMPOLINE = """\
import os, sys, _signal
cwd, mask, uid, gid, groups, lc_ctype, path, *argv = sys.argv[1:]
try:
    if cwd:
        os.chdir(cwd)
    if mask:
        os.umask(int(mask, 8))
    if uid:
        os.setgroups([int(g) for g in groups.split(",") if g])
        os.setresgid(int(gid), int(gid), int(gid))
        os.setresuid(int(uid), int(uid), int(uid))
    for number in (_signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(number, _signal.SIG_DFL)
    env = dict(os.environb)
    if lc_ctype == "-":
        env.pop(b"LC_CTYPE", None)
    else:
        env[b"LC_CTYPE"] = os.fsencode(lc_ctype[1:])
    env[b"LISTEN_PID"] = b"%d" % os.getpid()
    os.execve(path, argv, env)
except OSError as exc:
    os.write(2, b"taskmasterd: cannot start %s: %s\\n" % (os.fsencode(path), (exc.strerror or str(exc)).encode()))
    os._exit(127)
"""


def listen_environment(launch: Launch) -> dict[str, str]:
    """LISTEN_FDS and LISTEN_FDNAMES (LISTEN_PID is the trampoline's)."""
    return {"LISTEN_FDS": str(len(launch.sockets)), "LISTEN_FDNAMES": ":".join(name for _, name in launch.sockets)}


def socket_actions(launch: Launch) -> list[tuple[int, int, int]]:
    """posix_spawn file actions putting the held sockets at 3, 4, … (after the standard streams)."""
    return [(os.POSIX_SPAWN_DUP2, fd, SD_LISTEN_FDS_START + position) for position, (fd, _) in enumerate(launch.sockets)]


def trampoline_argv(launch: Launch, path: str, env: dict[str, str]) -> list[str]:
    """The trampoline's command line: what it applies, then the program and its argv."""
    account = launch.account
    ids = (str(account.uid), str(account.gid), ",".join(map(str, account.groups))) if account else ("", "", "")
    lc_ctype = "=" + env["LC_CTYPE"] if "LC_CTYPE" in env else _ABSENT
    umask = f"{launch.umask:o}" if launch.umask is not None else ""
    return [sys.executable, "-I", "-S", "-c", TRAMPOLINE, launch.cwd or "", umask, *ids, lc_ctype, path, *launch.argv]
