"""The supervisor: the jobs it knows, their files on disk, and the async API behind every verb.

Every method that answers a verb returns a `verbs.Reply`; the TCP server, the signal handlers,
the jobs-directory watcher and the Colonies bridge all come through here.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol

from .events import EventBus
from .instance import Instance
from .job import Job
from .jobfile import JobFileError, JobSpec, host_errors, parse_job
from .logcapture import LogFiles
from .names import SUFFIX, job_name_from_filename
from .orphans import ChildrenRegistry, stop_leftovers
from .spawner import inherited_environment
from .reply import REDUNDANT, SUCCESS, Reply, fail

if TYPE_CHECKING:
    from .daemonhandle import DaemonHandle

log = logging.getLogger("taskmasterd")


class JobListener(Protocol):
    """What a bridge (ColonyOS) hears about jobs coming, changing and going."""

    def job_loaded(self, job: Job) -> None: ...

    def job_changed(self, job: Job, old: JobSpec) -> None: ...

    def job_removed(self, name: str) -> None: ...


class Supervisor:
    def __init__(self, jobs_dir: Path | str, log_dir: Path | str, state_dir: Path | str,
                 environ: Mapping[str, str] | None = None):
        self.jobs_dir = os.path.abspath(jobs_dir)
        self.log_dir = os.path.abspath(log_dir)
        self.state_dir = os.path.abspath(state_dir)
        self.base_environment = inherited_environment(os.environ if environ is None else environ)
        self.jobs: dict[str, Job] = {}
        self.invalid: dict[str, str] = {}  # files that never loaded: name -> error
        self.log_files = LogFiles()
        self.children = ChildrenRegistry(os.path.join(self.state_dir, "children.json"))
        self.listeners: list[JobListener] = []
        self.status_extras: list[Callable[[str], dict[str, Any]]] = []  # name -> extra status fields
        self._locks: dict[str, asyncio.Lock] = {}
        self._watcher = None
        self.closing = False
        self.events = EventBus()  # operator's hook: every state change, for `events` (Instance._enter)
        self.daemon: DaemonHandle | None = None  # operator's hook: set by daemon.py (`shutdown`, status's `daemon`)

    # --- life cycle -----------------------------------------------------------------------------

    async def open(self, watch: bool = True) -> None:
        """Load every job file, start the autostart jobs, and watch the directory."""
        for path in (self.jobs_dir, self.log_dir, self.state_dir):
            os.makedirs(path, exist_ok=True)
        await stop_leftovers(self.children.path)
        for name in sorted(self._names_on_disk()):
            await self._apply_file(name, nowait=True)
        self.children.flush()
        if watch:
            from .watcher import DirectoryWatcher

            self._watcher = DirectoryWatcher(self.jobs_dir, self._files_changed)
            self._watcher.start()

    async def shutdown(self) -> None:
        """Stop every job in parallel, each with its own stoptime."""
        self.closing = True
        if self._watcher is not None:
            self._watcher.close()
        for job in self.jobs.values():
            job.stop_all()
        await asyncio.gather(*(job.wait_stopped() for job in self.jobs.values()))
        self.children.flush()
        log.info("every job stopped")

    # --- files ----------------------------------------------------------------------------------

    def path_of(self, name: str) -> str:
        return os.path.join(self.jobs_dir, name + SUFFIX)

    def _names_on_disk(self) -> set[str]:
        try:
            return {n for n in map(job_name_from_filename, os.listdir(self.jobs_dir)) if n}
        except FileNotFoundError:
            return set()

    def _read(self, name: str) -> JobSpec | None:
        """The spec in `name`'s file; None when there is no file; JobFileError when invalid."""
        path = self.path_of(name)
        try:
            with open(path, "rb") as src:
                raw = src.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise JobFileError([f"{path}: cannot read: {exc.strerror}"]) from None
        return self._validate(name, raw)

    def _validate(self, name: str, raw: bytes) -> JobSpec:
        path = self.path_of(name)
        spec = parse_job(name, raw, path)
        problems = host_errors(spec, path)
        if problems:
            raise JobFileError(problems)
        return spec

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _files_changed(self, names: Iterable[str] | None) -> None:
        """From the watcher: these files changed (None: the kernel lost track, rescan all)."""
        if self.closing:
            return
        if names is None:
            asyncio.get_running_loop().create_task(self.reload_all())
            return
        for name in names:
            asyncio.get_running_loop().create_task(self._apply_file(name, nowait=True))

    async def _apply_file(self, name: str, nowait: bool) -> Reply:
        """Bring job `name` in line with its file (the `reload` verb)."""
        async with self._lock(name):
            job = self.jobs.get(name)
            try:
                spec = self._read(name)
            except JobFileError as exc:
                message = str(exc)
                log.error("%s", message.replace("\n", "; "))
                if job is not None:
                    job.error = message
                    log.error("%s keeps running its last valid version", name)
                else:
                    self.invalid[name] = message
                return fail(message)
            self.invalid.pop(name, None)
            if spec is None:
                if job is None:
                    return fail(f"job {name!r} has no file {self.path_of(name)} and is not loaded")
                await self._forget(job)
                return SUCCESS
            if job is None:
                job = self.jobs[name] = Job(self, spec)
                log.info("loaded job %s from %s", name, self.path_of(name))
                for listener in self.listeners:
                    listener.job_loaded(job)
                if spec.autostart:
                    job.start_all("autostart")
                    return await _settled_start(job, nowait)
                return SUCCESS
            had_error, job.error = job.error, None
            if spec == job.spec:
                return SUCCESS if had_error else REDUNDANT
            old = job.spec
            restarting = job.apply(spec)
            log.info("reloaded job %s (%d instance(s) restarting)", name, len(restarting))
            for listener in self.listeners:
                listener.job_changed(job, old)
            return await _settled_start(job, nowait) if restarting else SUCCESS

    async def _forget(self, job: Job) -> None:
        job.stop_all()
        await job.wait_stopped()
        for inst in job.instances:
            inst.discard()
        if self.jobs.get(job.name) is job:
            del self.jobs[job.name]
        log.info("forgot job %s", job.name)
        for listener in self.listeners:
            listener.job_removed(job.name)

    # --- verbs ----------------------------------------------------------------------------------

    def _job(self, name: str) -> Job | Reply:
        job = self.jobs.get(name)
        if job is None:
            if name in self.invalid:  # operator's hook: the same words in list, status and start
                return fail(f'job "{name}" is not loaded: its file is invalid: {self.invalid[name]}')
            return fail(f'job "{name}" does not exist')
        return job

    def instances_of(self, name: str, index: int | None) -> tuple[Job, list[Instance]] | Reply:
        """Operator's hook: the job and the instances a verb acts on — all, or only `index` (name:N)."""
        job = self._job(name)
        if isinstance(job, Reply):
            return job
        if index is None:
            return job, job.instances
        if index >= len(job.instances):
            return fail(f'job "{name}" has no instance {index}')
        return job, [job.instances[index]]

    async def start(self, name: str, nowait: bool = False, index: int | None = None) -> Reply:
        found = self.instances_of(name, index)
        if isinstance(found, Reply):
            return found
        job, instances = found
        if not any([inst.start() for inst in instances]):
            return REDUNDANT
        return await _settled_start(job, nowait, instances)

    async def stop(self, name: str, nowait: bool = False, kill: bool = False, index: int | None = None) -> Reply:
        found = self.instances_of(name, index)
        if isinstance(found, Reply):
            return found
        job, instances = found
        if not any([inst.stop(kill) for inst in instances]):
            return REDUNDANT
        if not nowait:
            await job.wait_stopped(instances)
        return SUCCESS

    async def kill(self, name: str, nowait: bool = False, index: int | None = None) -> Reply:
        return await self.stop(name, nowait, kill=True, index=index)

    async def repair(self, name: str, nowait: bool = False, index: int | None = None) -> Reply:
        found = self.instances_of(name, index)
        if isinstance(found, Reply):
            return found
        job, instances = found
        if not any([inst.repair() for inst in instances]):
            return REDUNDANT
        return await _settled_start(job, nowait, instances)

    def signal(self, name: str, signum: int, index: int | None = None) -> Reply:
        """Operator's hook: `signum` to the process group of every running instance."""
        found = self.instances_of(name, index)
        if isinstance(found, Reply):
            return found
        return SUCCESS if any([inst.send_signal(signum) for inst in found[1]]) else REDUNDANT

    def status(self, name: str | None = None) -> Reply:
        now = time.monotonic()
        if name is not None:
            job = self._job(name)
            if isinstance(job, Reply):
                if name in self.invalid:
                    return Reply("status", value={"jobs": [self._invalid_status(name)]})
                return job
            return Reply("status", value={"jobs": [self._job_status(job, now)]})
        entries = [self._job_status(job, now) for job in self.jobs.values()]
        entries += [self._invalid_status(name) for name in self.invalid if name not in self.jobs]
        if self.daemon is not None:  # operator's hook: who answers, for `version` and `pid`
            return Reply("status", value={"jobs": entries, "daemon": self.daemon.document()})
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
        entries += [{"name": name, "state": "INVALID"} for name in self.invalid if name not in self.jobs]  # operator's hook
        return Reply("list", value={"jobs": entries})

    def pull(self, name: str) -> Reply:
        try:
            with open(self.path_of(name), "rb") as src:
                return Reply("file", job=name, data=src.read())
        except FileNotFoundError:
            return fail(f'job "{name}" has no file')
        except OSError as exc:
            return fail(f"cannot read {self.path_of(name)}: {exc.strerror}")

    async def push(self, name: str, data: bytes, nowait: bool = False) -> Reply:
        try:
            self._validate(name, data)
        except JobFileError as exc:
            return fail(str(exc))
        try:
            write_atomically(self.path_of(name), data)
        except OSError as exc:
            return fail(f"cannot write {self.path_of(name)}: {exc.strerror}")
        reply = await self._apply_file(name, nowait)
        return SUCCESS if reply.response == "redundant" else reply

    async def delete(self, name: str) -> Reply:
        async with self._lock(name):
            job = self.jobs.get(name)
            path = self.path_of(name)
            if job is None and not os.path.exists(path):
                return fail(f'job "{name}" does not exist')
            if job is not None:
                await self._forget(job)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                return fail(f"cannot remove {path}: {exc.strerror}")
            self.invalid.pop(name, None)
            return SUCCESS

    async def reload(self, name: str, nowait: bool = False) -> Reply:
        return await self._apply_file(name, nowait)

    async def reload_all(self) -> Reply:
        """Reload every job file (SIGHUP, `restart`): new, changed, removed and unchanged alike."""
        names = sorted(self._names_on_disk() | set(self.jobs) | set(self.invalid))
        replies = await asyncio.gather(*(self._apply_file(name, nowait=True) for name in names))
        problems = [r.error for r in replies if r.response == "fail" and r.error]
        return fail("\n".join(problems)) if problems else SUCCESS

    def reopen_logs(self) -> None:
        self.log_files.reopen_all()


async def _settled_start(job: Job, nowait: bool, instances: list[Instance] | None = None) -> Reply:
    """Answer a request that started instances: at once with `nowait`, else once each is RUNNING
    or one failed to start."""
    if nowait:
        return SUCCESS
    failure = await job.wait_started(instances)
    return fail(failure) if failure else SUCCESS


def write_atomically(path: str, data: bytes) -> None:
    """Temp file in the same directory (hidden, so the watcher ignores it), fsync, rename, fsync dir."""
    directory, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
