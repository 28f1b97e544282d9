"""Spawning from a thread that has a descriptor table of its own, nearly empty.

A fork copies the caller's descriptor table and the exec then closes the copies, so a spawn costs
time in proportion to the descriptors the daemon holds: with 5000 captured instances (10 000 pipe
ends) each spawn took 3 ms instead of 0.8. This thread calls unshare(CLONE_FILES) once, closes
every copied descriptor but its end of a socket pair, and from then on spawns (process_start):
the descriptors a child needs (its stdout and stderr pipe ends, its held sockets) are passed to it over the socket
pair (SCM_RIGHTS) with each request, and closed again once the child has them. The children are the daemon's like
any other (a thread's child belongs to the process: SIGCHLD and waitid work as before).

The loop thread waits for each spawn, as it waits for an inline one; the thread only changes
where the fork happens. Where unshare is refused (a seccomp filter), spawns stay inline.

One descriptor must stay in the thread's table under its number: the signal wake-up fd. SIGCHLD
for a child goes first to the thread that forked it, and the C signal handler, running in that
thread, writes the wake-up byte to that fd number; closed here, the loop would never hear of
the child's exit. Blocking signals in the thread is no way out: children inherit the mask.
"""
from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import os
import queue
import resource
import socket
import subprocess
import threading
from typing import TYPE_CHECKING

from .heldsockets import FIRST_HELD_FD
from .start import Placement, Started, start_process

if TYPE_CHECKING:
    from .launch import Launch

CLONE_FILES = 0x400


class SpawnThread:
    def __init__(self, wakeup_fd: int) -> None:
        """`wakeup_fd`: the loop's signal wake-up fd (signal.set_wakeup_fd), or -1."""
        self._requests: queue.SimpleQueue[tuple[Launch, str | None, Placement | None] | None] = queue.SimpleQueue()
        self._replies: queue.SimpleQueue[Started | BaseException] = queue.SimpleQueue()
        # Made before the thread unshares, so each table holds both ends; each side closes the
        # end it does not use.
        self._ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ready = threading.Event()
        self._failure: OSError | None = None
        self._thread = threading.Thread(target=self._run, args=(theirs.fileno(), wakeup_fd),
                                        name="taskmasterd-spawn", daemon=True)
        self._thread.start()
        self._ready.wait()
        theirs.close()  # in the loop's table; the thread has its own copy of the descriptor
        if self._failure is not None:
            self._ours.close()
            raise self._failure

    def start(self, launch: Launch, program: str | None, stdout: int, stderr: int,
              placement: Placement | None = None) -> Started:
        """process_start.start_process in the thread, with stdin on /dev/null and these two
        descriptors (the loop's, or subprocess.DEVNULL), placed by the thread that forks. Raises
        what it raises."""
        streams = (stdout, stderr)
        passed = [fd for fd in streams if fd >= 0] + [fd for fd, _ in launch.sockets]  # held sockets after them
        which = bytes(index for index, fd in enumerate(streams) if fd >= 0)
        socket.send_fds(self._ours, [which or b"-"], passed)
        self._requests.put((launch, program, placement))
        reply = self._replies.get()
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join()
        self._ours.close()

    # --- in the thread --------------------------------------------------------------------------

    def _run(self, ours: int, wakeup_fd: int) -> None:
        try:
            requests = self._private_table(ours, wakeup_fd)
        except OSError as exc:  # the thread ends, and its table with it
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        while (request := self._requests.get()) is not None:
            self._replies.put(self._spawn(requests, *request))
        requests.close()

    def _private_table(self, ours: int, wakeup_fd: int) -> socket.socket:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_FILES) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        # The copies of the loop's descriptors go (a pipe's write end held here would keep its
        # drain from ever seeing EOF), all but ours and the wake-up fd.
        low = 3
        for keep in sorted({ours, wakeup_fd} - {-1}) + [resource.getrlimit(resource.RLIMIT_NOFILE)[0]]:
            os.closerange(low, keep)
            low = keep + 1
        return socket.socket(fileno=ours)

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
            return start_process(launch, program, subprocess.DEVNULL, *streams, placement=placement)
        except BaseException as exc:
            return exc
        finally:
            for fd in fds:
                os.close(fd)
