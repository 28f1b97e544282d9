"""One job's ColonyOS executor: its assigns, its runs, and what keeps each process run exactly once.

- One assign long-poll in flight per free slot (`maxconcurrent`), so a burst is taken as fast as
  slots free up; while the server fails, a single probe at a time, with backoff.
- While every slot is busy no assign would go out, yet the server removes executors it has not
  heard from and requeues their processes (which then run again): a keep-alive assign that no
  process can match keeps the executor alive without taking work.
- Reconciliation, on start, after a lost assign reply and when the server answers again: the
  processes the server shows running for this executor that it does not run are closed failed,
  so that their submitters' retry policy decides.
- A process is never started twice here while a copy of it lives (exactly_once.py): assigned
  again while its run goes on (the server had lost sight of this executor and queued it again),
  the running copy answers it; assigned again after its run ended meanwhile, the outcome kept
  answers it; a new attempt (the server retries it) starts once the old copy is gone.
- No new assign while the job cannot do the work (Job.not_serving: no healthy, or RUNNING,
  instance); an assign in flight is left to finish, and the keep-alive goes on meanwhile.

Everything is a task on the daemon's loop and every call is asynchronous, so a slow or absent
server only ever delays this job's Colonies work, never supervision or the control protocol.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Coroutine

from ..jobfiles.jobfile import ColoniesSpec
from .assignment import RUNNING, Assignment
from .client import ColoniesError, ColoniesOutcomeUnknown, transient
from .control import control
from .exactly_once import KeptOutcomes, answer, copy_gone
from .keystore import ExecutorKey
from .registered import RegisteredExecutor
from .registration import executor_identity
from .runner import PIPE_GRACE, CommandRun
from .shared import Shared, cancel_and_wait

if TYPE_CHECKING:
    from ..lifecycle.job import Job

log = logging.getLogger("taskmasterd.colonies")
# An assign no process can match, which still marks the executor alive: the server calls
# MarkAlive before matching (controllers DistributedAssign/Assign), parses "-1m" to -1 and
# "-1Mi" to -1 MiB (parsers.ConvertCPUToInt/ConvertMemoryToBytes), and gives a process only
# when its cpu and memory conditions are at most those (SelectAndAssign); unset ones are 0.
NOTHING_CPU, NOTHING_MEM = "-1m", "-1Mi"
LOST_TRACK = ("taskmasterd lost this process: its daemon restarted, or the reply that assigned it was "
              "lost, and it does not run it")


@dataclass(frozen=True)
class _Run:
    """What serves one assigned process: its task, and the assignment it acts under."""

    task: asyncio.Task[None]
    assignment: Assignment


class JobExecutor(RegisteredExecutor):
    def __init__(self, job: Job, shared: Shared, after: asyncio.Future[Any] | None = None) -> None:
        assert job.spec.colonies is not None
        super().__init__(shared, job.name, job.name, executor_identity(job.name, job.spec.colonies, shared.settings))
        self.job = job
        self.conf: ColoniesSpec = job.spec.colonies
        self._runs: dict[str, _Run] = {}  # processid -> what serves it
        self._kept = KeptOutcomes()  # outcomes of processes queued again under their runs
        self._polls: set[asyncio.Task[None]] = set()  # assigns in flight for free slots
        self._keepalive: asyncio.Task[None] | None = None  # a keep-alive assign in flight
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._reconciling: asyncio.Task[None] | None = None
        self._adopted: set[str] | None = None  # while reconciling: what assigns brought meanwhile
        self._reconcile_due = False
        self._failing = False  # the server failed the last call: probe with backoff
        self._refused: str | None = None  # why the server refuses this executor: register again
        self._wake = asyncio.Event()  # a poll, run or keep-alive ended, or the job changed
        self.not_serving: str | None = None  # why no assign goes out: the job cannot take work now
        self._stop: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._main(after))
        self._task.add_done_callback(self._main_ended)

    @property
    def functions(self) -> tuple[str, ...]:
        return self.conf.functions

    # --- what the bridge calls ------------------------------------------------------------------

    def update(self, job: Job) -> None:
        """A new version of the job file with the same executor identity."""
        assert job.spec.colonies is not None
        self.job, self.conf = job, job.spec.colonies
        self._wake.set()  # maxconcurrent or the functions may have changed

    def serving_changed(self) -> None:
        """Job.not_serving() changed (JobListener.job_serving_changed, through the bridge)."""
        self._wake.set()

    def status(self) -> dict[str, Any]:
        # Any call of any job failing to reach the server says it: even a busy executor is offline.
        outage = self._shared.outage.why
        offline = outage is not None and self.state not in ("error", "closed")
        key = self._registration.key
        return {
            "executor": self.executorname,
            "executortype": self.identity.executortype,
            "location": self.identity.location or None,
            "executorid": key.executorid if key else None,
            "state": "offline" if offline else self.state,
            "running": len(self._runs),
            "error": outage if offline else self.error,
            "waiting": self.not_serving,
        }

    async def close(self, reason: str, unregister: bool) -> None:
        """Stop assigning, stop the runs (failing their processes with `reason`), and with the
        colony key and `unregister`, remove the executor from the server (its key stays)."""
        await cancel_and_wait(self._task)
        if not self._stop.done():
            self._stop.set_result(reason)
        if self._runs:
            timing = self._shared.timing
            _, late = await asyncio.wait([run.task for run in self._runs.values()],
                                         timeout=self.job.spec.stoptime + timing.close_patience + PIPE_GRACE)
            for run in late:
                run.cancel()
            if late:
                await asyncio.wait(late)
        key = self._registration.key
        if unregister and self._shared.settings.colony_prvkey and key is not None:
            await self._registration.unregister(key)
        self.state = "closed"

    # --- life -----------------------------------------------------------------------------------

    async def _main(self, after: asyncio.Future[Any] | None) -> None:
        if after is not None:
            await asyncio.wait([after])  # this job's previous executor is still leaving
        while True:
            key = await self._register_until_done()
            await self._serve(key)

    async def _serve(self, key: ExecutorKey) -> None:
        """Assign while the server accepts this executor; returns when it refuses it (removed, or
        its data lost), to register again. Runs go on meanwhile."""
        self._refused, self._failing = None, False
        await self._reconcile(key)  # before any assign: whatever runs for us now is a leftover
        try:
            while True:
                self._wake.clear()
                self._collect()
                if not self._failing:
                    try:
                        await self._registration.sync_functions(key, self.conf.functions)
                    except ColoniesError as exc:
                        self._failed(exc)
                if self._refused is not None:
                    break
                self._plan(key)
                await self._wake.wait()
        finally:
            self._disarm_keepalive()
            pending = [t for t in (*self._polls, self._keepalive, self._reconciling) if t is not None]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            self._polls, self._keepalive, self._reconciling = set(), None, None
        log.warning("%s: executor %s: refused by the server (%s); registering again",
                    self.job.name, key.executorname, self._refused)

    def _collect(self) -> None:
        """Forget the helper tasks that ended; one that failed is a bug, and stops the executor."""
        done = {t for t in self._polls if t.done()}
        self._polls -= done
        if self._keepalive is not None and self._keepalive.done():
            done.add(self._keepalive)
            self._keepalive = None
        if self._reconciling is not None and self._reconciling.done():
            done.add(self._reconciling)
            self._reconciling = None
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    def _plan(self, key: ExecutorKey) -> None:
        """Start what should be running now: an assign per free slot (one probe while the server
        fails), else a keep-alive, and a reconciliation when one is due."""
        if self._reconcile_due and self._reconciling is None and not self._failing:
            self._reconcile_due = False
            self._reconciling = self._spawn(self._reconcile(key))
        room = self.conf.maxconcurrent - len(self._runs) - len(self._polls)
        self.not_serving = self.job.not_serving()
        if self.not_serving is not None:  # the job cannot do the work now: take none
            room = 0
        if self._failing:
            room = 0 if self._polls else min(room, 1)
        for _ in range(room):
            delay = self._backoff.next_delay() if self._failing else 0.0
            self._polls.add(self._spawn(self._assign(key, delay)))
        if self._polls:
            self._disarm_keepalive()  # an assign in flight marks the executor alive itself
        elif self._keepalive is None and self._keepalive_timer is None:
            self._keepalive_timer = asyncio.get_running_loop().call_later(
                self._shared.timing.keepalive_interval, self._keep_alive_now, key)
        self.state = "polling" if self._polls else "waiting" if self.not_serving else "running"

    def _keep_alive_now(self, key: ExecutorKey) -> None:
        self._keepalive_timer = None
        self._keepalive = self._spawn(self._keep_alive(key))

    def _disarm_keepalive(self) -> None:
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        task.add_done_callback(lambda _: self._wake.set())
        return task

    def _failed(self, exc: ColoniesError) -> None:
        if isinstance(exc, ColoniesOutcomeUnknown):
            self._reconcile_due = True  # an assign may have been done, its process not brought
        if not transient(exc):
            self._refused = self._refused or exc.message
            return
        self._failing = True
        self._shared.outage.failed(exc)

    def _answered(self) -> None:
        if self._failing:  # the server is back: a reply may have been lost while it failed
            self._failing, self._reconcile_due = False, True
        self._online()

    async def _assign(self, key: ExecutorKey, delay: float) -> None:
        """One long-poll for a free slot; the process it brings starts a run."""
        if delay:
            await asyncio.sleep(delay)
        shared = self._shared
        try:
            process = await shared.client.assign(self._colony, shared.timing.assign_timeout, key.prvkey)
        except ColoniesError as exc:
            self._failed(exc)
            return
        self._answered()
        if process is not None:
            self._begin(key, process)

    async def _keep_alive(self, key: ExecutorKey) -> None:
        """Every slot has been busy for keepalive_interval: an assign that can take nothing."""
        shared = self._shared
        try:
            process = await shared.client.assign(self._colony, -1, key.prvkey, NOTHING_CPU, NOTHING_MEM)
        except ColoniesError as exc:
            self._failed(exc)
            return
        self._answered()
        if process is not None:  # it asked for less than no cpu and memory: not ours to run now
            await self._assignment(key, process).close(False, [
                f"executor {self.executorname!r} was busy: its keep-alive assign (availablecpu {NOTHING_CPU}, "
                f"availablemem {NOTHING_MEM}) matched this process's negative cpu and memory conditions"],
                shared.timing.close_patience)

    async def _reconcile(self, key: ExecutorKey) -> None:
        """Close failed what the server shows running for this executor that it does not run."""
        shared = self._shared
        try:
            listed = await shared.client.get_process_hist(self._colony, RUNNING, key.prvkey, executorid=key.executorid)
        except ColoniesError as exc:
            self._failed(exc)
            self._reconcile_due = True
            return
        if not isinstance(listed, list):
            listed = []
        # An assign in flight may bring one of them: wait for their answers before judging.
        self._adopted = set()
        try:
            if self._polls:
                await asyncio.wait(set(self._polls))
            ours = self._adopted | self._runs.keys()
        finally:
            self._adopted = None
        for process in listed:
            processid = _process_id(process)
            if processid in self._kept:  # its run ended here while it was adrift: its outcome answers it
                self._begin(key, process)
            elif processid not in (None, *ours):
                log.warning("%s: process %s runs for executor %s on the server, not here: closing it failed",
                            self.job.name, process.get("processid"), key.executorname)
                await self._assignment(key, process).close(False, [LOST_TRACK], shared.timing.close_patience)

    def _assignment(self, key: ExecutorKey, process: dict[str, Any]) -> Assignment:
        shared = self._shared
        return Assignment(shared.client, key.prvkey, key.executorid, process, shared.timing, shared.outage,
                          asyncio.get_running_loop().time())

    def _begin(self, key: ExecutorKey, process: Any) -> None:
        if _process_id(process) is None:
            log.warning("%s: ignoring an assigned process without a process id: %.200r", self.job.name, process)
            return
        task = self._assignment(key, process)
        if self._adopted is not None:
            self._adopted.add(task.id)
        current = self._runs.get(task.id)
        if current is not None and current.assignment.attempt == task.attempt:
            # Queued again under its run, and back: the running copy answers it, once.
            current.assignment.set_adrift(False)
            log.info("%s: process %s is assigned again while its run goes on: that run answers it",
                     self.job.name, task.id)
            return
        kept = self._kept.take(task.id, task.attempt)
        if kept is not None:
            run = asyncio.create_task(answer(task, kept, self._shared.timing))
        else:
            old_copy = self._kept.ran_lately(task.id)
            if current is not None:  # a new attempt: the old copy stops, and the new one waits for it
                current.assignment.supersede()
                old_copy = current.assignment.started
            run = asyncio.create_task(self._serve_process(task, current.task if current else None, old_copy))
        self._runs[task.id] = _Run(run, task)
        run.add_done_callback(functools.partial(self._finished, task.id))

    def _finished(self, processid: str, run: asyncio.Task[None]) -> None:
        current = self._runs.get(processid)
        if current is not None and current.task is run:
            del self._runs[processid]
            self._kept.ended(current.assignment)
        self._wake.set()

    async def _serve_process(self, task: Assignment, previous: asyncio.Task[None] | None,
                             old_copy: bool) -> None:
        """Serve an assigned process; a new attempt of one that ran here first waits until the old
        run has ended and its copy is gone."""
        if previous is not None:
            await asyncio.wait([previous])
        if old_copy and task.funcname == "run":
            await copy_gone(task.id, self.job.spec.stoptime + PIPE_GRACE)
            standing = await task.standing()
            if standing.lost:  # it went while the old copy was leaving
                log.info("%s: process %s: %s; not started", self.job.name, task.id, standing.why)
                return
        functions = self.conf.functions
        try:
            if task.funcname not in functions:
                await task.close(False, [f"function {task.funcname!r} is not served by executor "
                                         f"{self.executorname!r} (it serves {', '.join(functions)})"])
            elif task.funcname == "run":
                await CommandRun(task, self.job, self._stop, self._shared.timing).run()
            else:
                successful, values = await control(self._shared.supervisor, self.job.name, task.funcname)
                await task.close(successful, values)
        except Exception as exc:  # one broken process must not take the executor down
            log.exception("%s: process %s failed inside taskmasterd", self.job.name, task.id)
            await task.close(False, [f"taskmasterd internal error: {exc!r}"], self._shared.timing.close_patience)


def _process_id(process: Any) -> str | None:
    """A process document's id; None when the server sent something else."""
    processid = process.get("processid") if isinstance(process, dict) else None
    return processid if isinstance(processid, str) and processid else None
