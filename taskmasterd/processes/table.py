"""The one owner of every process the daemon starts: job instances, Colonies runs, health checks.

`ProcessTable.spawn` is the only way a process is started. Each becomes a `Child` that the table
holds until the spawn is entirely gone. With cgroups (containment.py) the spawn is born in a cell
of its own, which is its record for crash recovery and holds whatever it forks. Without, it is
journaled before anything else can happen to it: when it lands on the loop (an inline spawn: at
the end of the slice it was made in), before any verb can name it or any reap take it. Until it
is reaped its pid cannot be reused, so its identity read then is its own; read once the exec has
settled it costs a third less, and the slice's lines go in one write. Every stop goes through
`Child.terminate` (stop signal to the cell or group through pidfds, SIGKILL — `cgroup.kill` —
after the grace), and `drain()` stops whatever is still alive, so nothing the daemon started
outlives its shutdown. Spawns are queued and made a few milliseconds' worth per loop iteration.
Where execs are quick the loop waits for each (inline, or through the spawn thread:
`_thread_for`); once they are slow (a loaded machine, SLOW_EXEC), spawns that go through the
spawn thread (spawnthread.py) are made there, IN_FLIGHT at a time, while the loop runs on
(`spawn_soon`; `spawn` always waits, for the few callers that need the process at once). While a
spawn is in flight, a zombie the table does not know may be that spawn's: it is left alone (no
further spawn is handed over meanwhile) until every spawn in flight has landed.

Every spawn has an id of its own (`Child.spawn_id`, unique in the daemon run), set with the run's
id in its environment after everything else (SPAWN_VARIABLE, RUN_VARIABLE), so a job's `env`
cannot forge either. With `adopt_orphans` (the daemon, not in-process tests) the process is a child
subreaper: a grandchild that double-forks or calls setsid is reparented to it and reaped when it
exits; without cgroups it is stopped with the spawn it came from — recognised by those two
variables, which it inherited. The clean-up of a spawn that ended therefore never reaches the
next spawn of the same instance (with cgroups, the next spawn has another cell).
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import dataclasses
import logging
import os
import resource
import secrets
import shutil
import signal
import subprocess
import time
from collections import deque
from typing import Callable, ContextManager, Iterable, Mapping

from ..foreground import Foreground
from ..jobfiles.resources import RLIMITS, Resources, memory_text
from ..kernel import pidfd
from ..kernel.cgroup import Layout
from .containment import Cell, Containment, ContainmentError
from .orphans import ESCAPE_STOPTIME, ChildJournal, environment_of, identity, wait_gone
from .start import Started, start_process
from .launch import RUN_VARIABLE, SPAWN_VARIABLE, Launch
from .spawnthread import SpawnThread, Spawning

log = logging.getLogger("taskmasterd.processes")

SPAWN_SLICE = 0.002  # seconds of spawning per loop iteration (a request waits for the slice under way)
# When escapes of a spawn that ended are looked for: not at once, which would delay its restart
# by a sweep of every child of the daemon, and a second time once a killed group has had time to
# die (an escape is reparented only when its parent is gone).
ESCAPE_LOOKS = (0.05, 0.5)
SWEEP_INTERVAL = 0.5  # seconds between two sweeps for escapes, at the most
CELL_REMOVAL_DELAY = 0.1  # seconds an emptied cell waits for its rmdir, with the others ended meanwhile
CELLS_REMOVED_PER_WAKE = 64  # rmdirs per loop iteration (~0.1 ms each)
PR_SET_CHILD_SUBREAPER = 36
THREAD_SPAWN_DESCRIPTORS = 1000  # from this many descriptors on, spawns go through the spawn thread
# Spawns handed to the spawn thread at once: one in the making and the next ready behind it. A
# spawn that waits for its process (`spawn`) waits behind these, so there are few.
IN_FLIGHT = 2
# Seconds a spawn waits for its exec, on average (EXEC_WAIT_WEIGHT: the weight of the latest),
# past which the loop no longer waits: 0.2-0.4 ms on the idle 2-core VM, 2-8 ms while a hundred
# jobs start. Below it, waiting costs less than the hand-off to the thread and back (~0.3 ms of
# the loop's CPU and latency on the VM), so a restart is quickest inline.
SLOW_EXEC = 0.001
EXEC_WAIT_WEIGHT = 0.3


class SpawnRefused(Exception):
    """The table is closed: the daemon is shutting down."""


class Child:
    """A spawn: its leader (`pid`) and, with cgroups, its cell. `exited` resolves with
    subprocess's returncode (negative: killed by that signal) once the spawn is entirely gone: the
    leader reaped and whatever it left SIGKILLed — with cgroups, once its cell is empty. No
    descriptor is held per child while it runs: each one would be copied into every later fork,
    making a spawn cost grow with the number of children (10 000 pidfds make it four times
    slower); a signal opens the leader's pidfd for the moment it takes."""

    def __init__(self, table: ProcessTable, started: Started, launch: Launch, spawn_id: int,
                 loop: asyncio.AbstractEventLoop, cell: Cell | None = None) -> None:
        self.pid = started.pid
        self.launch = launch
        self.spawn_id = spawn_id
        self.cell = cell if cell is not None and cell.path is not None else None  # containing cell
        self.limits_cell = cell  # v1 limits without containment, in process-group mode
        self.exit_reason: str | None = None  # set when the kernel's OOM killer ended it
        self._table = table
        self._process = started
        self._loop = loop
        self._kill_timer: asyncio.TimerHandle | None = None
        self._returncode: int | None = None
        self.started_at = time.monotonic()
        self.exited: asyncio.Future[int] = loop.create_future()

    def _reap(self) -> None:
        """Called once the leader is a zombie (seen with WNOWAIT): its pid cannot be reused yet, so
        what it leaves is SIGKILLed first — its cell, or its group, which then cannot be a recycled
        one."""
        if self._returncode is not None:
            return
        if self.cell is not None:
            self.cell.kill()
        elif not self._table.draining_orphans:  # else drain() stops what is left, all at once
            self.signal_group(signal.SIGKILL)
        returncode = self._process.poll()  # reaps it (a Popen then never waits on it again)
        if returncode is None:
            return
        self._returncode = returncode
        self._table._leader_reaped(self)
        if self.cell is not None:
            self.cell.when_empty(self._finish)
        else:
            self._finish()

    def _finish(self) -> None:
        if self.exited.done():
            return
        self._cancel_kill_timer()
        oom_cell = self.cell or self.limits_cell
        if oom_cell is not None and oom_cell.resources.memory_max is not None and oom_cell.oom_kills():
            self.exit_reason = (f"out of memory: killed by the kernel, memory_max "
                                f"{memory_text(oom_cell.resources.memory_max)}")
        if oom_cell is not None:
            self._table.remove_later(oom_cell)  # rmdir costs ~0.1 ms: not on the way to a restart
        self._table._ended(self)
        assert self._returncode is not None
        self.exited.set_result(self._returncode)

    @property
    def holder(self) -> str:
        """What a stop signals, for people: "its cgroup" or "the process group"."""
        return "its cgroup" if self.cell is not None else "the process group"

    def signal_group(self, sig: int) -> bool:
        """Signal the whole spawn (its cell, else its process group) through pidfds; False when
        nothing of it is left."""
        if self.cell is not None:
            return self.cell.signal(sig)
        if self._returncode is not None:  # reaped: the number may be another process's now
            return False
        try:
            return pidfd.signal_child(self.pid, sig, group=True)
        except PermissionError:  # a group member changed user; still try the leader
            return pidfd.signal_child(self.pid, sig)

    def terminate(self, sig: int | None = None, grace: float | None = None) -> asyncio.Future[int]:
        """The one stop path: `sig` (default: the launch's stop signal) to the spawn (its cell,
        or its group and its escapes), SIGKILL after `grace` (default: its stoptime). Returns
        `exited`."""
        if self.exited.done():
            return self.exited
        sig = self.launch.stopsignal if sig is None else sig
        grace = self.launch.stoptime if grace is None else grace
        self.signal_group(sig)
        if self.cell is None:
            self._table._signal_escapes(self, sig)
        if self._kill_timer is None:
            self._kill_timer = self._loop.call_later(grace, self.kill)
        return self.exited

    def kill(self) -> asyncio.Future[int]:
        """SIGKILL to the whole spawn now: `cgroup.kill`, or its group and its escapes."""
        self._cancel_kill_timer()
        if not self.exited.done():
            if self.cell is not None:
                self.cell.kill()
            else:
                self.signal_group(signal.SIGKILL)
                self._table._signal_escapes(self, signal.SIGKILL)
        return self.exited

    async def stop(self, sig: int, grace: float) -> int:
        return await self.terminate(sig, grace)

    def kill_leftovers(self) -> None:
        """SIGKILL what is left of the spawn (the leader's exit already did it; harmless again)."""
        if self.cell is not None:
            self.cell.kill()
        else:
            self.signal_group(signal.SIGKILL)

    def apply_limits(self, resources: Resources) -> bool:
        """A reload's new cgroup limits, live; False when they need a restart (a controller the
        spawn's cell was made without)."""
        cell = self.cell or self.limits_cell
        if cell is None:
            return not resources.controllers()
        try:
            return cell.apply(resources)
        except OSError as exc:
            log.warning("cannot change the limits of pid %d live: %s", self.pid, exc.strerror)
            return False

    def _cancel_kill_timer(self) -> None:
        if self._kill_timer is not None:
            self._kill_timer.cancel()
            self._kill_timer = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Prepared:
    launch: Launch  # with the run's and the spawn's marks
    program: str | None
    spawn_id: int
    cell: Cell | None

    @property
    def placement(self) -> Callable[[], ContextManager[None]] | None:
        return self.cell.placed if self.cell is not None else None


class SpawnTicket:
    """A queued spawn; `cancel()` before it runs and it never does."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


_children_nofile: tuple[int, int] | None = None  # the limit the daemon had before raising its own


def raise_fd_limit() -> None:
    """Take what the hard limit allows (1000 captured instances hold ~3000 descriptors). Children
    are still given the limit the daemon was started with (ProcessTable.spawn)."""
    global _children_nofile
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _children_nofile is None:
        _children_nofile = (soft, hard)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


class ProcessTable:
    def __init__(self, journal: ChildJournal | None = None, adopt_orphans: bool = False,
                 run_id: str | None = None, containment: Containment | None = None,
                 foreground: Foreground | None = None) -> None:
        self.foreground = foreground or Foreground()  # control requests, whose steps go before the spawns
        self.containment = containment or Containment(Layout(None), "", "an in-process process table")
        self.journal = journal
        self.adopt_orphans = adopt_orphans
        self.run_id = run_id or secrets.token_hex(8)
        self._last_spawn_id = 0
        self.children: dict[int, Child] = {}
        self._emptying: set[Child] = set()  # leader reaped, its cell not yet empty
        self._cells_to_remove: list[Cell] = []  # emptied, their rmdir not yet made (remove_later)
        self._cell_removal: asyncio.Handle | None = None
        self.closing = False
        self._abandoned: dict[int, Started] = {}  # failed after the fork: killed, to reap
        self._queue: deque[SpawnTicket] = deque()
        self._queue_scheduled = False  # a slice of the queue is due
        self._in_flight = 0  # spawns handed to the spawn thread, not yet back on the loop
        self._in_flight_done = asyncio.Event()  # set whenever none is
        self._in_flight_done.set()
        self._reap_deferred = False  # an unknown zombie waits until no spawn is in flight
        self._queue_empty: asyncio.Event | None = None
        self._unjournaled: dict[int, Child] | None = None  # spawned in this slice, journaled at its end
        self._escape_signals: dict[frozenset[tuple[str, str]], int] = {}  # origin -> signal to send
        self._escape_sweep: asyncio.TimerHandle | None = None
        self._last_sweep = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._programs: dict[tuple[str, str | None], str | None] = {}  # (name, PATH) -> its file
        self.nofile_limit = _children_nofile or resource.getrlimit(resource.RLIMIT_NOFILE)  # what children get
        self._nofile_raised = self.nofile_limit != resource.getrlimit(resource.RLIMIT_NOFILE)
        self._spawn_thread: SpawnThread | None = None
        self._table_size = 0  # about how many descriptors the daemon holds
        self._no_spawn_thread = False  # unshare refused
        self._exec_wait = 0.0  # seconds a spawn waited for its exec, on average (SLOW_EXEC)

    @property
    def draining_orphans(self) -> bool:
        """Shutting down as a subreaper: what a leader leaves in its group is reparented to us and
        stopped by drain() with every other orphan, so no per-child SIGKILL is needed on the way
        (10 000 of them cost the shutdown a third of a second)."""
        return self.closing and self.adopt_orphans

    # --- life -----------------------------------------------------------------------------------

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reaping from SIGCHLD (done by the first spawn otherwise); as a subreaper when
        adopting orphans."""
        if self._loop is loop:
            return
        self._loop = loop
        if self.adopt_orphans:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                log.warning("cannot become a child subreaper (%s): escaped grandchildren are not stopped",
                            os.strerror(ctypes.get_errno()))
        _sigchld.watch(self, loop)
        if self._spawn_thread is not None:  # opened again on another loop, with another wake-up fd
            self._spawn_thread.close()
            self._spawn_thread = None

    async def drain(self) -> None:
        """Refuse new spawns, stop every live child with its own signal and stoptime, then every
        orphan that is still around; return once all are reaped."""
        self.closing = True
        for ticket in self._queue:
            ticket.cancel()
        await self._in_flight_done.wait()  # what the thread makes meanwhile lands abandoned
        if self._abandoned:
            await wait_gone(list(self._abandoned), ESCAPE_STOPTIME)
        exits = [child.terminate() for child in [*self.children.values(), *self._emptying]]
        if exits:
            await asyncio.wait(exits)
        if self.adopt_orphans:
            await self._stop_every_orphan()

    def close(self) -> None:
        _sigchld.unwatch(self)
        if self._escape_sweep is not None:
            self._escape_sweep.cancel()
        self._remove_cells(everything=True)
        if self.journal is not None:
            self.journal.close()
        if self._spawn_thread is not None:
            self._spawn_thread.close()
            self._spawn_thread = None
        if self.closing:
            self.containment.close()

    # --- spawning -------------------------------------------------------------------------------

    def queue(self, callback: Callable[[], None]) -> SpawnTicket:
        """Run `callback` (which spawns, with `spawn_soon`) soon, a time slice of them per loop
        iteration, each slice after the control requests under way (foreground.py), and no more
        than IN_FLIGHT spawns handed to the spawn thread at once."""
        ticket = SpawnTicket(callback)
        self._queue.append(ticket)
        self._schedule_queue()
        return ticket

    def _schedule_queue(self) -> None:
        if (self._queue and not self._queue_scheduled and self._in_flight < IN_FLIGHT
                and not self._reap_deferred):
            self._queue_scheduled = True
            self.foreground.after(self._run_queue)

    def _run_queue(self) -> None:
        self._queue_scheduled = False
        deadline = time.monotonic() + SPAWN_SLICE
        self._unjournaled = {}
        made = False
        try:
            while self._queue and self._in_flight < IN_FLIGHT and not self._reap_deferred:
                # Room for the next spawn's expected wait, past the first: a request that comes
                # meanwhile waits for the slice, which must not run over by a whole exec.
                waited = self._exec_wait if self._exec_wait < SLOW_EXEC else 0.0
                if made and time.monotonic() + waited >= deadline:
                    break
                ticket = self._queue.popleft()
                if not ticket.cancelled:
                    ticket.callback()
                    made = True
        finally:
            self._journal_spawned()
        self._schedule_queue()
        self._maybe_flushed()

    def _maybe_flushed(self) -> None:
        if not self._queue and not self._in_flight and self._queue_empty is not None:
            self._queue_empty.set()
            self._queue_empty = None

    async def queue_flushed(self) -> None:
        """Wait until every queued spawn has been made (or failed)."""
        if self._queue or self._in_flight:
            if self._queue_empty is None:
                self._queue_empty = asyncio.Event()
            await self._queue_empty.wait()

    def spawn(self, launch: Launch, stdout: int, stderr: int) -> Child:
        """Start `launch` in a new session (and a cell of its own, with cgroups) and return it:
        the loop waits for the exec (and for the spawns handed to the thread before it, IN_FLIGHT
        at most). `stdout`/`stderr` are fds or subprocess.DEVNULL. Raises SpawnRefused when
        closing, ContainmentError when its limits cannot be had, and what Popen raises when it
        cannot start."""
        prepared = self._prepare(launch)
        return self._take(prepared, self._start_now(prepared, self._thread_for(prepared.launch, stdout, stderr),
                                                    stdout, stderr))

    def _start_now(self, prepared: _Prepared, thread: SpawnThread | None, stdout: int, stderr: int) -> Started:
        """The spawn made while the loop waits: inline, or by the thread."""
        try:
            if thread is not None:
                started = thread.start(prepared.launch, prepared.program, stdout, stderr, prepared.placement)
                self._note_exec_wait(thread.exec_wait)
                return started
            began = time.monotonic()
            started = start_process(prepared.launch, prepared.program, subprocess.DEVNULL, stdout, stderr,
                                    prepared.placement)
            self._note_exec_wait(time.monotonic() - began)
            return started
        except BaseException as exc:
            self._not_started(prepared, exc)
            raise

    def _note_exec_wait(self, seconds: float) -> None:
        self._exec_wait += EXEC_WAIT_WEIGHT * (seconds - self._exec_wait)

    def spawn_soon(self, launch: Launch, stdout: int, stderr: int, ticket: SpawnTicket,
                   done: Callable[[Child | BaseException], None]) -> None:
        """As `spawn`, but when execs are slow (a loaded machine: SLOW_EXEC) made by the spawn
        thread while the loop runs on. `done` is called with the Child or the exception — at once
        when the loop waited, else on a later iteration (SpawnRefused when the daemon began
        shutting down meanwhile), and never when `ticket` was cancelled meanwhile: that process is
        SIGKILLed, whole, and reaped, for nobody wants it any more. `stdout` and `stderr` may be
        closed once this returns. Raises what `spawn` raises before the fork."""
        prepared = self._prepare(launch)
        thread = self._thread_for(prepared.launch, stdout, stderr)
        if thread is None or (self._exec_wait < SLOW_EXEC and not self._in_flight):
            try:
                child = self._take(prepared, self._start_now(prepared, thread, stdout, stderr))
            except BaseException as exc:
                done(exc)
                return
            done(child)
            return
        spawning = thread.submit(prepared.launch, prepared.program, stdout, stderr, prepared.placement)
        self._in_flight += 1
        self._in_flight_done.clear()
        loop = self._loop
        assert loop is not None
        spawning.add_done_callback(lambda _: loop.call_soon_threadsafe(self._landed, spawning, prepared, ticket, done))

    def _landed(self, spawning: Spawning, prepared: _Prepared, ticket: SpawnTicket,
                done: Callable[[Child | BaseException], None]) -> None:
        """A spawn the thread made (or failed to make), back on the loop."""
        self._in_flight -= 1
        if self._spawn_thread is not None:
            self._note_exec_wait(self._spawn_thread.exec_wait)
        result: Child | BaseException | None
        failure = spawning.exception()
        if failure is not None:
            self._not_started(prepared, failure)
            result = failure
        elif ticket.cancelled:
            self._abandon(spawning.result(), prepared.cell)
            result = None
        elif self.closing:
            self._abandon(spawning.result(), prepared.cell)
            result = SpawnRefused("taskmasterd is shutting down")
        else:
            started = spawning.result()
            try:
                result = self._take(prepared, started)
            except BaseException as exc:
                result = exc
            else:
                if _exited(started.pid):  # a SIGCHLD came while the loop did not know it
                    self._reap_pid(started.pid)
        if not self._in_flight:
            self._in_flight_done.set()
            if self._reap_deferred:
                self._reap_deferred = False
                self._reap_others()
        self._schedule_queue()
        self._maybe_flushed()
        if result is not None:
            done(result)

    def _prepare(self, launch: Launch) -> _Prepared:
        """What a spawn needs before its fork: its id, its marks, its program, its cell."""
        if self.closing:
            raise SpawnRefused("taskmasterd is shutting down")
        self.open(asyncio.get_running_loop())
        program = self._program(launch)
        self._last_spawn_id += 1
        spawn_id = self._last_spawn_id
        launch = dataclasses.replace(launch, env={**launch.env, RUN_VARIABLE: self.run_id,
                                                  SPAWN_VARIABLE: str(spawn_id)})
        cell = self.containment.cell(launch.unit, self.run_id, spawn_id, launch.resources,
                                     launch.stopsignal, launch.stoptime)
        return _Prepared(launch, program, spawn_id, cell)

    def _not_started(self, prepared: _Prepared, exc: BaseException) -> None:
        if prepared.cell is not None:
            prepared.cell.remove()
        if isinstance(exc, OSError):  # moved or gone: look again
            self._programs.pop((prepared.launch.argv[0], prepared.launch.env.get("PATH")), None)

    def _take(self, prepared: _Prepared, started: Started) -> Child:
        """The spawn made: its settings and limits, then the Child (else it is abandoned)."""
        launch, cell = prepared.launch, prepared.cell
        try:
            self._give_start_settings(started.pid, launch)  # first: the program runs already
            if cell is not None and launch.resources.controllers():
                self._give_limits(cell, launch.resources)  # now that the daemon is out of the cell
            return self._register(started, launch, prepared.spawn_id, cell)
        except BaseException:
            self._abandon(started, cell)
            raise

    @staticmethod
    def _give_limits(cell: Cell, resources: Resources) -> None:
        try:
            cell.apply(resources)
        except OSError as exc:  # v1 refuses a memory limit below what it already uses
            raise ContainmentError(f"cannot set its limits: {exc.strerror or exc}") from None

    def _thread_for(self, launch: Launch, *streams: int) -> SpawnThread | None:
        """The spawn thread when this spawn should go through it, None for inline: when the
        daemon holds enough descriptors that copying its table at the fork costs more than the
        hand-off (about 0.3 µs a descriptor against 0.2-0.4 ms for the hand-off, on a busy 2-core
        VM; descriptors are allocated lowest first, so a new pipe end's number is a fair measure
        of the table), when the launch has a directory, umask or user (the thread takes them for
        itself; inline, Popen would fork the daemon), and while spawns are in flight (one spawner
        at a time: each moves into its cell). A plain spawn of a small daemon stays inline even
        when execs are slow: in a burst of thousands the hand-offs would cost the loop more than
        the waits (10 000 spawns: 0.6-0.95 against 0.46-0.58 ms of CPU each), and the spawn
        slice bounds the wait to one exec."""
        real = [fd for fd in streams if fd >= 0]
        if real:
            self._table_size = max(real)
        plain = launch.cwd is None and launch.umask is None and launch.account is None
        if self._table_size < THREAD_SPAWN_DESCRIPTORS and plain and not self._in_flight:
            return None
        return self._spawn_thread_now()

    def _spawn_thread_now(self) -> SpawnThread | None:
        """The spawn thread (started when first needed), or None where it cannot be had."""
        if self._spawn_thread is None and not self._no_spawn_thread:
            try:
                self._spawn_thread = SpawnThread(_sigchld.wakeup_fd)
            except OSError as exc:
                self._no_spawn_thread = True
                log.info("spawning from the loop thread (no descriptor table of its own for spawns: %s)",
                         exc.strerror)
        return self._spawn_thread

    def _register(self, started: Started, launch: Launch, spawn_id: int, cell: Cell | None) -> Child:
        child = self.children[started.pid] = Child(self, started, launch, spawn_id, asyncio.get_running_loop(), cell)
        if child.cell is not None:
            return child  # the cell is its record: nothing to journal
        if self._unjournaled is not None:
            self._unjournaled[child.pid] = child
        else:
            self._journal([child])
        return child

    def _journal_spawned(self) -> None:
        spawned, self._unjournaled = self._unjournaled, None
        if spawned:
            self._journal(spawned.values())

    def _journal(self, children: Iterable[Child]) -> None:
        if self.journal is not None:
            self.journal.started([(child.pid, identity(child.pid), child.launch.stopsignal, child.launch.stoptime)
                                  for child in children])

    def _program(self, launch: Launch) -> str | None:
        """The file a bare command name runs, found once per name and PATH: Popen would search
        PATH again at every spawn, with a failed exec in the child for each directory before it."""
        name = launch.argv[0]
        if "/" in name:
            return None
        key = (name, launch.env.get("PATH"))
        if key not in self._programs:
            if len(self._programs) >= 1024:
                self._programs.clear()
            self._programs[key] = shutil.which(name, path=key[1] if key[1] is not None else os.defpath)
        return self._programs[key]

    def _give_start_settings(self, pid: int, launch: Launch) -> None:
        """The job's rlimits, nice and oom_score_adjust, and otherwise the descriptor limit the
        daemon was started with, not the one it raised for itself (select()-based programs and
        fd-closing loops need it). Set from outside right after the exec (neither posix_spawn nor
        Popen has such settings, and a preexec_fn would cost vfork): a program that looks at them
        in its first instants may see the daemon's. One the kernel refuses fails the start."""
        resources = launch.resources
        limits = {RLIMITS[name]: (soft, hard) for name, soft, hard in resources.rlimits}
        if self._nofile_raised:
            limits.setdefault(resource.RLIMIT_NOFILE, self.nofile_limit)
        try:
            for which, value in limits.items():
                resource.prlimit(pid, which, value)
            if resources.nice is not None:
                os.setpriority(os.PRIO_PROCESS, pid, resources.nice)
            if resources.oom_score_adjust is not None:
                with open(f"/proc/{pid}/oom_score_adj", "w") as adj:
                    adj.write(str(resources.oom_score_adjust))
        except (OSError, ValueError) as exc:
            if not resources.any() and not isinstance(exc, ValueError):
                return  # already gone, or a setuid program we may not touch: only nofile was asked
            raise ContainmentError(f"cannot give it its rlimits, nice or oom_score_adjust: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None

    def _abandon(self, started: Started, cell: Cell | None = None) -> None:
        """A process we could not take in (a failure after the fork): SIGKILL its cell or group
        and reap it from SIGCHLD, so it is neither left running nor left a zombie. An abandoned
        cell is removed with the subtree (shutdown, or the next daemon)."""
        self.children.pop(started.pid, None)
        if cell is not None and cell.path is not None:
            cell.kill()
        else:
            with _suppress_gone():
                pidfd.signal_child(started.pid, signal.SIGKILL, group=True)
        self._abandoned[started.pid] = started
        self._reap_others()

    def remove_later(self, cell: Cell) -> None:
        """Remove an emptied cell soon, with others, a bounded number per wake-up: its rmdir is
        not in the way of the restart its end may cause. What is left at exit goes with the
        subtree (Containment.close), or to the next daemon's recovery."""
        self._cells_to_remove.append(cell)
        if self._cell_removal is None and self._loop is not None:
            self._cell_removal = self._loop.call_later(CELL_REMOVAL_DELAY, self._remove_cells)

    def _remove_cells(self, everything: bool = False) -> None:
        self._cell_removal = None
        batch = self._cells_to_remove if everything else self._cells_to_remove[:CELLS_REMOVED_PER_WAKE]
        del self._cells_to_remove[:len(batch)]
        for cell in batch:
            cell.remove()
        if self._cells_to_remove and self._loop is not None:
            self._cell_removal = self._loop.call_soon(self._remove_cells)

    def _leader_reaped(self, child: Child) -> None:
        """Its pid is free again: the table no longer knows the spawn by it."""
        if self.children.get(child.pid) is child:
            del self.children[child.pid]
        self._emptying.add(child)

    def _ended(self, child: Child) -> None:
        self._emptying.discard(child)
        if self.children.get(child.pid) is child:
            del self.children[child.pid]
        if child.cell is not None:
            return  # nothing journaled, and no escape outside the cell
        if self._unjournaled is not None:  # reaped in its own slice (an abandoned spawn's reap)
            self._unjournaled.pop(child.pid, None)
        if self.journal is not None:
            self.journal.ended(child.pid)
        if self.adopt_orphans and not self.closing:
            # Escapes of a spawn that ended go with it, like the rest of its group.
            origin = self._origin(child)
            for delay in ESCAPE_LOOKS:
                asyncio.get_running_loop().call_later(delay, self._mark_escapes, origin, signal.SIGKILL)

    # --- orphans --------------------------------------------------------------------------------

    def _reap_others(self) -> None:
        """SIGCHLD: reap every child that exited — ours through its Child, abandoned spawns, and
        as a subreaper every orphan. Without `adopt_orphans` only our own pids are looked at, so
        an embedding program's other children keep their exit status."""
        if not self.adopt_orphans:
            for pid in [*self.children, *self._abandoned]:
                if _exited(pid):
                    self._reap_pid(pid)
            return
        while True:  # WNOWAIT: see the zombie, leave it for Child._reap (which kills its group first)
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            if not self._reap_pid(info.si_pid):
                return  # not reaped after all: never spin

    def _reap_pid(self, pid: int) -> bool:
        child = self.children.get(pid)
        if child is not None:
            child._reap()
            return pid not in self.children
        started = self._abandoned.pop(pid, None)
        if started is not None:
            started.poll()
            return True
        if self._in_flight:  # perhaps a spawn the thread made that has not landed: reaped once it has
            self._reap_deferred = True
            return False
        with _suppress_gone():  # an escape reparented to us
            os.waitpid(pid, os.WNOHANG)
        return True

    def _origin(self, child: Child) -> frozenset[tuple[str, str]]:
        """What every descendant of that spawn carries in its initial environment."""
        return frozenset({(RUN_VARIABLE, self.run_id), (SPAWN_VARIABLE, str(child.spawn_id))})

    def _signal_escapes(self, child: Child, sig: int) -> None:
        if self.adopt_orphans and not self.closing:  # closing: drain stops all
            self._mark_escapes(self._origin(child), sig)

    def _mark_escapes(self, origin: frozenset[tuple[str, str]], sig: int) -> None:
        """Queue `sig` for the escapes of `origin` (SIGKILL wins over a stop signal). One sweep
        serves every spawn marked meanwhile, at most every SWEEP_INTERVAL: listing the daemon's
        children costs about a millisecond per thousand, and a crash loop must not pay it per exit."""
        if self._escape_signals.get(origin) != signal.SIGKILL:
            self._escape_signals[origin] = sig
        if self._escape_sweep is None and self._loop is not None:
            when = max(self._loop.time(), self._last_sweep + SWEEP_INTERVAL)
            self._escape_sweep = self._loop.call_at(when, self._sweep_escapes)

    def _sweep_escapes(self) -> None:
        self._escape_sweep = None
        self._last_sweep = asyncio.get_running_loop().time()
        signals, self._escape_signals = self._escape_signals, {}
        if not signals:
            return
        for pid in _orphans(self.children, self._abandoned):
            environ = environment_of(pid)
            for origin, sig in signals.items():
                if origin <= environ:
                    _signal_orphan(pid, sig)
                    break

    async def _stop_every_orphan(self, grace: float = ESCAPE_STOPTIME) -> None:
        orphans = list(_orphans(self.children, self._abandoned))
        if not orphans:
            return
        log.info("stopping %d escaped process(es) reparented to the daemon", len(orphans))
        for pid in orphans:
            _signal_orphan(pid, signal.SIGTERM)
        await wait_gone(orphans, grace)
        for pid in orphans:
            _signal_orphan(pid, signal.SIGKILL)
        await wait_gone(orphans, grace)
        self._reap_others()


class _suppress_gone:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> bool:
        return kind is not None and issubclass(kind, (ProcessLookupError, ChildProcessError, PermissionError))


class _SigchldDispatch:
    """One SIGCHLD handler per loop, serving every ProcessTable on it (a second table — an
    embedding program's, a test's — must not take the signal away from the first)."""

    def __init__(self) -> None:
        self._tables: set[ProcessTable] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = False
        self.wakeup_fd = -1  # the loop's, where the C signal handler writes

    def watch(self, table: ProcessTable, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not loop or loop.is_closed():
            self._tables = set()
            self._loop = loop
            self._pending = False
            loop.add_signal_handler(signal.SIGCHLD, self._dispatch)
            # Thousands of children ending together overflow the loop's wake-up pipe; that loses
            # no signal that matters (one wake-up reaps them all), but Python would print a
            # traceback for each, which alone can take the loop minutes. Keep it quiet.
            self.wakeup_fd = signal.set_wakeup_fd(-1)
            signal.set_wakeup_fd(self.wakeup_fd, warn_on_full_buffer=False)
        self._tables.add(table)

    def unwatch(self, table: ProcessTable) -> None:
        self._tables.discard(table)
        if not self._tables and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_signal_handler(signal.SIGCHLD)
            self._loop = None

    def _dispatch(self) -> None:
        # asyncio calls this once per SIGCHLD delivered; one pass after them all reaps every
        # zombie, and each extra pass would walk the whole child list in the kernel for nothing.
        if not self._pending and self._loop is not None:
            self._pending = True
            self._loop.call_soon(self._reap_all)

    def _reap_all(self) -> None:
        self._pending = False
        for table in list(self._tables):
            table._reap_others()


_sigchld = _SigchldDispatch()


def _exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # already reaped elsewhere: its poll() settles it


def _orphans(children: Mapping[int, Child], abandoned: Mapping[int, object]) -> set[int]:
    """Our direct children that we did not spawn: escapes reparented to the subreaper."""
    found: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as src:
                found.update(int(p) for p in src.read().split())
        except OSError:
            continue
    return {pid for pid in found if pid not in children and pid not in abandoned}


def _signal_orphan(pid: int, sig: int) -> None:
    """An escape (our child now, not reaped: its pid is its own) usually leads its own group
    (setsid): signal the group it leads, else the process; through its pidfd."""
    with _suppress_gone():
        pidfd.signal_child(pid, sig, group=os.getpgid(pid) == pid)
