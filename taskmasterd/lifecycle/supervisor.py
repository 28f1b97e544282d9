"""The supervisor: the jobs it knows, their files on disk, and the async API behind every verb.

Every method that answers a verb returns a `Reply`; the control server, the signal handlers, the
jobs-directory watcher and the Colonies bridge all come through here.

A verb is a command to each instance it names, through the job's queue (`Job.post`): the table
of states.py decides, one event at a time, so two verbs never interleave half-way (a `stop` sent
during a `restart-job` is applied after it). Verbs on one job are also serialized by that job's
lock while they post their commands; the answer (RUNNING, stopped) is awaited after releasing it,
so a `kill` can overtake a slow `stop`. Only what ends a job's existence — `delete`, a reload
that finds the file gone — holds the lock until the job's processes are gone, so nothing can
start an instance of a job that is being forgotten. Other jobs are never held up.

A request that names jobs is answered once the jobs directory has been read once (`jobs_read`):
the control port answers from the start, and never says a job does not exist because its file
was not read yet.

Dependencies: a start of a job whose `depends_on` is not met leaves its instances WAITING (held
here); whenever a job's standing changes (an instance's state or health, a job loaded, changed or
removed), once per loop iteration, the held jobs that depend on it are looked at again and those
now met start. A `start` waiting for a dependency that is not coming (stopped, failed, not
loaded) is answered at once and says so; `start` with `deps` starts the dependencies too.
Several jobs stop in dependency layers: dependants first.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping, Protocol, TypeVar

from .dependencies import stop_layers
from .enablement import Enablement
from .instance import Answer, Instance
from .job import Job
from .rollout import Rollout
from .scheduler import Scheduler
from .services import ConsoleStreams, Services
from .states import Kind, State
from ..foreground import Foreground
from ..jobfiles.cycles import cycle_problem, dependency_graph
from ..jobfiles.jobfile import JobFileError, JobSpec, Limits, host_errors, parse_job
from ..jobfiles.jobsdir import JobsDirectory
from ..health.notify_socket import NotifyDirectory, default_notify_path
from ..observe.events import EventBus
from ..processes.containment import Containment
from ..processes.heldsockets import HeldSockets, Owners, SocketError, owners_of
from ..processes.launch import Account
from ..processes.logcapture import DEFAULT_LOG_MODE, LogFiles
from ..processes.orphans import ChildJournal, stop_leftovers
from ..processes.spawner import inherited_environment, lookup_account
from ..processes.table import Child, ProcessTable
from ..reply import REDUNDANT, SUCCESS, Reply, fail
from ..tasks import TaskOwner, Turns, all_settled

if TYPE_CHECKING:
    from ..daemonhandle import DaemonHandle

log = logging.getLogger("taskmasterd")
PIPES_DRAINED_TIMEOUT = 5.0  # seconds shutdown waits for the last output of the stopped jobs
SHUTTING_DOWN = "taskmasterd is shutting down"
STREAMS = ("stdout", "stderr")
# Files applied at once by a load or a reload of every file (the others wait for one to end): a
# task made per file would cost thousands of tasks in one loop iteration.
FILES_AT_ONCE = 64
APPLY_ON_SAVE, APPLY_ON_RELOAD = "on-save", "on-reload"  # the daemon's `apply` setting
PENDING_NEW = "a new file, not loaded (reload loads it)"
T = TypeVar("T")


class JobListener(Protocol):
    """What a bridge (ColonyOS) hears about jobs coming, changing and going. A listener that
    inherits from it gets the no-op default of `job_serving_changed`."""

    def job_loaded(self, job: Job) -> None: ...

    def job_changed(self, job: Job, old: JobSpec) -> None: ...

    def job_removed(self, name: str) -> None: ...

    def job_serving_changed(self, job: Job) -> None:
        """`job.not_serving()` changed: whether the job can take work now, or why not."""

    def jobs_changed(self, names: set[str]) -> None:
        """The jobs whose instances changed state, health or wish: once per loop iteration, for
        every change of that iteration (Supervisor.standing_changed)."""


class _NameLocks:
    """One asyncio.Lock per job name, kept only while someone holds or waits for it (names come
    from clients: the table must not grow with every name ever asked for)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(name, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[name]


class Supervisor:
    state_names = tuple(state.value for state in State)  # for the metrics

    def __init__(self, jobs_dir: Path | str, log_dir: Path | str, state_dir: Path | str,
                 environ: Mapping[str, str] | None = None, *, limits: Limits = Limits(),
                 log_mode: int = DEFAULT_LOG_MODE, adopt_orphans: bool = False, notify_dir: str | None = None,
                 console: ConsoleStreams | None = None, containment: Containment | None = None,
                 apply: str = APPLY_ON_SAVE):
        """`console`: container mode's, where jobs that name no log file write (None: their files);
        `containment`: how spawns are held (cgroup2 cells, or process groups: processes/containment.py);
        `apply`: "on-save" (a saved file is applied at once) or "on-reload" (at the next reload)."""
        self.jobs_dir = os.path.abspath(jobs_dir)
        self.log_dir = os.path.abspath(log_dir)
        self.state_dir = os.path.abspath(state_dir)
        self.directory = JobsDirectory(self.jobs_dir)
        self.limits = limits
        # This run's id, in every child's environment (RUN_VARIABLE): the next daemon finds the
        # escapes by it if this one dies (orphans.py).
        self.run_id = secrets.token_hex(8)
        self.base_environment = inherited_environment(os.environ if environ is None else environ)
        self.jobs: dict[str, Job] = {}
        self.invalid: dict[str, str] = {}  # files that never loaded: name -> error
        self.apply = apply
        self.new_files: set[str] = set()  # "on-reload": files saved that no reload has loaded yet
        self.log_files = LogFiles(log_mode)
        self.foreground = Foreground()  # control requests under way: background slices wait for them
        self.processes = ProcessTable(ChildJournal(os.path.join(self.state_dir, "children.json"), self.run_id),
                                      adopt_orphans, self.run_id, containment, self.foreground)
        self.events = EventBus()  # every state and health change, for the `events` verb
        self._checks = TaskOwner(log)  # http and command health checks under way
        self.console = console
        self.services = Services(self.processes, self.events, self.log_files, self.log_dir, self.base_environment,
                                 self.notify_directory, self.conditions_of, self.standing_changed, self._hold,
                                 self._checks, console, lambda name: not self.enablement.disabled(name))
        self.listeners: list[JobListener] = []
        # each adds its fields to the entries of the jobs it knows ({name: entry}): called once per status
        self.status_extras: list[Callable[[dict[str, dict]], None]] = []
        self._locks = _NameLocks()
        self._background = TaskOwner(log)  # reloads the watcher and SIGHUP asked for
        self._turns = Turns(foreground=self.foreground)  # job files read and parsed a batch per loop iteration
        self._read = asyncio.Event()  # the jobs directory has been read once
        self._watcher = None
        self.closing = False
        self.daemon: DaemonHandle | None = None  # set by daemon.py: `shutdown`, and status's `daemon` object
        self.notify_dir = notify_dir  # None: a short directory of this daemon's own (default_notify_path)
        self._notify: NotifyDirectory | None = None
        self._held: set[str] = set()  # jobs with instances WAITING for their dependencies
        self._changed: set[str] = set()  # jobs whose standing changed in this loop iteration
        self._settling: asyncio.Handle | None = None
        self._refusal: str | None = None  # why the jobs directory is not read now (logged once)
        # Scheduled jobs: started at their due times, and by `start` once (lifecycle/scheduler.py).
        self.scheduler = Scheduler(self)
        self.listeners.append(self.scheduler)
        self.status_extras.append(self.scheduler.status_extra)
        self.enablement = Enablement(self.state_dir)  # `disable`d jobs do not autostart
        self.status_extras.append(self.enablement.status_extra)

    # --- life cycle -----------------------------------------------------------------------------

    async def open(self, watch: bool = True) -> None:
        """Stop what a killed predecessor left, watch the directory, load every job file and start
        the autostart jobs; returns once every autostart spawn has been made. The loop serves
        other work (the control port answers, status shows what is loaded so far) meanwhile; a
        request that names jobs waits until every file has been read (`jobs_read`)."""
        try:
            os.makedirs(self.jobs_dir, exist_ok=True)
            os.makedirs(self.log_dir, exist_ok=True)
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            journal = self.processes.journal
            assert journal is not None
            await self.processes.containment.recover()  # a killed predecessor's cells
            await stop_leftovers(journal.path)  # and the groups it journaled (process-group mode)
            self.enablement.load()
            journal.open()
            self.processes.open(asyncio.get_running_loop())
            if watch:
                from ..jobfiles.watcher import DirectoryWatcher

                self._watcher = DirectoryWatcher(self.jobs_dir, self.directory.job_name, self._files_changed)
                self._watcher.start()
            await all_settled((self._apply_file(name, nowait=True) for name in sorted(self.directory.names())),
                              at_once=FILES_AT_ONCE)
        finally:
            self._read.set()
        await self.processes.queue_flushed()

    async def jobs_read(self) -> None:
        """Until the jobs directory has been read once (at once after that)."""
        await self._read.wait()

    async def shutdown(self) -> None:
        """Stop every job, each with its own stoptime, dependants before what they depend on (the
        others in parallel), then anything else the daemon started (Colonies runs, escaped
        grandchildren); nothing it started is left."""
        self.closing = True
        self._read.set()
        self.processes.closing = True  # no spawn from now on; escapes are stopped once, at the end
        await self.scheduler.close()
        if self._watcher is not None:
            self._watcher.close()
        for job in self.jobs.values():
            job.end_rollout(SHUTTING_DOWN)  # no ROLL may come after the stops below
        await self.stop_in_order(list(self.jobs), self._stop_for_shutdown)
        await self.processes.drain()
        # Every process is gone, so every pipe ends: what the jobs wrote as they stopped is read out
        # before the daemon exits (an escape outside our reach could keep one open: not for ever).
        left = await self.log_files.drained(PIPES_DRAINED_TIMEOUT)
        if left:
            log.warning("%d output pipe(s) still open at shutdown: their last output may be lost", left)
        for job in self.jobs.values():
            job.activation.close()
            job.sockets.close()
        await self._checks.close()  # cancelled as their instances stopped; a command check's group is gone
        await self._background.close()
        self.processes.close()
        if self._notify is not None:
            self._notify.remove()
        log.info("every job stopped")

    async def _stop_for_shutdown(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is not None:
            await self._stopped(job, job.stop_all(), nowait=False)

    def background(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any] | None:
        """A task the supervisor owns (cancelled at shutdown, its failure logged); None once it
        is shutting down (the coroutine is dropped unstarted)."""
        if self._background.closed:
            coro.close()
            return None
        return self._background.spawn(coro, what)

    # --- files ----------------------------------------------------------------------------------

    def path_of(self, name: str) -> str:
        return self.directory.path_of(name)

    async def _validate(self, name: str, raw: bytes) -> tuple[JobSpec, Account | None]:
        """The spec of these bytes, and whom its `user` runs as (looked up on a worker thread:
        NSS may be LDAP or SSSD, far away; once per version of the job). JobFileError if invalid."""
        path = self.path_of(name)
        spec = parse_job(name, raw, path, self.limits)
        account = None
        if spec.user is not None:
            loaded = self.jobs.get(name)
            if loaded is not None and loaded.spec == spec:
                account = loaded.account()
            else:
                account = await asyncio.to_thread(_look_up, spec.user)
        problems = host_errors(spec, path, account.uid if account is not None else None)
        if problems:
            raise JobFileError(problems)
        self._refuse_cycle(spec)
        return spec, account

    def _refuse_cycle(self, spec: JobSpec) -> None:
        """A file whose `depends_on` would close a cycle among the loaded jobs is invalid."""
        if not spec.depends_on:
            return
        graph = dependency_graph(job.spec for job in self.jobs.values())
        graph[spec.name] = [dependency.job for dependency in spec.depends_on]
        problem = cycle_problem(graph, spec.name, self.path_of(spec.name))
        if problem:
            raise JobFileError([problem])

    def _files_changed(self, names: Iterable[str] | None) -> None:
        """From the watcher: these files changed (None: the kernel lost track, rescan all). With
        `apply` "on-reload" they are only noted, for `status`, until a reload applies them."""
        if self.closing:
            return
        if self.apply == APPLY_ON_RELOAD:
            every = self.directory.names() | set(self.jobs) | set(self.invalid) | self.new_files
            for name in sorted(every) if names is None else names:
                self.background(self._note_change(name), f"change of {name}")
            return
        if names is None:
            self.background(self.reload_all(), "rescan of the jobs directory")
            return
        for name in names:
            self.background(self._apply_file(name, nowait=True), f"reload of {name}")

    async def _note_change(self, name: str) -> None:
        """"on-reload": whether job `name`'s file now differs from what runs (a file added, changed
        or removed), for `status`; nothing is applied."""
        async with self._locks.hold(name):
            await self._turns.turn()
            if self.closing or self._directory_refusal() is not None:
                return
            job = self.jobs.get(name)
            try:
                raw = self.directory.read(name)
                spec = None if raw is None else parse_job(name, raw, self.path_of(name), self.limits)
            except JobFileError:
                raw, spec = b"", None  # invalid: the reload will say why
            if job is not None:
                job.pending = None if spec == job.spec else "file removed" if raw is None else "file changed"
            elif raw is not None:
                self.new_files.add(name)
            else:
                self.new_files.discard(name)

    async def _apply_file(self, name: str, nowait: bool,
                          pushed: tuple[bytes, JobSpec, Account | None] | None = None) -> tuple[Reply, str]:
        """Bring job `name` in line with its file (the `reload` verb), or with `pushed` (bytes
        already validated into a spec), which is written first. Returns the reply and what
        changed: added, removed, restarted, applied (in place), unchanged, invalid or missing.
        Reading and parsing wait their turn (`Turns`): a reload of every file holds the loop a
        few milliseconds at a time."""
        async with self._locks.hold(name):
            if self.closing:
                return fail(SHUTTING_DOWN), "unchanged"
            await self._turns.turn()
            refusal = self._directory_refusal()
            if refusal is not None:
                return fail(refusal), "unchanged"
            job = self.jobs.get(name)
            held: tuple[HeldSockets, Owners] | None = None
            try:
                if pushed is not None:
                    self._refuse_cycle(pushed[1])  # again: other files may have changed meanwhile
                    spec, account = pushed[1], pushed[2]
                else:
                    raw = self.directory.read(name)
                    spec, account = (None, None) if raw is None else await self._validate(name, raw)
                held = await self._hold_sockets(name, spec, job)  # bound before anything is written
                if pushed is not None:
                    # fsync, twice: seconds on a busy disk, so not on the loop (the job's lock is held)
                    await asyncio.to_thread(self.directory.write, name, pushed[0])
            except JobFileError as exc:
                return self._invalid_file(name, job, str(exc)), "invalid"
            except OSError as exc:
                _abandon(held, job)
                return fail(f"cannot write {self.path_of(name)}: {exc.strerror}"), "invalid"
            if self.closing:  # began meanwhile (a pushed file is written: the next start loads it)
                _abandon(held, job)
                return fail(SHUTTING_DOWN), "unchanged"
            self.invalid.pop(name, None)
            self.new_files.discard(name)
            if job is not None:
                job.pending = None
            if spec is None:
                if job is None:
                    return fail(f"job {name!r} has no file {self.path_of(name)} and is not loaded"), "missing"
                await self._forget(job)
                return SUCCESS, "removed"
            retiring: list[Instance] = []
            rollout: Rollout | None = None
            if job is None:
                job = self.jobs[name] = Job(spec, self.services, account, held[0] if held else None)
                log.info("loaded job %s from %s", name, self.path_of(name))
                for listener in self.listeners:
                    listener.job_loaded(job)
                autostart = spec.starts_on_load and not self.enablement.disabled(name)
                starting = job.command(Kind.START, "autostart") if autostart else []
                job.watch_sockets()
                change = "added"
            else:
                had_error, job.error = job.error, None
                if spec == job.spec:
                    return (SUCCESS if had_error else REDUNDANT), "unchanged"
                old = job.spec
                starting, retiring, renew = job.apply(spec, account, *(held or ()))
                if job.rollout is not None and job.rollout.task is not None and job.rollout.task.done():
                    job.rollout = None  # a halt of an older version is no longer news
                if renew:
                    rollout, more = self._restart_instances(job, renew, "restart for new settings")
                    starting += more
                change = "restarted" if renew else "applied"  # applied in place
                log.info("reloaded job %s: %s", name, change)
                for listener in self.listeners:
                    listener.job_changed(job, old)
            self.standing_changed(name)  # its dependants may wait for it, or it for others
        if retiring and not nowait:
            await job.wait_gone(retiring)
        reply = await self._started(job, starting, nowait, nothing=SUCCESS)
        if rollout is not None and reply.response != "fail":
            reply = await self._rolled(rollout, nowait)
        return reply, change

    async def _hold_sockets(self, name: str, spec: JobSpec | None, job: Job | None) -> tuple[HeldSockets, Owners] | None:
        """The sockets `spec` asks the daemon to hold — those `job` holds already kept, the others
        bound now — and their files' owners; None when there is nothing new to hold. A socket that
        cannot be held makes the file invalid (JobFileError), and nothing is left bound."""
        held = job.sockets if job is not None else HeldSockets()
        if spec is None or (not spec.sockets and not held.held) or (
                job is not None and (spec.sockets, spec.reuseport, spec.numprocs)
                == (job.spec.sockets, job.spec.reuseport, job.spec.numprocs)):
            return None
        try:
            owners: Owners = {}
            if any(sock.owner or sock.group for sock in spec.sockets):
                owners = await asyncio.to_thread(owners_of, spec.sockets)  # NSS: not on the loop
            return held.prepare(spec.sockets, spec.reuseport, spec.numprocs, owners), owners
        except SocketError as exc:
            raise JobFileError([f'{self.path_of(name)}: field "sockets": {exc}']) from None

    def _directory_refusal(self) -> str | None:
        """Why no job file is read or written now (the jobs run on as they are), or None. Logged
        when it starts and stops being so, not at every file."""
        problem = self.directory.problem()
        if problem != self._refusal:
            if problem is not None:
                log.error("%s; its files are not read until that changes, the jobs run as they are", problem)
            else:
                log.info("the jobs directory %s may be read again", self.jobs_dir)
            self._refusal = problem
        return problem

    def _invalid_file(self, name: str, job: Job | None, message: str) -> Reply:
        log.error("%s", message.replace("\n", "; "))
        if job is not None:
            job.error = message
            log.error("%s keeps running its last valid version", name)
        else:
            self.invalid[name] = message
        return fail(message)

    async def _forget(self, job: Job) -> None:
        """Stop every instance, wait until their processes are gone, then drop the job. Called
        with the job's lock held, so nothing can start it meanwhile."""
        await self._stopped(job, job.stop_all(), nowait=False)
        job.discard()
        job.sockets.close()  # its processes are gone: nobody holds them any more
        if self.jobs.get(job.name) is job:
            del self.jobs[job.name]
        log.info("forgot job %s", job.name)
        for listener in self.listeners:
            listener.job_removed(job.name)
        self.standing_changed(job.name)

    # --- verbs ----------------------------------------------------------------------------------

    def _job(self, name: str) -> Job | Reply:
        if self.closing:
            return fail(SHUTTING_DOWN)
        job = self.jobs.get(name)
        if job is None:
            if name in self.invalid:
                return fail(f'job "{name}" is not loaded: its file is invalid: {self.invalid[name]}')
            return fail(f'job "{name}" does not exist')
        return job

    def instances_of(self, name: str, index: int | None, retired_too: bool = False
                     ) -> tuple[Job, list[Instance]] | Reply:
        """The job and the instances a verb acts on — every one, or only `index` (`name:N`);
        `retired_too`: also the retired ones still stopping (a stop or kill reaches them)."""
        job = self._job(name)
        if isinstance(job, Reply):
            return job
        if index is None:
            return job, list(job.instances if retired_too else job.active)
        if 0 <= index < job.spec.numprocs:
            return job, [job.instances[index]]
        return fail(f'job "{name}" has no instance {index} (numprocs is {job.spec.numprocs})')

    async def _command(self, name: str, index: int | None, kind: Kind, why: str, retired_too: bool = False
                       ) -> tuple[Job, list[tuple[Instance, Answer]]] | Reply:
        """Under the job's lock, `kind` to the instances of `instances_of`; the job and each
        instance with its answer (awaited after the lock is released), or the failure reply. A
        stop, kill or restart ends the job's rollout (the instance it replaces finishes)."""
        async with self._locks.hold(name):
            found = self.instances_of(name, index, retired_too)
            if isinstance(found, Reply):
                return found
            job, targets = found
            if kind in (Kind.STOP, Kind.KILL, Kind.RESTART):
                job.end_rollout(why)
            return job, job.command(kind, why, targets)

    def _restart_instances(self, job: Job, instances: list[Instance], why: str
                           ) -> tuple[Rollout | None, list[tuple[Instance, Answer]]]:
        """New processes for `instances`, the job's way: a rollout (`rolling`), or a RESTART each
        (all at once; it ends a rollout under way). Called with the job's lock held."""
        if job.spec.rolling:
            return self._roll(job, instances, why), []
        job.end_rollout(why)
        return None, job.command(Kind.RESTART, why, instances)

    def _roll(self, job: Job, instances: list[Instance], why: str, queued: bool = False) -> Rollout:
        """A rolling restart of `instances` (a task of the supervisor's). The one under way, if
        any, is interrupted (a newer file's rollout replaces what it had not); with `queued` (a
        verb), this one comes after it instead."""
        under_way = job.rollout if job.rollout is not None and job.rollout.task is not None \
            and not job.rollout.task.done() else None
        if queued and under_way is not None:
            job.rollout = None  # stays under way: the new one waits for it
        else:
            under_way = None
            job.end_rollout(f"a newer rollout ({why})")
        rollout = Rollout(job, instances, job.spec.max_unavailable, why, self.events, after=under_way)
        rollout.task = self.background(rollout.run(), f"rollout of {job.name}")
        if rollout.task is not None:  # else the daemon is shutting down: nothing rolls
            job.rollout = rollout
        return rollout

    async def _rolled(self, rollout: Rollout, nowait: bool) -> Reply:
        """The answer of a request that began a rollout: at once with `nowait`, else once it is
        over (a verb whose connection goes away leaves it going)."""
        if nowait or rollout.task is None:
            return SUCCESS if rollout.task is not None else fail(SHUTTING_DOWN)
        await asyncio.wait([rollout.task])
        if rollout.task.cancelled():
            return fail(rollout.outcome() or "rollout interrupted")
        outcome = rollout.task.result()
        return fail(outcome) if outcome else SUCCESS

    async def start(self, name: str, nowait: bool = False, index: int | None = None, deps: bool = False) -> Reply:
        """Start the job's instances — a scheduled job's: one run now, beside its schedule; with
        `deps`, the jobs it depends on (and theirs) first."""
        if deps:
            problem = await self._start_dependencies(name)
            if problem is not None:
                return fail(problem)
        if self.scheduler.schedules(name) and not self.closing:
            return await self.scheduler.run_now(name, nowait, index)
        return await self._start_with(Kind.START, "start command", name, nowait, index, waiting_too=deps)

    async def start_instances(self, name: str, nowait: bool = False, index: int | None = None,
                              reason: str = "start command") -> Reply:
        """Start the instances, whatever the job's schedule (a scheduled job's runs come here)."""
        return await self._start_with(Kind.START, reason, name, nowait, index)

    async def restart(self, name: str, nowait: bool = False, index: int | None = None, rolling: bool = False) -> Reply:
        """`restart-job`: stop each instance and start it again, one command each (what comes
        meanwhile is applied after it); answered as `start` is. A job with `rolling`, or with
        `rolling` asked: a rolling restart (lifecycle/rollout.py), answered once it is over."""
        loaded = self.jobs.get(name)
        if rolling or (loaded is not None and loaded.spec.rolling):
            async with self._locks.hold(name):
                found = self.instances_of(name, index)
                if isinstance(found, Reply):
                    return found
                job, targets = found
                rollout = self._roll(job, targets, "restart --rolling" if rolling else "restart command", queued=True)
            return await self._rolled(rollout, nowait)
        reply = await self._start_with(Kind.RESTART, "restart command", name, nowait, index)
        return SUCCESS if reply.response == "redundant" else reply

    async def repair(self, name: str, nowait: bool = False, index: int | None = None) -> Reply:
        if self.scheduler.schedules(name) and not self.closing:  # a run now, if the last one failed
            return await self.scheduler.repair(name, nowait, index)
        return await self._start_with(Kind.REPAIR, "repair", name, nowait, index)

    async def _start_with(self, kind: Kind, why: str, name: str, nowait: bool, index: int | None,
                          waiting_too: bool = False) -> Reply:
        """start, restart and repair: the command to the instances, answered once those it
        started settle."""
        outcome = await self._command(name, index, kind, why)
        if isinstance(outcome, Reply):
            return outcome
        job, answers = outcome
        return await self._started(job, answers, nowait, nothing=REDUNDANT, waiting_too=waiting_too)

    async def _started(self, job: Job, answers: list[tuple[Instance, Answer]], nowait: bool, nothing: Reply,
                       waiting_too: bool = False) -> Reply:
        """Answer a request that started instances: `nothing` when none was started; at once with
        `nowait`; else once each is RUNNING, or one failed to start, or waits for a dependency
        that is not coming. An instance a previous start left WAITING is waited for too when
        `waiting_too` (the request started its dependencies), and is never "redundant" while what
        it waits for is not coming."""
        acted = [inst for inst, answer in answers if await answer]
        held = [inst for inst, _ in answers if inst not in acted and inst.state is State.WAITING]
        started = acted + held if waiting_too else acted
        if not started:
            stalled = self._stalled(job) if held and not nowait else None
            return fail(stalled) if stalled is not None else nothing
        if nowait:
            return SUCCESS
        failure = await job.wait_started(started, lambda: self._stalled(job))
        return fail(failure) if failure else SUCCESS

    def _stalled(self, job: Job) -> str | None:
        """What a start of `job` waits for that is not coming by itself (a dependency stopped,
        failed, or not loaded): "waiting for web (STOPPED): start it too, or use --nowait"."""
        waits = []
        for dependency in job.spec.depends_on:
            other = self.jobs.get(dependency.job)
            if other is None:
                waits.append(f"{dependency.job} (not loaded)")
            elif dependency.condition not in other.conditions_met() and not other.coming():
                waits.append(f"{dependency.job} ({other.state()})")
        if not waits:
            return None
        return f"waiting for {', '.join(waits)}: start {'it' if len(waits) == 1 else 'them'} too, or use --nowait"

    async def _start_dependencies(self, name: str) -> str | None:
        """`start` with `deps`: a start command to every job `name` depends on, directly or not
        (as systemd's Requires= pulls units in); why not (and nothing started), when one of them
        is not loaded."""
        if name not in self.jobs:
            return None  # the start itself says why
        order: list[str] = []
        seen = {name}
        pending = [name]
        while pending:
            job = self.jobs.get(pending.pop())
            for dependency in job.spec.depends_on if job is not None else ():
                if dependency.job not in seen:
                    seen.add(dependency.job)
                    order.append(dependency.job)
                    pending.append(dependency.job)
        for dependency in order:
            found = self._job(dependency)
            if isinstance(found, Reply):
                return f"cannot start {name}'s dependency {dependency}: {found.error}"
        for dependency in order:
            outcome = await self._command(dependency, None, Kind.START, f"start command (a dependency of {name})")
            if isinstance(outcome, Reply):  # removed meanwhile
                return f"cannot start {name}'s dependency {dependency}: {outcome.error}"
            for _, answer in outcome[1]:
                await answer
        return None

    async def stop(self, name: str, nowait: bool = False, kill: bool = False, index: int | None = None) -> Reply:
        kind, why = (Kind.KILL, "kill command") if kill else (Kind.STOP, "stop command")
        outcome = await self._command(name, index, kind, why, retired_too=True)
        if isinstance(outcome, Reply):
            return outcome
        return await self._stopped(*outcome, nowait=nowait)

    async def _stopped(self, job: Job, answers: list[tuple[Instance, Answer]], nowait: bool) -> Reply:
        stopping = [inst for inst, answer in answers if await answer]
        if not stopping:
            return REDUNDANT
        if not nowait:
            await job.wait_stopped(stopping)
        return SUCCESS

    async def kill(self, name: str, nowait: bool = False, index: int | None = None) -> Reply:
        return await self.stop(name, nowait, kill=True, index=index)

    async def stop_in_order(self, names: Iterable[str], stop_one: Callable[[str], Awaitable[T]]) -> dict[str, T]:
        """Stop several jobs (`stop_one(name)` stops one and returns once it has stopped),
        dependants before what they depend on: a layer of jobs at a time, the jobs of a layer in
        parallel, the next layer once the last one has stopped. Used by shutdown and by `stop`
        and `kill` of a selector (`stop a b`, `stop *`). Returns what each `stop_one` returned."""
        graph = dependency_graph(job.spec for job in self.jobs.values())
        results: dict[str, T] = {}
        for layer in stop_layers(names, graph):
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(stop_one(name)) for name in layer]
            results.update(zip(layer, (task.result() for task in tasks)))
        return results

    async def signal(self, name: str, sig: int, index: int | None = None) -> Reply:
        """`sig` to the process group of every running instance (or of instance `index`)."""
        async with self._locks.hold(name):
            found = self.instances_of(name, index)
            if isinstance(found, Reply):
                return found
            sent = [inst.child.signal_group(sig) for inst in found[1] if inst.child is not None]
        return SUCCESS if any(sent) else REDUNDANT

    def status(self, name: str | None = None, index: int | None = None) -> Reply:
        now = time.monotonic()
        if name is not None:
            job = self.jobs.get(name)
            if job is None:
                if name in self.invalid:
                    return Reply("status", value={"jobs": [self._invalid_status(name)]})
                return fail(f'job "{name}" does not exist')
            entry = job.status(now)
            self._add_extras({name: entry})
            if index is not None:
                if not 0 <= index < len(job.instances):
                    return fail(f'job "{name}" has no instance {index}')
                entry["instances"] = [entry["instances"][index]]
            return Reply("status", value={"jobs": [entry]})
        entries = [job.status(now) for job in self.jobs.values()]
        self._add_extras({entry["name"]: entry for entry in entries})
        entries += [self._invalid_status(name) for name in self.invalid if name not in self.jobs]
        entries += [{"name": name, "state": "NEW", "instances": [], "error": None, "pending": PENDING_NEW}
                    for name in sorted(self.new_files) if name not in self.jobs and name not in self.invalid]
        if self.daemon is not None:  # who answers (`version`, `pid`), and whether it reads its jobs dir
            document = {**self.daemon.document(), "jobs_dir_problem": self._refusal, "apply": self.apply}
            return Reply("status", value={"jobs": entries, "daemon": document})
        return Reply("status", value={"jobs": entries})

    def _add_extras(self, entries: dict[str, dict]) -> None:
        for extra in self.status_extras:
            extra(entries)

    def _invalid_status(self, name: str) -> dict:
        return {"name": name, "state": "INVALID", "instances": [], "error": self.invalid[name]}

    def log_counts(self) -> list[tuple[str, int, str, int, int]]:
        """(job, instance, stream, bytes written, bytes dropped) of every open log file."""
        counts = []
        for job in self.jobs.values():
            for inst in job.instances:
                for stream in STREAMS:
                    path = job.spec.log_path(stream, inst.index, self.log_dir)
                    file = self.log_files.get(path) if path is not None else None
                    if file is not None:
                        counts.append((job.name, inst.index, stream, file.written, file.dropped))
        return counts

    def running_children(self) -> dict[tuple[str, int], Child]:
        """(job, instance) -> the spawn each instance runs now (for the metrics' accounting)."""
        return {(job.name, inst.index): inst.child for job in self.jobs.values() for inst in job.instances
                if inst.child is not None}

    def containment(self) -> str:
        """How the daemon holds what it starts: "cgroup2", or "process-group (…)"."""
        return self.processes.containment.describe()

    def list(self) -> Reply:
        entries = [{"name": name, "state": job.state()} for name, job in self.jobs.items()]
        entries += [{"name": name, "state": "INVALID"} for name in self.invalid if name not in self.jobs]
        return Reply("list", value={"jobs": entries})

    def pull(self, name: str) -> Reply:
        try:
            data = self.directory.read(name)
        except JobFileError as exc:
            return fail(str(exc))
        if data is None:
            return fail(f'job "{name}" has no file')
        return Reply("file", job=name, data=data)

    async def push(self, name: str, data: bytes, nowait: bool = False) -> Reply:
        """Validate first — the whole job, so nothing invalid or unbuildable is ever written —
        then write and apply it under the job's lock."""
        try:
            spec, account = await self._validate(name, data)
        except JobFileError as exc:
            return fail(str(exc))
        reply, _ = await self._apply_file(name, nowait, pushed=(data, spec, account))
        return SUCCESS if reply.response == "redundant" else reply

    async def delete(self, name: str) -> Reply:
        async with self._locks.hold(name):
            if self.closing:
                return fail(SHUTTING_DOWN)
            job = self.jobs.get(name)
            path = self.path_of(name)
            if job is None and name not in self.invalid and not os.path.lexists(path):
                return fail(f'job "{name}" does not exist')
            if job is not None:
                await self._forget(job)
            try:
                self.directory.remove(name)
            except OSError as exc:
                return fail(f"cannot remove {path}: {exc.strerror}")
            self.invalid.pop(name, None)
            return SUCCESS

    async def reload(self, name: str, nowait: bool = False) -> Reply:
        reply, change = await self._apply_file(name, nowait)
        return _with_report(reply, [(name, reply, change)])

    async def reload_all(self) -> Reply:
        """Reload every job file (SIGHUP, the wire's `restart`): new, changed, removed and
        unchanged alike; their reading and parsing paced (`Turns`). The reply carries what
        happened to each job (docs/protocol.md, "The reload report")."""
        refusal = self._directory_refusal()
        if refusal is not None:
            return _with_report(fail(refusal), [])
        names = sorted(self.directory.names() | set(self.jobs) | set(self.invalid))
        outcomes: list[tuple[Reply, str]] = []
        applied = all_settled((self._apply_file(name, nowait=True) for name in names), at_once=FILES_AT_ONCE)
        for name, result in zip(names, await applied):
            if isinstance(result, Exception):  # a bug: that file's report says so, the others stand
                log.error("reload of %s failed", name, exc_info=result)
                result = (fail(f"internal error: {result}"), "invalid")
            outcomes.append(result)
        done = [f"{name} {change}" for name, (_, change) in zip(names, outcomes) if change not in ("unchanged", "missing")]
        log.info("reload: %s", ", ".join(done) if done else "nothing changed")
        problems = [reply.error for reply, _ in outcomes if reply.response == "fail" and reply.error]
        overall = fail("\n".join(problems)) if problems else SUCCESS
        return _with_report(overall, [(name, reply, change) for name, (reply, change) in zip(names, outcomes)])

    def reopen_logs(self) -> None:
        self.log_files.reopen_all()

    # --- dependencies, serving, notification sockets --------------------------------------------

    def conditions_of(self, name: str) -> frozenset[str] | None:
        """The conditions job `name` meets for its dependants; None when it is not loaded."""
        job = self.jobs.get(name)
        return None if job is None else job.conditions_met()

    def _hold(self, name: str) -> None:
        """An instance of job `name` waits for its dependencies: look at it again when they change."""
        self._held.add(name)

    def standing_changed(self, name: str) -> None:
        """Job `name` changed in a way its dependants or listeners may care about. Handled once per
        loop iteration, however many of its instances changed meanwhile."""
        self._changed.add(name)
        if self._settling is None:
            self._settling = asyncio.get_running_loop().call_soon(self._settle)

    def _settle(self) -> None:
        self._settling = None
        changed, self._changed = self._changed, set()
        for name in changed if self.listeners else ():
            job = self.jobs.get(name)
            if job is not None:
                self._announce_serving(job)
        for listener in self.listeners:
            listener.jobs_changed(changed)
        if self.closing:  # nothing new starts while every job is being stopped
            return
        for name in list(self._held):
            job = self.jobs.get(name)
            if job is None:
                self._held.discard(name)
            elif name in changed or any(d.job in changed for d in job.spec.depends_on):
                if not job.recheck_waiting():
                    self._held.discard(name)

    def _announce_serving(self, job: Job) -> None:
        why = job.not_serving()
        if why != job.announced_serving:
            job.announced_serving = why
            for listener in self.listeners:
                listener.job_serving_changed(job)

    def notify_directory(self) -> NotifyDirectory:
        """The directory of the instances' notify sockets, made when a job first needs one."""
        if self._notify is None:
            path = self.notify_dir
            if path is None:
                path = default_notify_path(self.state_dir)
                os.makedirs(os.path.dirname(path), mode=0o755 if os.geteuid() == 0 else 0o700, exist_ok=True)
            self._notify = NotifyDirectory(path)
        return self._notify


def _abandon(held: tuple[HeldSockets, Owners] | None, job: Job | None) -> None:
    """Sockets bound for a version of a file that is not applied after all: closed again."""
    if held is not None:
        held[0].abandon(job.sockets if job is not None else HeldSockets())


def _look_up(user: str) -> Account | None:
    """Whom `user` runs as, or None when there is no such user (blocking: on a worker thread)."""
    try:
        return lookup_account(user)
    except KeyError:
        return None


def _with_report(reply: Reply, outcomes: list[tuple[str, Reply, str]]) -> Reply:
    """`reply` carrying the reload report: what changed per job (an invalid file with its error)."""
    changes = []
    for name, outcome, change in outcomes:
        if change == "missing":
            continue
        entry = {"job": name, "change": change}
        if change == "invalid" and outcome.error:
            entry["error"] = outcome.error
        changes.append(entry)
    return Reply(reply.response, error=reply.error, value={"changes": changes})
