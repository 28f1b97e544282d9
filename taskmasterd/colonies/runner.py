"""The `run` function: the job's command, once, as a Colonies process.

The command is spawned like an instance of the job (its argv plus the process's args and kwargs,
its env with the process's env over it, its workingdir, user and umask, its own process group),
but its output goes through pipes: all of it to the Colonies logs while it runs, and the last
64 KiB of stdout into `out`, the last stderr lines into `errors`. When the server takes the logs
slower than the program writes, the pipes stop being read and the program waits on its writes:
nothing is dropped.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..processes.table import Child
from ..processes.spawner import Account, child_environment, launch_for, spawn_error_text
from ..lifecycle.states import describe_exit, exit_is_expected
from .arguments import BadArguments, command_words
from .assignment import ADRIFT, Adrift, Assignment, Lost
from .client import ColoniesError, ColoniesOutcomeUnknown
from .output import LogBatch, Tail
from .retry import Backoff, Timing

if TYPE_CHECKING:
    from ..lifecycle.job import Job
    from ..jobfiles.jobfile import JobSpec

log = logging.getLogger("taskmasterd.colonies")
OUT_LIMIT = 64 * 1024  # the last 64 KiB of stdout are kept for `out`; all of it is in the logs
STDERR_TAIL = 8 * 1024
STDERR_LINES = 20
LOG_BATCH = 64 * 1024
LOG_HIGH_WATER = 1024 * 1024  # output waiting for the server past which the pipes are not read
PIPE_GRACE = 2.0  # after the exit, how long pipes may stay open and silent (held by an escapee)
DRAIN_LIMIT = 30.0  # after the exit, the longest the rest of the output may take to reach the logs


class _Command:
    """The one place where a run touches its process: spawned by the daemon's process table
    (journaled, stopped at shutdown, its escapes included), stopped like an instance, and
    released (what it left in its group killed)."""

    def __init__(self, child: Child) -> None:
        self._child = child
        self.pid = child.pid
        self.exited = child.exited

    @classmethod
    def start(cls, job: Job, spec: JobSpec, env: dict[str, str], account: Account | None, words: tuple[str, ...],
              stdout: int, stderr: int) -> _Command:
        launch = launch_for(spec, env, account, words, unit=f"{spec.name}.colonies")
        return cls(job.services.processes.spawn(launch, stdout, stderr))

    async def stop(self, spec: JobSpec) -> int:
        return await self._child.stop(spec.stopsignal, spec.stoptime)

    def release(self) -> None:
        self._child.kill_leftovers()  # like an instance: nothing of the group outlives the command


class _Pipe(asyncio.Protocol):
    """The read end of a child's stdout or stderr, handing every chunk to its sink."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self._sink = sink
        self.transport: asyncio.ReadTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._sink(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass(frozen=True)
class _End:
    kind: str  # "exit", "timeout", "stopped" (by the executor) or "lost"
    returncode: int
    why: str = ""


class CommandRun:
    def __init__(self, task: Assignment, job: Job, stop: asyncio.Future[str], timing: Timing) -> None:
        self.task = task
        self.job = job
        self._stop = stop  # resolved with a reason when the executor goes away
        self._timing = timing
        self._stdout = Tail(OUT_LIMIT)
        self._stderr = Tail(STDERR_TAIL)
        self._logs = LogBatch(LOG_BATCH, LOG_HIGH_WATER)
        self._pipes: list[_Pipe] = []
        self._paused = False  # the pipes wait for the logs to be sent
        self._read = 0  # bytes read from the pipes: the drain's sign of progress
        self._output = asyncio.Event()  # output waits to be sent
        self._backlog = asyncio.Event()  # ... and so much that the pipes are paused: send now
        self._flushing = asyncio.Lock()
        self._sending: asyncio.Task[bool] | None = None  # the ship task's send, which its stop does not cut
        self._unsent: bytes | None = None  # a message that failed: sent again exactly as it was
        self._in_doubt = False  # ... and its reply was lost: the server may have it already
        self._unlogged = 0  # bytes not logged while adrift with the logs backlogged

    async def run(self) -> None:
        spec = self.job.spec  # a reload during the run applies to the next one
        try:
            words = command_words(self.task.spec.get("args"), self.task.spec.get("kwargs"))
            extra = {str(k): str(v) for k, v in (self.task.spec.get("env") or {}).items()}
            account = self.job.account()  # of the spec this run took
            env = child_environment(spec, self.job.services.base_environment, account,
                                    {**extra, "TASKMASTER_JOB": spec.name, "COLONIES_PROCESS_ID": self.task.id})
        except (BadArguments, ValueError, KeyError, AttributeError) as exc:
            await self.task.close(False, [f"cannot run {spec.name}: {exc}"])
            return
        command = await self._start(spec, words, env, account)
        if command is None:
            return
        ship = asyncio.create_task(self._ship_logs())
        try:
            end = await self._supervise(command, spec, ship)
        finally:
            command.release()
            await self._drain(ship)
            ship.cancel()
            await asyncio.wait([ship])
            if self._sending is not None:
                await asyncio.wait([self._sending])
                if not self._sending.cancelled():
                    self._sending.exception()  # read: a send that failed is the final flush's to redo
            for pipe in self._pipes:
                if pipe.transport is not None:
                    pipe.transport.close()
        await self._finish(spec, end)

    async def _start(self, spec: JobSpec, words: tuple[str, ...], env: dict[str, str],
                     account: Account | None) -> _Command | None:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            command = _Command.start(self.job, spec, env, account, words, out_w, err_w)
        except Exception as exc:  # whatever stops a spawn fails this process, never the executor
            os.close(out_r)
            os.close(err_r)
            await self.task.close(False, [spawn_error_text(exc)])
            return None
        finally:
            os.close(out_w)
            os.close(err_w)
        loop = asyncio.get_running_loop()
        for fd, tail in ((out_r, self._stdout), (err_r, self._stderr)):
            _, pipe = await loop.connect_read_pipe(lambda t=tail: _Pipe(self._sink(t)), os.fdopen(fd, "rb", 0))
            self._pipes.append(pipe)
        self._set_reading(not self._paused)  # output may have come before the second pipe connected
        self.task.started = True
        log.info("%s: process %s runs as pid %d", spec.name, self.task.id, command.pid)
        return command

    def _sink(self, tail: Tail) -> Callable[[bytes], None]:
        def take(data: bytes) -> None:
            tail.feed(data)
            self._read += len(data)
            if self.task.adrift and self._logs.backlogged:
                self._unlogged += len(data)  # the program must not wait for a server that refuses its logs
                return
            if self._unlogged:
                self._logs.feed(_unlogged_note(self._unlogged))
                self._unlogged = 0
            self._logs.feed(data)
            self._output.set()
            if self._logs.backlogged and not self._paused:
                self._paused = True
                self._backlog.set()
                self._set_reading(False)

        return take

    def _resume_if_drained(self) -> None:
        if self._paused and self._logs.drained:
            self._paused = False
            self._backlog.clear()
            self._set_reading(True)

    def _set_reading(self, on: bool) -> None:
        for pipe in self._pipes:
            if pipe.transport is None:
                continue
            if on:
                pipe.transport.resume_reading()
            else:
                pipe.transport.pause_reading()

    async def _supervise(self, command: _Command, spec: JobSpec, ship: asyncio.Task[None]) -> _End:
        time_left = self.task.exec_time_left()
        watch = asyncio.create_task(self._watch())
        try:
            done, _ = await asyncio.wait({command.exited, self._stop, watch, ship}, timeout=time_left,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            await asyncio.wait([watch])
        if command.exited in done:
            return _End("exit", command.exited.result())
        if self._stop in done:
            kind, why = "stopped", self._stop.result()
        elif watch in done:
            kind, why = "lost", watch.result()
        elif ship in done:
            kind, why = "lost", str(ship.exception())  # it only ever ends by Lost
        else:
            kind, why = "timeout", f"maximum execution time of {self.task.spec.get('maxexectime')} s exceeded"
        log.info("%s: process %s: %s; stopping pid %d", spec.name, self.task.id, why, command.pid)
        return _End(kind, await command.stop(spec), why)

    async def _watch(self) -> str:
        """Cancellation is silent on the server: ask at a modest pace whether the process is still
        ours. Adrift (queued again under this run), the run goes on; lost, it stops."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timing.check_interval):  # not wait_for: see client.rpc
                    await self.task.superseded.wait()
            was_adrift = self.task.adrift
            standing = await self.task.standing()
            if standing.lost:
                return standing.why
            if standing is ADRIFT and not was_adrift:
                log.warning("%s: process %s was queued again by the server (it had lost sight of this executor); "
                            "the run goes on and answers it when it comes back", self.job.name, self.task.id)
                if self._paused:  # its logs wait for it: the program must not wait for them
                    self._paused = False
                    self._backlog.clear()
                    self._set_reading(True)
            elif was_adrift and not self.task.adrift:
                log.info("%s: process %s is assigned to this executor again", self.job.name, self.task.id)

    async def _ship_logs(self) -> None:
        """Send output as it comes: at most one message per log_interval, at once when the pipes wait."""
        while True:
            await self._output.wait()
            if not self._backlog.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._timing.log_interval):  # not wait_for: see client.rpc
                        await self._backlog.wait()
            await self.task.ours.wait()  # adrift: the server takes no log before it is ours again
            self._output.clear()
            # Its own task, which stopping this one does not cancel (a send cut mid-way would make
            # the final flush send it again); the run waits for it at its end.
            self._sending = asyncio.get_running_loop().create_task(self._flush(final=False))
            await asyncio.wait([self._sending])
            if not self._sending.result():
                self._output.set()  # the server is away: the output waits for the next try
                await asyncio.sleep(self._timing.log_interval)

    async def _flush(self, final: bool) -> bool:
        """Send the output that is ready; raises Lost; False while the server is away."""
        async with self._flushing:
            while chunk := self._unsent or self._logs.peek(final):
                self._unsent = chunk
                try:
                    await self.task.add_log(chunk.decode("utf-8", "replace"), self._in_doubt)
                except Lost:
                    raise
                except Adrift:
                    return False
                except ColoniesOutcomeUnknown:
                    self._in_doubt = True
                    return False
                except ColoniesError:
                    return False
                self._unsent, self._in_doubt = None, False
                self._logs.consume(len(chunk))
                self._resume_if_drained()
            return True

    async def _drain(self, ship: asyncio.Task[None]) -> None:
        """After the exit, read the pipes to their end while the logs make room. Pipes held open by
        something that escaped the group get PIPE_GRACE of silence; the whole drain DRAIN_LIMIT."""
        loop = asyncio.get_running_loop()
        open_pipes = {pipe.closed for pipe in self._pipes if not pipe.closed.done()}
        deadline = loop.time() + DRAIN_LIMIT
        while open_pipes and not ship.done() and loop.time() < deadline:
            read = self._read
            done, _ = await asyncio.wait({*open_pipes, ship}, timeout=min(PIPE_GRACE, deadline - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
            open_pipes -= done
            if not done and self._read == read and not self._paused:
                break

    async def _finish(self, spec: JobSpec, end: _End) -> None:
        if end.kind == "lost":
            log.info("%s: process %s %s: run stopped", spec.name, self.task.id, end.why)
            return
        patience = self._timing.close_patience if end.kind == "stopped" else None
        try:
            await self._send_the_rest(patience)
        except Lost as lost:
            log.info("%s: process %s lost (%s)", spec.name, self.task.id, lost)
            return
        if end.kind == "exit" and exit_is_expected(end.returncode, spec.exitcodes):
            successful, values = True, [self._stdout.text()]
        else:
            status = describe_exit(end.returncode)
            first = status if end.kind == "exit" else f"{end.why}; the command was stopped ({status})"
            successful, values = False, [first, *self._stderr.last_lines(STDERR_LINES)]
        if self.task.adrift:  # kept, with the rest of its output, for when the server gives it back
            self.task.keep(successful, values, self._rest_of_output(), self._in_doubt)
            return
        await self.task.close(successful, values, patience)

    def _rest_of_output(self) -> bytes:
        rest = self._logs.take_all()  # a failed message (_unsent) is still at its head
        return rest + _unlogged_note(self._unlogged) if self._unlogged else rest

    async def _send_the_rest(self, patience: float | None) -> None:
        """The last of the output, retried while the server is away (within `patience`, if any);
        left waiting while the process is adrift."""
        loop = asyncio.get_running_loop()
        deadline = None if patience is None else loop.time() + patience
        backoff = Backoff(self._timing)
        if self.task.adrift:
            await self.task.standing()  # it may be back: then the rest goes now
        while not self.task.adrift and not await self._flush(final=True):
            delay = backoff.next_delay()
            if deadline is not None and loop.time() + delay > deadline:
                log.warning("process %s: the last output could not be logged before giving up", self.task.id)
                return
            await asyncio.sleep(delay)


def _unlogged_note(count: int) -> bytes:
    return f"\n[taskmasterd: {count} bytes of output were not logged while the server had queued this process again]\n".encode()
