"""A job's directory and umask, taken by the calling thread alone for the moment of a spawn.

A thread that has unshared CLONE_FS has a cwd and umask of its own (its fs_struct): the spawn
thread changes them around a posix_spawn, so the child is born with them, as Popen's child would
take them after its fork, and gives them back after. The loop thread's stay as they are.

(Not the job's user: ids taken by one thread alone, with the raw system calls, would let that user
signal the daemon meanwhile — kill(2) admits a sender whose uid is the target thread's real uid,
and SIGKILL or SIGSTOP to one thread takes the whole process. processes/start.py execs setpriv(1)
in the child instead.)
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


class CannotGoBack(Exception):
    """The thread could not take its own directory or umask back: it must not spawn again."""


@contextlib.contextmanager
def taken(cwd: str | None, umask: int | None, home: int) -> Iterator[None]:
    """The calling thread (which has unshared CLONE_FS) in `cwd`, with `umask`; back in `home` (a
    descriptor of its usual directory) with its own umask after. Raises what a change raises
    (nothing is left changed then), and CannotGoBack when it cannot return."""
    moved = False
    old_umask: int | None = None
    try:
        if cwd is not None:
            os.chdir(cwd)
            moved = True
        if umask is not None:
            old_umask = os.umask(umask)
        yield
    finally:
        try:
            if old_umask is not None:
                os.umask(old_umask)
            if moved:
                os.fchdir(home)
        except OSError as exc:
            raise CannotGoBack(f"cannot go back to its own directory: {exc.strerror}") from None
