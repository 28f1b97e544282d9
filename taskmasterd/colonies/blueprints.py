"""A fleet's jobs declared once in the colony: TaskmasterJob blueprints, reconciled by every daemon.

With `colonies.blueprints` on, each daemon
- makes sure the colony has the TaskmasterJob blueprint definition (blueprint_schema.py): it adds
  it with the colony owner key, or uses the one an operator added;
- is one reconciler executor of the definition's handler type (`<type>.<host>`). The server
  sends each blueprint change to ONE of them (a `reconcile` process for an added or changed
  blueprint, `cleanup` for a removed one, a kind-wide `reconcile` every minute), waking one
  assign long-poll of that type. So the daemon that gets a change wakes the others: it submits
  a `reconcile` to each other daemon's wake-up executor, whose type is its own
  (`<type>.wake.<host>`: the server wakes exactly that daemon's long-poll);
- reconciles: it reads every TaskmasterJob blueprint, and brings the jobs `colony.<name>`
  (jobsource.py) in line with those placed here (blueprint_spec.py) through the supervisor's
  own push (validated as a job file, applied as a changed file is: restart, rolling, in place)
  and delete; it never acts on a list it could not read, and keeps a job whose blueprint it
  cannot read as it is;
- writes each blueprint's status back (blueprint_status.py).
A pass is level-triggered and idempotent: one at a time, another one after it when asked
meanwhile; every trigger (a process, a wake-up, the resync every `resync_interval`, the start)
asks for one, and a process is closed once its pass is asked (so a burst of changes makes a few
passes, and a few rounds of wake-ups, not one per change). Duplicated or lost triggers change
nothing but timing.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import pwd
from typing import TYPE_CHECKING, Any

from ..reply import Reply
from .assignment import Assignment
from .blueprint_schema import CLEANUP, KIND, RECONCILE, RECONCILER_TYPE, definition, handler_of
from ..kernel.nss import passwd_entry
from .blueprint_spec import PREFIX, Blueprint, read_blueprint, user_refusal
from .blueprint_status import Report, StatusWriter
from .client import ColoniesError, func_spec, transient
from .jobsource import ColonyJobs
from .registration import APPROVED, Identity
from .retry import Backoff
from .service import ServiceExecutor
from .shared import Shared, cancel_and_wait

if TYPE_CHECKING:
    from ..lifecycle.supervisor import Supervisor

log = logging.getLogger("taskmasterd.colonies")
RECONCILER_KEY, WAKE_KEY = "_reconciler", "_reconciler.wake"  # key files: never a job's name
WAKE_WAIT = 60  # seconds a wake-up waits for a daemon that is away (the resync covers it)
YIELD_EVERY = 20  # blueprints read between two yields to the loop
WAKE_NAMES = 20  # changed blueprints named in one wake-up (informative: a pass reads them all)
WAKE_GATHER = 0.5  # seconds between two rounds of wake-ups: the changes heard meanwhile go in one


class BlueprintReconciler:
    def __init__(self, supervisor: Supervisor, shared: Shared, jobs: ColonyJobs) -> None:
        self._sup = supervisor
        self._shared = shared
        self._jobs = jobs
        settings = shared.settings
        self.host, self._location, self._colony = settings.hostname, settings.location, settings.colony_name
        self.state, self.error = "starting", None
        self._handler: tuple[str, str] | None = None  # the definition's (executor type, function)
        self._reconciler: ServiceExecutor | None = None
        self._wake: ServiceExecutor | None = None
        self._blueprints: dict[str, Blueprint] = {}  # the last list: name -> blueprint
        self._errors: dict[str, str] = {}  # job -> why its blueprint could not be applied here
        self._asked = self._done = 0  # passes asked for, and the last one a finished pass answered
        self._kick = asyncio.Event()
        self._finished = asyncio.Event()
        self._outcome: str | None = None  # the last pass's problem
        self._changed: set[str] = set()  # blueprints whose change the other daemons are to hear of
        self._waking: asyncio.Task[None] | None = None  # a round of wake-ups going out
        self._status = StatusWriter(shared.client, self._colony, self.host, shared.outage, shared.timing.status_interval,
                                    self._report, self._list, self._prvkey, self._sup.foreground)
        self._tasks = [asyncio.create_task(self._main()), asyncio.create_task(self._follow_jobs())]

    # --- what the bridge asks ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The `blueprints` part of status's `daemon` object."""
        executors = [e.status() for e in (self._reconciler, self._wake) if e is not None]
        return {"host": self.host, "state": self.state, "error": self.error, "executors": executors,
                "placed": sorted(bp.name for bp in self._blueprints.values() if bp.placed)}

    def job_status(self, job: str) -> dict[str, Any]:
        """What `status` shows of a job that comes from a blueprint."""
        entry = self._jobs.blueprint_of(job)
        if entry is None:
            return {}
        shown = {"name": entry.get("blueprint"), "generation": entry.get("generation")}
        if job in self._errors:
            shown["error"] = self._errors[job]
        return {"blueprint": shown}

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks, self._waking)
        await self._status.close()
        for executor in (self._reconciler, self._wake):
            if executor is not None:
                await executor.close()

    # --- life -------------------------------------------------------------------------------------

    async def _main(self) -> None:
        executortype, function = self._handler = await self._definition()
        self.state = "registering"
        settings = self._shared.settings
        remedy = (f"another daemon is (or was) host {self.host!r} of this colony: give this one another "
                  f"colonies.hostname, or remove that daemon's executors if it is gone for good")
        self._reconciler = ServiceExecutor(
            self._shared, "blueprints", RECONCILER_KEY, Identity(f"{executortype}.{self.host}", executortype, settings.location),
            tuple(dict.fromkeys((function, RECONCILE, CLEANUP))), self._serve_change, remedy)
        self._wake = ServiceExecutor(
            self._shared, "blueprints", WAKE_KEY,
            Identity(f"{executortype}.{self.host}.wake", self._wake_type(self.host), settings.location),
            (RECONCILE,), self._serve_wake, remedy)
        await self._reconciler.online.wait()
        self._tasks.append(asyncio.create_task(self._passes()))  # close() stops it with the others
        while True:  # the resync: whatever was heard or missed
            await self.reconciled()
            await asyncio.sleep(self._shared.timing.resync_interval)

    def _wake_type(self, host: str) -> str:
        assert self._handler is not None
        return f"{self._handler[0]}.wake.{host}"

    async def _list(self, prvkey: str) -> list[Any]:
        return await self._shared.client.get_blueprints(self._colony, prvkey, kind=KIND)

    def _prvkey(self) -> str | None:
        reconciler = self._reconciler
        return reconciler.key.prvkey if reconciler is not None and reconciler.online.is_set() and reconciler.key else None

    def _problem(self, text: str | None) -> None:
        if text is not None and text != self.error:
            log.error("blueprints: %s", text)
        self.error = text

    async def _definition(self) -> tuple[str, str]:
        """The colony's TaskmasterJob definition's handler, once there is one (added here with the
        colony owner key, by an operator otherwise)."""
        shared, colony_key = self._shared, self._shared.settings.colony_prvkey
        backoff = Backoff(shared.timing)
        self.state = "definition"
        while True:
            prvkey = colony_key or await self._stored_key()
            try:
                if prvkey is None:
                    raise LookupError(self._operators_part())
                handler = handler_of(await shared.client.get_blueprint_definitions(self._colony, prvkey))
                if handler is not None:
                    self._problem(None)
                    return handler
                if colony_key is None:
                    raise LookupError(f"colony {self._colony!r} has no {KIND} blueprint definition: "
                                      + self._operators_part())
                try:
                    await shared.client.add_blueprint_definition(definition(self._colony), colony_key)
                    log.info("blueprints: the %s blueprint definition is added to colony %s", KIND, self._colony)
                except ColoniesError:  # another daemon may have added it meanwhile: look again first
                    if handler_of(await shared.client.get_blueprint_definitions(self._colony, prvkey)) is None:
                        raise
                continue
            except LookupError as missing:
                self._problem(str(missing))
                delay = shared.timing.resync_interval
            except ColoniesError as exc:  # another daemon adding it at the same time is refused too
                if transient(exc):
                    shared.outage.failed(exc)
                else:
                    self._problem(f"the blueprint definitions could not be read or added: {exc.message}")
                delay = backoff.next_delay()
            await asyncio.sleep(delay)

    def _operators_part(self) -> str:
        keys = self._shared.keystore
        return (f"without the colony key, an operator adds the {KIND} blueprint definition (python3 -m "
                f"taskmasterd.colonies.blueprint_schema {self._colony} > d.json; colonies blueprint definition add "
                f"--spec d.json), registers and approves executors {RECONCILER_TYPE}.{self.host} (type "
                f"{RECONCILER_TYPE}, the definition's handler type) and {RECONCILER_TYPE}.{self.host}.wake (type "
                f"{RECONCILER_TYPE}.wake.{self.host}), and puts their keys in {keys.path(RECONCILER_KEY)} and "
                f"{keys.path(WAKE_KEY)}")

    async def _stored_key(self) -> str | None:
        stored = await asyncio.to_thread(self._shared.keystore.load, RECONCILER_KEY)
        return stored.prvkey if stored is not None else None

    # --- triggers -----------------------------------------------------------------------------------

    async def _serve_change(self, task: Assignment) -> tuple[bool, list[Any]]:
        """A process of the server's: a blueprint added, changed or removed (kwargs blueprintName),
        or all of them (every minute): the other daemons are woken for a change, and a pass asked."""
        kwargs = task.spec.get("kwargs") if isinstance(task.spec.get("kwargs"), dict) else {}
        name = kwargs.get("blueprintName")
        if isinstance(name, str) and name:
            self._wake_others(name)
        return await self._serve_wake(task)

    async def _serve_wake(self, task: Assignment) -> tuple[bool, list[Any]]:
        """A trigger is answered once a pass is asked: a hundred changes at once make the passes
        that run one after the other, not a hundred (each pass reads every blueprint)."""
        self._ask()
        return True, [f"{self.host}: a reconciliation is under way"]

    def _wake_others(self, name: str) -> None:
        """Wake every other daemon for the change at once; the changes heard while a round goes
        out, or within WAKE_GATHER after it, make one more round, not one each."""
        self._changed.add(name)
        if self._waking is None or self._waking.done():
            self._waking = asyncio.create_task(self._wake_rounds())

    async def _wake_rounds(self) -> None:
        while self._changed:
            names, self._changed = sorted(self._changed), set()
            prvkey = self._prvkey()
            if prvkey is None:
                return
            client = self._shared.client
            own = self._wake_type(self.host)
            prefix = own[: -len(self.host)]
            kwargs = {"kind": KIND, "blueprintName": names[0], "blueprintNames": names[:WAKE_NAMES]}
            try:
                for executor in await client.get_executors(self._colony, prvkey):
                    executortype = executor.get("executortype") if isinstance(executor, dict) else None
                    if (isinstance(executortype, str) and executortype.startswith(prefix) and executortype != own
                            and executor.get("state") == APPROVED):
                        spec = func_spec(RECONCILE, self._colony, executortype, kwargs=kwargs, maxwaittime=WAKE_WAIT)
                        await client.submit(spec, prvkey)
            except ColoniesError as exc:  # they find the change at their next resync
                log.warning("blueprints: the other daemons could not all be woken for %s: %s",
                            ", ".join(names), exc.message)
            await asyncio.sleep(WAKE_GATHER)  # the next round no sooner: a burst's changes gather meanwhile

    def _ask(self) -> None:
        self._asked += 1
        self._kick.set()

    async def reconciled(self) -> str | None:
        """Once a pass that began after this call has finished: its problem, or None."""
        self._ask()
        wanted = self._asked
        while self._done < wanted:
            finished = self._finished
            await finished.wait()
        return self._outcome

    async def _passes(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            answering = self._asked
            self.state = "reconciling"
            self._outcome = await self._pass()
            self.state = "idle"
            self._done = answering
            self._finished.set()
            self._finished = asyncio.Event()

    async def _follow_jobs(self) -> None:
        """A blueprint's job changed state or health: its status is written again (coalesced)."""
        subscription = self._sup.events.subscribe()
        try:
            while True:
                events, lost = await subscription.batch()
                jobs = {event.job for event in events if event.job.startswith(PREFIX)}
                if lost:
                    jobs = set(self._jobs.manifest)
                names = {entry.get("blueprint") for job in jobs if (entry := self._jobs.blueprint_of(job))}
                self._status.mark({name for name in names if isinstance(name, str)})
        finally:
            subscription.close()

    # --- a pass -------------------------------------------------------------------------------------

    async def _pass(self) -> str | None:
        prvkey = self._prvkey()
        if prvkey is None:
            return "the reconciler is not registered"
        try:
            docs = await self._list(prvkey)
        except ColoniesError as exc:
            if transient(exc):
                self._shared.outage.failed(exc)
            return f"the blueprints could not be read: {exc.message}"  # nothing is done on a guess
        self._shared.outage.recovered()
        found = []
        for index, doc in enumerate(docs):
            if (blueprint := read_blueprint(doc, self.host, self._location)) is not None:
                found.append(blueprint)
            if index % YIELD_EVERY == YIELD_EVERY - 1:
                await self._sup.foreground.turn()  # bounded work per wake-up, after the control requests
        before = dict(self._jobs.manifest)
        self._blueprints = {bp.name: bp for bp in found}
        self._status.seen(docs)
        placed = {bp.job: bp for bp in found if bp.placed}
        unreadable = {bp.job for bp in found if bp.problem is not None}  # keeps its job here as it is
        for job, blueprint in placed.items():
            await self._apply(job, blueprint)
            await self._sup.foreground.turn()  # a job as it should be costs a file read and no await
        for job in sorted((self._jobs.names() | set(self._jobs.manifest)) - placed.keys() - unreadable):
            await self._remove(job)
        if self._jobs.manifest != before:
            await asyncio.to_thread(self._jobs.save_manifest)
        gone = {entry.get("blueprint") for entry in before.values()} - self._blueprints.keys()
        self._status.mark([*self._blueprints, *(name for name in gone if isinstance(name, str))])
        return None

    async def _apply(self, job: str, blueprint: Blueprint) -> None:
        assert blueprint.data is not None
        sup = self._sup
        try:
            current = self._jobs.read(job)
        except ValueError:  # JobFileError: not a file we can read; written again
            current = None
        reply: Reply | None = None
        refusal = await asyncio.to_thread(self._user_refusal, blueprint) if current != blueprint.data else None
        if refusal is not None:
            reply = Reply("fail", error=f"{self._jobs.path_of(job)}: {refusal}")
        elif current != blueprint.data:
            reply = await sup.push(job, blueprint.data, nowait=True)
        elif job not in sup.jobs:  # the file is there, the job is not (a host problem since fixed?)
            reply = await sup.reload(job, nowait=True)
        if reply is not None and not reply.ok:
            if self._errors.get(job) != reply.error:
                log.error("blueprints: %s (generation %d) is not applied here: %s", blueprint.name, blueprint.generation,
                          (reply.error or "").replace("\n", "; "))
            self._errors[job] = reply.error or "not applied"
            return
        if reply is not None:
            log.info("blueprints: %s generation %d applied as job %s", blueprint.name, blueprint.generation, job)
        self._errors.pop(job, None)
        self._jobs.manifest[job] = {"blueprint": blueprint.name, "generation": blueprint.generation}

    def _user_refusal(self, blueprint: Blueprint) -> str | None:
        """Blocking (NSS): for a worker thread."""
        try:
            account = passwd_entry(str(blueprint.user)) if blueprint.user is not None else pwd.getpwuid(os.geteuid())
        except (KeyError, ValueError, OverflowError):
            account = None  # no such user: the job file's own check says so
        return user_refusal(blueprint.user, self._shared.settings.blueprint_users, account)

    async def _remove(self, job: str) -> None:
        if job in self._sup.jobs or job in self._sup.invalid or os.path.lexists(self._jobs.path_of(job)):
            reply = await self._sup.delete(job)
            if not reply.ok:
                log.error("blueprints: job %s could not be removed: %s", job, reply.error)
                return
            log.info("blueprints: job %s removed: its blueprint is gone or no longer placed here", job)
        self._jobs.manifest.pop(job, None)
        self._errors.pop(job, None)

    def _report(self, name: str) -> Report | None:
        """What this daemon reports of blueprint `name` (None: it is gone, nothing to write)."""
        blueprint = self._blueprints.get(name)
        if blueprint is None:
            return None
        if not blueprint.placed:
            return None, blueprint.problem
        job = blueprint.job
        applied = self._jobs.blueprint_of(job)
        entry: dict[str, Any] = {"job": job, "generation": applied.get("generation") if applied else None,
                                 "instances": 0, "states": {}, "error": self._errors.get(job)}
        # From the job itself, not its `status` document: a round reports every blueprint, twice.
        found = self._sup.jobs.get(job)
        if found is not None:
            instances = found.instances
            entry["instances"] = len(instances)
            entry["states"] = dict(collections.Counter(inst.state.value for inst in instances))
            health = collections.Counter(state.value for inst in instances if (state := inst.health.state) is not None)
            if health:
                entry["health"] = dict(health)
            entry["error"] = entry["error"] or found.error
        elif job in self._sup.invalid:
            entry["error"] = entry["error"] or self._sup.invalid[job]
        return entry, None
