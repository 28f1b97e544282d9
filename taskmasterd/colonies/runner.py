"""The `run` function: the job's command, once, as a Colonies process.

The command is spawned like an instance of the job (its argv plus the process's args, its env with
the process's env over it, its workingdir, user and umask, its own process group), but its output
goes through pipes: to the Colonies logs while it runs, and a bounded tail into `out`/`errors`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..processes import Child
from ..spawner import child_environment, launch_for, spawn_error_text
from ..states import describe_exit, exit_is_expected
from .assignment import Assignment, Lost
from .client import ColoniesError
from .output import LogBatch, Tail
from .retry import Timing

if TYPE_CHECKING:
    from ..job import Job
    from ..jobfile import JobSpec

log = logging.getLogger("taskmasterd.colonies")
OUT_LIMIT = 64 * 1024  # stdout kept for `out`; all of it is in the logs
STDERR_TAIL = 8 * 1024
STDERR_LINES = 20
LOG_BATCH = 64 * 1024
LOG_PENDING = 1024 * 1024
PIPE_GRACE = 2.0
RUN_ORIGIN = ("TASKMASTER_JOB", "COLONIES_PROCESS_ID")  # what marks a run's escaped descendants  # after the exit, how long the pipes may take to hand over the rest


def command_args(args: Any) -> tuple[str, ...]:
    """The spec's args as argv words: strings as they are, numbers as text."""
    if args is None:
        return ()
    if not isinstance(args, list):
        raise ValueError(f"args must be a list, got {json.dumps(args)}")
    words = []
    for arg in args:
        if isinstance(arg, bool) or not isinstance(arg, (str, int, float)):
            raise ValueError(f"argument {json.dumps(arg)} is neither a string nor a number")
        words.append(arg if isinstance(arg, str) else str(arg))
    return tuple(words)


class _Pipe(asyncio.Protocol):
    """The read end of a child's stdout or stderr, handing every chunk to its sinks."""

    def __init__(self, sinks: tuple[Callable[[bytes], None], ...]) -> None:
        self._sinks = sinks
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        for sink in self._sinks:
            sink(data)

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
        self._logs = LogBatch(LOG_BATCH, LOG_PENDING)
        self._pipes: list[tuple[asyncio.BaseTransport, _Pipe]] = []
        self._flushing = asyncio.Lock()

    async def run(self) -> None:
        spec = self.job.spec  # a reload during the run applies to the next one
        try:
            args = command_args(self.task.spec.get("args"))
            extra = {str(k): str(v) for k, v in (self.task.spec.get("env") or {}).items()}
            env = child_environment(spec, self.job.supervisor.base_environment,
                                    {**extra, "TASKMASTER_JOB": spec.name, "COLONIES_PROCESS_ID": self.task.id})
        except (ValueError, KeyError, AttributeError) as exc:
            await self.task.close(False, [f"cannot run {spec.name}: {exc}"])
            return
        child = await self._spawn(spec, args, env)
        if child is None:
            return
        try:
            end = await self._supervise(child, spec)
        finally:
            await self._drain(child)
        await self._finish(spec, end)

    async def _spawn(self, spec: JobSpec, args: tuple[str, ...], env: dict[str, str]) -> Child | None:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            # The daemon's process table owns it (journaled, stopped at shutdown, escapes included).
            launch = launch_for(spec, env, args, origin=RUN_ORIGIN)
            child = self.job.supervisor.processes.spawn(launch, out_w, err_w)
        except Exception as exc:
            os.close(out_r)
            os.close(err_r)
            await self.task.close(False, [spawn_error_text(exc)])
            return None
        finally:
            os.close(out_w)
            os.close(err_w)
        loop = asyncio.get_running_loop()
        for fd, sinks in ((out_r, (self._stdout.feed, self._logs.feed)), (err_r, (self._stderr.feed, self._logs.feed))):
            self._pipes.append(await loop.connect_read_pipe(lambda s=sinks: _Pipe(s), os.fdopen(fd, "rb", 0)))
        log.info("%s: process %s runs as pid %d", spec.name, self.task.id, child.pid)
        return child

    async def _supervise(self, child: Child, spec: JobSpec) -> _End:
        maxexectime = self.task.spec.get("maxexectime") or 0
        watch = asyncio.create_task(self._watch())
        ship = asyncio.create_task(self._ship_logs())
        try:
            done, _ = await asyncio.wait({child.exited, self._stop, watch, ship},
                                         timeout=maxexectime if maxexectime > 0 else None,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watch, ship):
                task.cancel()
            await asyncio.gather(watch, ship, return_exceptions=True)
        if child.exited in done:
            return _End("exit", child.exited.result())
        if self._stop in done:
            kind, why = "stopped", self._stop.result()
        elif watch in done:
            kind, why = "lost", watch.result()
        elif ship in done:
            kind, why = "lost", str(ship.exception())  # it only ever ends by Lost
        else:
            kind, why = "timeout", f"maximum execution time of {maxexectime} s exceeded"
        log.info("%s: process %s: %s; stopping pid %d", spec.name, self.task.id, why, child.pid)
        return _End(kind, await child.stop(spec.stopsignal, spec.stoptime), why)

    async def _watch(self) -> str:
        """Cancellation is silent on the server: ask at a modest pace whether the process is still ours."""
        while True:
            await asyncio.sleep(self._timing.check_interval)
            reason = await self.task.lost_reason()
            if reason:
                return reason

    async def _ship_logs(self) -> None:
        while True:
            await asyncio.sleep(self._timing.log_interval)
            # Shielded: stopping this task mid-send must not make the final flush send it again.
            await asyncio.shield(self._flush(final=False))

    async def _flush(self, final: bool) -> None:
        """Send the output that is ready; raises Lost; a server away keeps it for the next time."""
        async with self._flushing:
            while chunk := self._logs.peek(final):
                try:
                    await self.task.add_log(chunk.decode("utf-8", "replace"))
                except Lost:
                    raise
                except ColoniesError:
                    return
                self._logs.consume(len(chunk))

    async def _drain(self, child: Child) -> None:
        child.kill_leftovers()  # like an instance: nothing of the group outlives the command
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(pipe.closed for _, pipe in self._pipes)), PIPE_GRACE)
        for transport, _ in self._pipes:
            transport.close()

    async def _finish(self, spec: JobSpec, end: _End) -> None:
        if end.kind == "lost":
            log.info("%s: process %s %s: run stopped", spec.name, self.task.id, end.why)
            return
        try:
            await self._flush(final=True)
        except Lost as lost:
            log.info("%s: process %s lost (%s)", spec.name, self.task.id, lost)
            return
        if end.kind == "exit" and exit_is_expected(end.returncode, spec.exitcodes):
            await self.task.close(True, [self._stdout.text()])
            return
        status = describe_exit(end.returncode)
        first = status if end.kind == "exit" else f"{end.why}; the command was stopped ({status})"
        patience = self._timing.close_patience if end.kind == "stopped" else None
        await self.task.close(False, [first, *self._stderr.last_lines(STDERR_LINES)], patience)
