"""The supervisor: the jobs it knows, their files on disk, and the async API behind every verb.

Every method that answers a verb returns a `verbs.Reply`; the control server, the signal
handlers, the jobs-directory watcher and the Colonies bridge all come through here.

Verbs on one job are serialized by that job's lock: a verb holds it while it acts (a state change
is synchronous), and waits for the outcome (RUNNING, stopped) after releasing it, so a `kill`
can overtake a slow `stop`. Only what ends a job's existence — `delete`, a reload that finds the
file gone — holds the lock until the job's processes are gone, so nothing can start an instance
of a job that is being forgotten. Other jobs are never held up.

Dependencies: a start of a job whose `depends_on` is not met leaves its instances WAITING (held
here); whenever a job's standing changes (an instance's state or health, a job loaded, changed or
removed), once per loop iteration, the held jobs that depend on it are looked at again and those
now met start. Several jobs stop in dependency layers: dependants first.
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
from ..jobfiles.cycles import cycle_problem, dependency_graph
from .instance import Instance
from .job import Job
from ..jobfiles.jobfile import JobFileError, JobSpec, Limits, host_errors, parse_job
from ..jobfiles.jobsdir import JobsDirectory
from ..processes.logcapture import DEFAULT_LOG_MODE, LogFiles
from ..health.notify_socket import NotifyDirectory, default_notify_path
from ..processes.orphans import ChildJournal, stop_leftovers
from ..processes.table import ProcessTable
from ..observe.events import EventBus
from ..reply import REDUNDANT, SUCCESS, Reply, fail
from ..processes.spawner import inherited_environment

if TYPE_CHECKING:
    from ..daemonhandle import DaemonHandle

log = logging.getLogger("taskmasterd")
SHUTTING_DOWN = "taskmasterd is shutting down"
T = TypeVar("T")


class JobListener(Protocol):
    """What a bridge (ColonyOS) hears about jobs coming, changing and going. A listener that
    inherits from it gets the no-op default of `job_serving_changed`."""

    def job_loaded(self, job: Job) -> None: ...

    def job_changed(self, job: Job, old: JobSpec) -> None: ...

    def job_removed(self, name: str) -> None: ...

    def job_serving_changed(self, job: Job) -> None:
        """`job.not_serving()` changed: whether the job can take work now, or why not."""


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
    def __init__(self, jobs_dir: Path | str, log_dir: Path | str, state_dir: Path | str,
                 environ: Mapping[str, str] | None = None, *, limits: Limits = Limits(),
                 log_mode: int = DEFAULT_LOG_MODE, adopt_orphans: bool = False, notify_dir: str | None = None):
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
        self.log_files = LogFiles(log_mode)
        self.processes = ProcessTable(ChildJournal(os.path.join(self.state_dir, "children.json"), self.run_id),
                                      adopt_orphans, self.run_id)
        self.listeners: list[JobListener] = []
        self.status_extras: list[Callable[[str], dict[str, Any]]] = []  # name -> extra status fields
        self._locks = _NameLocks()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher = None
        self.closing = False
        self.events = EventBus()  # every state change, for the `events` verb (Instance._enter publishes)
        self.daemon: DaemonHandle | None = None  # set by daemon.py: `shutdown`, and status's `daemon` object
        self.notify_dir = notify_dir  # None: a short directory of this daemon's own (default_notify_path)
        self._notify: NotifyDirectory | None = None
        self._held: set[Job] = set()  # jobs with instances WAITING for their dependencies
        self._changed: set[str] = set()  # jobs whose standing changed in this loop iteration
        self._settling: asyncio.Handle | None = None
        self._refusal: str | None = None  # why the jobs directory is not read now (logged once)

    # --- life cycle -----------------------------------------------------------------------------

    async def open(self, watch: bool = True) -> None:
        """Stop what a killed predecessor left, watch the directory, load every job file and start
        the autostart jobs; returns once every autostart spawn has been made. The loop serves
        other work (the control port answers, status shows what is loaded so far) meanwhile."""
        os.makedirs(self.jobs_dir, exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        journal = self.processes.journal
        assert journal is not None
        await stop_leftovers(journal.path)
        journal.open()
        self.processes.open(asyncio.get_running_loop())
        if watch:
            from ..jobfiles.watcher import DirectoryWatcher

            self._watcher = DirectoryWatcher(self.jobs_dir, self.directory.job_name, self._files_changed)
            self._watcher.start()
        for name in sorted(self.directory.names()):
            if self.closing:
                return
            await self._apply_file(name, nowait=True)
            await asyncio.sleep(0)  # one file per loop iteration: the port keeps answering
        await self.processes.queue_flushed()

    async def shutdown(self) -> None:
        """Stop every job, each with its own stoptime, dependants before what they depend on (the
        others in parallel), then anything else the daemon started (Colonies runs, escaped
        grandchildren); nothing it started is left."""
        self.closing = True
        self.processes.closing = True  # no spawn from now on; escapes are stopped once, at the end
        if self._watcher is not None:
            self._watcher.close()
        await self.stop_in_order(list(self.jobs), self._stop_for_shutdown)
        await self.processes.drain()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.processes.close()
        if self._notify is not None:
            self._notify.remove()
        log.info("every job stopped")

    async def _stop_for_shutdown(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is not None:
            job.stop_all()
            await job.wait_stopped()

    def background(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """A task the supervisor keeps (and cancels at shutdown); its failure is logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("%s failed", what, exc_info=task.exception())

        task.add_done_callback(done)
        return task

    # --- files ----------------------------------------------------------------------------------

    def path_of(self, name: str) -> str:
        return self.directory.path_of(name)

    def _validate(self, name: str, raw: bytes) -> JobSpec:
        path = self.path_of(name)
        spec = parse_job(name, raw, path, self.limits)
        problems = host_errors(spec, path)
        if problems:
            raise JobFileError(problems)
        self._refuse_cycle(spec)
        return spec

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
        """From the watcher: these files changed (None: the kernel lost track, rescan all)."""
        if self.closing:
            return
        if names is None:
            self.background(self.reload_all(), "rescan of the jobs directory")
            return
        for name in names:
            self.background(self._apply_file(name, nowait=True), f"reload of {name}")

    async def _apply_file(self, name: str, nowait: bool, pushed: tuple[bytes, JobSpec] | None = None,
                          ) -> tuple[Reply, str]:
        """Bring job `name` in line with its file (the `reload` verb), or with `pushed` (bytes
        already validated into a spec), which is written first. Returns the reply and what
        changed: added, removed, restarted, applied (in place), unchanged, invalid or missing."""
        async with self._locks.hold(name):
            if self.closing:
                return fail(SHUTTING_DOWN), "unchanged"
            refusal = self._directory_refusal()
            if refusal is not None:
                return fail(refusal), "unchanged"
            job = self.jobs.get(name)
            try:
                if pushed is not None:
                    self._refuse_cycle(pushed[1])  # again: other files may have changed meanwhile
                    # fsync, twice: seconds on a busy disk, so not on the loop (the job's lock is held)
                    await asyncio.to_thread(self.directory.write, name, pushed[0])
                    if self.closing:  # began meanwhile: the file is written, the next start loads it
                        return fail(SHUTTING_DOWN), "unchanged"
                    spec: JobSpec | None = pushed[1]
                else:
                    raw = self.directory.read(name)
                    spec = None if raw is None else self._validate(name, raw)
            except JobFileError as exc:
                return self._invalid_file(name, job, str(exc)), "invalid"
            except OSError as exc:
                return fail(f"cannot write {self.path_of(name)}: {exc.strerror}"), "invalid"
            self.invalid.pop(name, None)
            if spec is None:
                if job is None:
                    return fail(f"job {name!r} has no file {self.path_of(name)} and is not loaded"), "missing"
                await self._forget(job)
                return SUCCESS, "removed"
            if job is None:
                job = self.jobs[name] = Job(self, spec)
                log.info("loaded job %s from %s", name, self.path_of(name))
                for listener in self.listeners:
                    listener.job_loaded(job)
                starting = list(job.active) if spec.autostart and job.start_all("autostart") else []
                retiring: list = []
                change = "added"
            else:
                had_error, job.error = job.error, None
                if spec == job.spec:
                    return (SUCCESS if had_error else REDUNDANT), "unchanged"
                old = job.spec
                starting, retiring, restarted = job.apply(spec)
                change = "restarted" if restarted else "applied"  # applied in place
                log.info("reloaded job %s: %s", name, change)
                for listener in self.listeners:
                    listener.job_changed(job, old)
            self.standing_changed(name)  # its dependants may wait for it, or it for others
        if retiring and not nowait:
            await job.wait_gone(retiring)
        return await _settled_start(job, starting, nowait), change

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
        job.stop_all()
        await job.wait_stopped()
        job.discard()
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

    async def _act(self, name: str, index: int | None, act: Callable[[Instance], bool],
                   retired_too: bool = False) -> tuple[Job, list[Instance]] | Reply:
        """Under the job's lock, `act` on the instances of `instances_of`; the job and the ones it
        acted on, or the failure reply."""
        async with self._locks.hold(name):
            found = self.instances_of(name, index, retired_too)
            if isinstance(found, Reply):
                return found
            job, targets = found
            return job, [inst for inst in targets if act(inst)]

    async def start(self, name: str, nowait: bool = False, index: int | None = None) -> Reply:
        return await self._start_with(Instance.start, name, nowait, index)

    async def _start_with(self, act: Callable[[Instance], bool], name: str, nowait: bool,
                          index: int | None) -> Reply:
        """start and repair: `act` on the instances, answered once those it started settle."""
        outcome = await self._act(name, index, act)
        if isinstance(outcome, Reply):
            return outcome
        job, started = outcome
        return await _settled_start(job, started, nowait) if started else REDUNDANT

    async def stop(self, name: str, nowait: bool = False, kill: bool = False, index: int | None = None) -> Reply:
        outcome = await self._act(name, index, lambda inst: inst.stop(kill), retired_too=True)
        if isinstance(outcome, Reply):
            return outcome
        job, stopping = outcome
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
            results.update(zip(layer, await asyncio.gather(*(stop_one(name) for name in layer))))
        return results

    async def signal(self, name: str, sig: int, index: int | None = None) -> Reply:
        """`sig` to the process group of every running instance (or of instance `index`)."""
        outcome = await self._act(name, index, lambda inst: inst.signal_processes(sig))
        if isinstance(outcome, Reply):
            return outcome
        return SUCCESS if outcome[1] else REDUNDANT

    async def repair(self, name: str, nowait: bool = False, index: int | None = None) -> Reply:
        return await self._start_with(Instance.repair, name, nowait, index)

    def status(self, name: str | None = None, index: int | None = None) -> Reply:
        now = time.monotonic()
        if name is not None:
            job = self.jobs.get(name)
            if job is None:
                if name in self.invalid:
                    return Reply("status", value={"jobs": [self._invalid_status(name)]})
                return fail(f'job "{name}" does not exist')
            entry = self._job_status(job, now)
            if index is not None:
                if not 0 <= index < len(job.instances):
                    return fail(f'job "{name}" has no instance {index}')
                entry["instances"] = [entry["instances"][index]]
            return Reply("status", value={"jobs": [entry]})
        entries = [self._job_status(job, now) for job in self.jobs.values()]
        entries += [self._invalid_status(name) for name in self.invalid if name not in self.jobs]
        if self.daemon is not None:  # who answers (`version`, `pid`), and whether it reads its jobs dir
            document = {**self.daemon.document(), "jobs_dir_problem": self._refusal}
            return Reply("status", value={"jobs": entries, "daemon": document})
        return Reply("status", value={"jobs": entries})

    def _job_status(self, job: Job, now: float) -> dict:
        entry = job.status(now)
        for extra in self.status_extras:
            entry.update(extra(job.name))
        return entry

    def _invalid_status(self, name: str) -> dict:
        return {"name": name, "state": "INVALID", "instances": [], "error": self.invalid[name]}

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
            spec = self._validate(name, data)
        except JobFileError as exc:
            return fail(str(exc))
        reply, _ = await self._apply_file(name, nowait, pushed=(data, spec))
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
        """Reload every job file (SIGHUP, `restart`): new, changed, removed and unchanged alike.
        The reply carries what happened to each job (docs/protocol.md, "The reload report")."""
        refusal = self._directory_refusal()
        if refusal is not None:
            return _with_report(fail(refusal), [])
        names = sorted(self.directory.names() | set(self.jobs) | set(self.invalid))
        outcomes = await asyncio.gather(*(self._apply_file(name, nowait=True) for name in names))
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

    def track_waiting(self, job: Job) -> None:
        """An instance of `job` waits for its dependencies: look at it again when they change."""
        self._held.add(job)

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
        if self.closing:  # nothing new starts while every job is being stopped
            return
        for job in list(self._held):
            if self.jobs.get(job.name) is not job:
                self._held.discard(job)
            elif job.name in changed or any(d.job in changed for d in job.spec.depends_on):
                if not job.recheck_waiting():
                    self._held.discard(job)

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


async def _settled_start(job: Job, starting: list, nowait: bool) -> Reply:
    """Answer a request that started instances: at once with `nowait`, else once each is RUNNING
    or one failed to start."""
    if nowait or not starting:
        return SUCCESS
    failure = await job.wait_started(starting)
    return fail(failure) if failure else SUCCESS

