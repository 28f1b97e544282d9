"""Spawning from a thread that has a descriptor table of its own, nearly empty, while the loop runs on.

A spawn made here need not stop the event loop while the child execs: a vfork suspends only the
thread that called it, and posix_spawn releases the GIL for it (kernel/posixspawn.py). `submit`
hands a spawn over and returns a future (the table does so once execs are slow); `start` waits for
it. A launch with a directory, umask or user is made here too: the thread takes the directory and
umask for itself (thread_fs.py), setpriv(1) the user in the child, where Popen would fork the daemon.

A fork copies the caller's descriptor table and the exec then closes the copies, so a spawn costs
time in proportion to the descriptors the daemon holds: with 5000 captured instances (10 000 pipe
ends) each spawn took 3 ms instead of 0.8. This thread calls unshare(CLONE_FILES) once, closes
every copied descriptor but its end of a socket pair, and from then on spawns (process_start):
the descriptors a child needs (its stdout and stderr pipe ends, its held sockets) are passed to it over the socket
pair (SCM_RIGHTS) with each request, and closed again once the child has them. The children are the daemon's like
any other (a thread's child belongs to the process: SIGCHLD and waitid work as before).

Where unshare is refused (a seccomp filter), there is no thread: spawns are made inline, and the
loop waits for each exec as it did.

The thread blocks every signal, so SIGCHLD is always taken by a thread that shares the loop's
descriptor table and its signal wake-up fd (a thread left over from an earlier loop, an embedding
program's or a test's, would write a stale one); its children start with no signal blocked
(posix_spawn's sigmask, and around Popen). The wake-up fd stays open in its table all the same.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import fcntl
import logging
import os
import queue
import resource
import signal
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING, ContextManager

from ..kernel import thread_fs
from .heldsockets import FIRST_HELD_FD
from .start import Placement, Started, account_taken_in_child, start_process

if TYPE_CHECKING:
    from .launch import Launch

log = logging.getLogger("taskmasterd.processes")

CLONE_FILES = 0x400
CLONE_FS = 0x200  # its own directory and umask, which a spawn may change for itself
Spawning = concurrent.futures.Future  # of a Started


class SpawnThread:
    def __init__(self, wakeup_fd: int) -> None:
        """`wakeup_fd`: the loop's signal wake-up fd (signal.set_wakeup_fd), or -1."""
        self._requests: queue.SimpleQueue[tuple[Launch, str | None, Placement | None, Spawning] | None] = (
            queue.SimpleQueue())
        # Made before the thread unshares, so each table holds both ends; each side closes the
        # end it does not use.
        self._ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ready = threading.Event()
        self._failure: OSError | None = None
        self._home = -1
        self.exec_wait = 0.0  # seconds the latest spawn took here, its exec included
        self._thread = threading.Thread(target=self._run, args=(theirs.fileno(), wakeup_fd),
                                        name="taskmasterd-spawn", daemon=True)
        self._thread.start()
        self._ready.wait()
        theirs.close()  # in the loop's table; the thread has its own copy of the descriptor
        if self._failure is not None:
            self._ours.close()
            raise self._failure

    def submit(self, launch: Launch, program: str | None, stdout: int, stderr: int,
               placement: Placement | None = None) -> Spawning:
        """process_start.start_process in the thread, with stdin on /dev/null and these two
        descriptors (the loop's, or subprocess.DEVNULL; the thread has its own copies once this
        returns), placed by the thread that forks. The future holds what it returns or raises;
        it is settled in the thread (a done-callback runs there)."""
        streams = (stdout, stderr)
        passed = [fd for fd in streams if fd >= 0] + [fd for fd, _ in launch.sockets]  # held sockets after them
        which = bytes(index for index, fd in enumerate(streams) if fd >= 0)
        socket.send_fds(self._ours, [which or b"-"], passed)
        spawning: Spawning = concurrent.futures.Future()
        self._requests.put((launch, program, placement, spawning))
        return spawning

    def start(self, launch: Launch, program: str | None, stdout: int, stderr: int,
              placement: Placement | None = None) -> Started:
        """`submit`, and wait for it (and for the spawns submitted before it). Raises what it raises."""
        return self.submit(launch, program, stdout, stderr, placement).result()

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join()
        self._ours.close()

    # --- in the thread --------------------------------------------------------------------------

    def _run(self, ours: int, wakeup_fd: int) -> None:
        # No signal for this thread: one whose table holds an older loop's wake-up fd must never
        # take SIGCHLD. Its children start with none blocked (start.py).
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            requests = self._private_table(ours, wakeup_fd)
        except OSError as exc:  # the thread ends, and its table with it
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        while (request := self._requests.get()) is not None:
            *spawn, spawning = request
            began = time.monotonic()
            result = self._spawn(requests, *spawn)
            self.exec_wait = time.monotonic() - began
            if isinstance(result, BaseException):
                spawning.set_exception(result)
            else:
                spawning.set_result(result)
        requests.close()

    def _private_table(self, ours: int, wakeup_fd: int) -> socket.socket:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_FILES | CLONE_FS) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        # The copies of the loop's descriptors go (a pipe's write end held here would keep its
        # drain from ever seeing EOF), all but ours and the wake-up fd.
        low = 3
        for keep in sorted({ours, wakeup_fd} - {-1}) + [resource.getrlimit(resource.RLIMIT_NOFILE)[0]]:
            os.closerange(low, keep)
            low = keep + 1
        self._home = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # where a spawn's chdir comes back to
        return socket.socket(fileno=ours)

    def _settings(self, launch: Launch) -> ContextManager[None]:
        """The launch's directory and umask, for this thread alone, around its spawn."""
        return thread_fs.taken(launch.cwd, launch.umask, self._home)

    def _spawn(self, requests: socket.socket, launch: Launch, program: str | None,
               placement: Placement | None) -> Started | BaseException:
        try:
            which, fds, _, _ = socket.recv_fds(requests, 2, 2 + len(launch.sockets))
        except BaseException as exc:
            return exc
        for fd in fds:
            os.set_inheritable(fd, False)  # as received they are not: the child must get only the copies
        streams = [subprocess.DEVNULL, subprocess.DEVNULL]
        which = which.rstrip(b"-")
        for index, fd in zip(which, fds):
            streams[index] = fd
        try:
            if launch.sockets:  # as received they are low, where the spawn puts them: moved up first
                held = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FIRST_HELD_FD) for fd in fds[len(which):]]
                fds += held
                launch = dataclasses.replace(launch, sockets=tuple(zip(held, (name for _, name in launch.sockets))))
            return start_process(launch, program, subprocess.DEVNULL, *streams, placement=placement,
                                 settings=self._settings if account_taken_in_child(launch) else None)
        except thread_fs.CannotGoBack as exc:  # a thread left in a job's directory must not spawn again
            log.critical("the spawn thread %s: exiting", exc)
            os._exit(70)  # EX_SOFTWARE; the next daemon drains what this one left
        except BaseException as exc:
            return exc
        finally:
            for fd in fds:
                os.close(fd)
