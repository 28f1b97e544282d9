"""The ColonyOS bridge: every job whose file allows it is also a Colonies executor (executor.md).

It listens to the supervisor (jobs loaded, changed, removed), owns one JobExecutor per such job,
and adds each executor's state to the job's status entry.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from .blueprint_spec import PREFIX
from .blueprints import BlueprintReconciler
from .capabilities import host_capabilities
from .client import ColoniesClient
from .executor import JobExecutor
from .jobsource import JobSources
from .keystore import KeyStore
from .registration import executor_identity
from .retry import Outage, Timing
from .settings import ColoniesSettings
from .shared import Shared
from ..tasks import all_settled

from ..lifecycle.supervisor import JobListener

if TYPE_CHECKING:
    from ..lifecycle.job import Job
    from ..jobfiles.jobfile import JobSpec
    from ..lifecycle.supervisor import Supervisor

log = logging.getLogger("taskmasterd.colonies")
SHUTDOWN_REASON = "taskmasterd is shutting down"


class ColoniesBridge(JobListener):
    def __init__(self, supervisor: Supervisor, settings: ColoniesSettings, timing: Timing | None = None) -> None:
        self.supervisor = supervisor
        timing = timing or Timing.with_keepalive(settings.keepalive)
        client = ColoniesClient(settings.host, settings.port, settings.tls, timeout=timing.request_timeout, max_idle=16)
        self._shared = Shared(
            client=client,
            settings=settings,
            keystore=KeyStore(os.path.join(supervisor.state_dir, "colonies")),
            outage=Outage(f"{settings.host}:{settings.port}"),
            timing=timing,
            capabilities=asyncio.ensure_future(_probe(supervisor)),
            supervisor=supervisor,
        )
        self.executors: dict[str, JobExecutor] = {}
        self._leaving: dict[str, asyncio.Task[None]] = {}  # job -> its old executor still closing
        self.blueprints: BlueprintReconciler | None = None

    def open(self) -> None:
        """Serve the jobs already loaded, then follow the supervisor's changes. Registration runs in
        the background: the daemon never waits for the server."""
        unsafe = self._shared.settings.contact_problem()
        if unsafe is not None:
            log.warning("%s", unsafe)
        self.supervisor.listeners.append(self)
        self.supervisor.status_extras.append(self.status_of)
        for job in list(self.supervisor.jobs.values()):
            self.job_loaded(job)
        if self._shared.settings.blueprints:
            self._open_blueprints()
        log.info("ColonyOS bridge to %s: %d job(s) served as executors in colony %s",
                 self._shared.client, len(self.executors), self._shared.settings.colony_name)

    def _open_blueprints(self) -> None:
        sources = self.supervisor.directory
        if not isinstance(sources, JobSources):  # jobsource.install() comes before the jobs load
            raise RuntimeError("colonies.blueprints needs the colony's job source installed before the jobs load")
        self.blueprints = BlueprintReconciler(self.supervisor, self._shared, sources.colony)
        if self.supervisor.daemon is not None:
            self.supervisor.daemon.sections["blueprints"] = self.blueprints.status

    async def close(self) -> None:
        """Daemon shutdown: stop every run and fail its process with a clear error; registrations
        and keys stay for the next start."""
        if self.blueprints is not None:
            await self.blueprints.close()
            if self.supervisor.daemon is not None:
                self.supervisor.daemon.sections.pop("blueprints", None)
        self.supervisor.listeners.remove(self)
        self.supervisor.status_extras.remove(self.status_of)
        executors, self.executors = list(self.executors.values()), {}
        for outcome in await all_settled(ex.close(SHUTDOWN_REASON, unregister=False) for ex in executors):
            if isinstance(outcome, Exception):
                log.error("closing a ColonyOS executor failed", exc_info=outcome)
        if self._leaving:
            await asyncio.wait(list(self._leaving.values()))
        self._shared.capabilities.cancel()
        await asyncio.wait([self._shared.capabilities])
        await self._shared.client.close()

    # --- JobListener ----------------------------------------------------------------------------

    def job_loaded(self, job: Job) -> None:
        if job.spec.colonies is not None:
            self.executors[job.name] = JobExecutor(job, self._shared, after=self._leaving.get(job.name))

    def job_changed(self, job: Job, old: JobSpec) -> None:
        executor, new = self.executors.get(job.name), job.spec.colonies
        settings = self._shared.settings
        if executor is not None and new is not None:
            if executor_identity(job.name, new, settings) == executor.identity:
                executor.update(job)
                return
        if executor is not None:
            # Off ColonyOS or renamed: the old executor goes. A new type or location is registered
            # again under the same name and key (or refused, by a server that re-registers no name).
            renamed = new is None or executor_identity(job.name, new, settings).name != executor.identity.name
            self._retire(job.name, "the job's ColonyOS settings changed", unregister=renamed)
        self.job_loaded(job)

    def job_removed(self, name: str) -> None:
        """Its executor is removed from the server; its key stays, so the job added again is the
        same executor (the server would refuse the name to a new key)."""
        if name in self.executors:
            self._retire(name, "the job was removed from taskmasterd", unregister=True)

    def job_serving_changed(self, job: Job) -> None:
        executor = self.executors.get(job.name)
        if executor is not None:
            executor.serving_changed()

    # --- status ---------------------------------------------------------------------------------

    def status_of(self, entries: dict[str, dict[str, Any]]) -> None:
        """The Colonies side of these jobs' status entries (one job's status costs one lookup, not
        a pass over every executor)."""
        for name, entry in entries.items():
            executor = self.executors.get(name)
            if executor is not None:
                entry["colonies"] = executor.status()
            if self.blueprints is not None and name.startswith(PREFIX):
                entry.update(self.blueprints.job_status(name))

    def _retire(self, name: str, reason: str, unregister: bool) -> None:
        executor = self.executors.pop(name)
        task = asyncio.create_task(executor.close(reason, unregister))
        self._leaving[name] = task

        def gone(done: asyncio.Task[None]) -> None:
            if self._leaving.get(name) is done:
                del self._leaving[name]

        task.add_done_callback(gone)


async def _probe(supervisor: Supervisor) -> dict[str, Any]:
    try:
        return await host_capabilities(supervisor.processes)
    except Exception as exc:  # capabilities are informative: never block registration on them
        log.warning("cannot probe the host's capabilities: %s", exc)
        return {}
