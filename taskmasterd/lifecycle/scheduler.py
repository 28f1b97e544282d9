"""The scheduler: runs scheduled jobs at their due times, through the supervisor's public verbs.

One wall-clock alarm (kernel/timerfd.py) is armed for the earliest due time across every
scheduled job, kept in a heap: a thousand jobs between their runs cost nothing, and no job has a
timer or a poll of its own. At a due time the scheduler starts every instance of the job
(`Supervisor.start_instances`) — a "run" (runs.py) — unless one is still going, when `overlap`
decides: "skip" it (logged), "queue" it (one at most), or "replace" the old run (stopped through
`Supervisor.stop`, the new one starting once it has ended). `timeout` stops a run still going
after it. When the instances change is learnt as a listener of the supervisor (`jobs_changed`), what
they do is read from `Supervisor.status`, never from the instances themselves, so the lifecycle may
change under it.

Due times are wall-clock times (cronsim for cron expressions: schedule_spec.next_due). A due time
the alarm reaches more than MISSED_AFTER late (the host slept, the clock jumped) was missed: it
runs once only with `catch_up`. At load, with `catch_up`, a due time that passed while the daemon
was down runs once, at once (last_runs.py keeps each job's last run in the state directory).
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any, Coroutine, Mapping, Protocol

from ..reply import REDUNDANT, Reply, fail
from ..jobfiles.schedule_spec import ScheduleSpec, host_timezone, next_due, zone_of
from ..kernel.timerfd import WallClockAlarm
from ..observe.events import Event
from .last_runs import LastRuns
from .runs import Run, RunBook, run_result

if TYPE_CHECKING:
    from .job import Job
    from ..jobfiles.jobfile import JobSpec
    from ..observe.events import EventBus


class Host(Protocol):
    """What the scheduler uses of the supervisor: its public verbs and its event bus."""

    state_dir: str
    events: EventBus
    jobs: Mapping[str, Job]
    closing: bool

    def background(self, coro: Coroutine[Any, Any, Any], what: str) -> Any: ...

    async def start_instances(self, name: str, nowait: bool = False, index: int | None = None,
                              reason: str = "start command") -> Reply: ...

    async def stop(self, name: str, nowait: bool = False, kill: bool = False, index: int | None = None) -> Reply: ...

    def status(self, name: str | None = None, index: int | None = None) -> Reply: ...

log = logging.getLogger("taskmasterd.schedule")
MISSED_AFTER = 10.0  # seconds late past which a due time counts as missed, not merely late
EARLY = 0.0005  # a due time this close is taken now rather than re-arming for a sliver


class _Timetable:
    """One scheduled job's settings and its next due time."""

    def __init__(self, name: str, settings: ScheduleSpec, zone: tzinfo) -> None:
        self.name = name
        self.settings = settings
        self.zone = zone
        self.nominal: float | None = None  # the next due time the schedule gives
        self.fire_at: float | None = None  # ... plus its jitter: when the run starts
        self.token = 0  # bumped whenever the due time changes: older heap entries are stale
        self.book = RunBook()

    def following(self, after: float) -> float | None:
        return next_due(self.settings.schedule, self.zone, after)


class Scheduler:
    """A JobListener of the supervisor: jobs loaded, changed, removed, and their instances
    changing state."""

    def __init__(self, supervisor: Host) -> None:
        self.supervisor = supervisor
        self.last_runs = LastRuns(supervisor.state_dir)
        self.host_zone = host_timezone()  # read once: /etc/localtime is a file
        self.jobs: dict[str, _Timetable] = {}
        self._heap: list[tuple[float, int, str, int]] = []  # (fire_at, sequence, job, token)
        self._sequence = itertools.count()
        self._alarm: WallClockAlarm | None = None
        self.closed = False

    # --- jobs coming, changing and going (JobListener) ------------------------------------------

    def job_loaded(self, job: Job) -> None:
        settings = job.spec.schedule_settings()
        if settings is None:
            return
        table = self.jobs[job.name] = _Timetable(job.name, settings, zone_of(settings, self.host_zone))
        now = time.time()
        kind = settings.schedule.kind
        if kind == "reboot":
            self._start_run(table, Run("@reboot", None))
            return
        last = self.last_runs.get(job.name)
        if settings.catch_up and last is not None:
            missed = table.following(last)
            if missed is not None and missed <= now:
                log.info("%s: the run due %s was missed while the daemon was down: catching up", job.name,
                         _when(missed, table.zone))
                self._start_run(table, Run("catch-up", missed))
        if kind == "every" and last is not None and last + settings.schedule.interval > now:
            self._plan(table, last + settings.schedule.interval)  # keeps its rhythm across a restart
        else:
            self._plan(table, table.following(now))

    def job_changed(self, job: Job, old: JobSpec) -> None:
        settings = job.spec.schedule_settings()
        table = self.jobs.get(job.name)
        if settings is None:
            if table is not None:
                self._drop(job.name)
            return
        if table is None:
            self.job_loaded(job)
        elif settings != table.settings:
            table.settings, table.zone = settings, zone_of(settings, self.host_zone)
            self._plan(table, table.following(time.time()))

    def job_removed(self, name: str) -> None:
        if name in self.jobs:
            self._drop(name)
            self.last_runs.forget(name)

    def job_serving_changed(self, job: Job) -> None:
        pass

    def jobs_changed(self, names: set[str]) -> None:
        """A scheduled job's instances changed state: its run may be over."""
        for name in names:
            table = self.jobs.get(name)
            if table is not None:
                self._look(table)

    def _drop(self, name: str) -> None:
        table = self.jobs.pop(name)
        table.token += 1
        if table.book.current is not None and table.book.current.timeout is not None:
            table.book.current.timeout.cancel()
        self._rearm()

    # --- the one alarm --------------------------------------------------------------------------

    def _plan(self, table: _Timetable, nominal: float | None) -> None:
        """Make `nominal` the job's next due time (None: none) and re-arm the alarm."""
        table.token += 1
        table.nominal = nominal
        table.fire_at = None if nominal is None else nominal + random.uniform(0.0, table.settings.jitter)
        if table.fire_at is not None:
            heapq.heappush(self._heap, (table.fire_at, next(self._sequence), table.name, table.token))
        self._rearm()

    def _rearm(self) -> None:
        heap = self._heap
        while heap and self._stale(heap[0]):
            heapq.heappop(heap)
        if len(heap) > 64 and len(heap) > 2 * len(self.jobs):  # many stale entries: compact
            self._heap = heap = [entry for entry in heap if not self._stale(entry)]
            heapq.heapify(heap)
        if self.closed:
            return
        if self._alarm is None:
            if not heap:
                return
            self._alarm = WallClockAlarm(asyncio.get_running_loop(), self._due)
        self._alarm.arm(heap[0][0] if heap else None)

    def _stale(self, entry: tuple[float, int, str, int]) -> bool:
        table = self.jobs.get(entry[2])
        return table is None or table.token != entry[3]

    def _due(self, clock_set: bool) -> None:
        """The alarm rang: the wall clock reached the earliest due time, or it was set."""
        now = time.time()
        if clock_set:
            self._after_clock_step(now)
        heap = self._heap
        while heap and heap[0][0] <= now + EARLY:
            entry = heapq.heappop(heap)
            if not self._stale(entry):
                self._fire(self.jobs[entry[2]], now)
        self._rearm()

    def _after_clock_step(self, now: float) -> None:
        """A clock set back leaves due times far ahead: take the schedule's next from now
        where that comes sooner (a clock set forward just makes due times pass)."""
        for table in self.jobs.values():
            if table.nominal is not None and table.nominal > now:
                sooner = table.following(now)
                if sooner is not None and sooner < table.nominal:
                    self._plan(table, sooner)

    def _fire(self, table: _Timetable, now: float) -> None:
        due = table.nominal
        assert due is not None and table.fire_at is not None
        late = now - table.fire_at
        following = table.following(due)
        if following is not None and following <= now:  # several passed at once: plan from now
            following = table.following(now)
        self._plan(table, following)
        if late > MISSED_AFTER:
            if not table.settings.catch_up:
                log.warning("%s: the run due %s was missed (the host slept or the clock jumped %.0fs); "
                            "catch_up is off", table.name, _when(due, table.zone), late)
                return
            log.info("%s: the run due %s was missed: catching up", table.name, _when(due, table.zone))
            self._start_run(table, Run("catch-up", due))
            return
        self._start_run(table, Run("schedule", due))

    # --- runs -----------------------------------------------------------------------------------

    def _start_run(self, table: _Timetable, run: Run) -> None:
        """Start `run` now, or apply `overlap` when one is still going."""
        book = table.book
        if self.supervisor.closing or self.closed:
            return
        if book.current is None:
            self._claim(table, run)
            self.supervisor.background(self._launch(table, run), f"run of {table.name}")
            return
        policy = table.settings.overlap
        if policy == "skip" or (policy == "queue" and book.queued is not None):
            why = "a run is still going" if policy == "skip" else "a run is still going and another already waits"
            log.warning("%s: run due %s skipped: %s (overlap %s)", table.name, _when(run.due, table.zone), why, policy)
            self._publish(table.name, "", "skipped", f"{run.cause}: {why} (overlap {policy})")
            book.skipped(run.due, run.cause, why)
            return
        book.queued = run
        self._publish(table.name, "", "queued", f"{run.cause}: waits for the run under way (overlap {policy})")
        if policy == "replace" and book.current.ending is None:
            book.current.ending = "replaced"
            log.info("%s: stopping the run under way, replaced by the one due %s", table.name, _when(run.due, table.zone))
            self.supervisor.background(self.supervisor.stop(table.name, nowait=True), f"replacing a run of {table.name}")

    def _claim(self, table: _Timetable, run: Run) -> None:
        """`run` is the job's run from now on (before its start is even asked for)."""
        table.book.current = run
        self.last_runs.record(table.name, run.due if run.due is not None else run.started)
        self._publish(table.name, "", "started", run.cause + ("" if run.due is None else f" (due {_when(run.due, table.zone)})"))

    async def _launch(self, table: _Timetable, run: Run, nowait: bool = True) -> Reply:
        reply = await self.supervisor.start_instances(table.name, nowait=nowait, reason=f"run: {run.cause}")
        run.launching = False
        if table.book.current is not run or self.jobs.get(table.name) is not table:  # removed meanwhile
            return reply
        if self.supervisor.jobs.get(table.name) is None:  # gone, or never there
            self._finish(table, run, "failed", reply.error or "could not start")
            return reply
        # A failed start may be retried (BACKOFF): the instances' states tell when the run is over.
        timeout = table.settings.timeout
        if timeout is not None:
            run.timeout = asyncio.get_running_loop().call_later(timeout, self._timed_out, table, run)
        self._look(table)  # it may have ended already
        return reply

    def _timed_out(self, table: _Timetable, run: Run) -> None:
        run.timeout = None
        if table.book.current is run and run.ending is None:
            run.ending = "timed out"
            log.warning("%s: the run is still going after its timeout of %gs: stopping it", table.name,
                        table.settings.timeout)
            self.supervisor.background(self.supervisor.stop(table.name, nowait=True), f"timeout of {table.name}")

    def _look(self, table: _Timetable) -> None:
        """Whether the run under way is over, from the job's status."""
        run = table.book.current
        if run is None or run.launching:
            return
        status = self.supervisor.status(table.name)
        if status.response != "status":
            return
        ended = run_result(status.value["jobs"][0]["instances"], self._exitcodes(table.name), run.ending)
        if ended is not None:
            self._finish(table, run, *ended)

    def _exitcodes(self, name: str) -> frozenset[int]:
        job = self.supervisor.jobs.get(name)
        return job.spec.exitcodes if job is not None else frozenset({0})

    def _finish(self, table: _Timetable, run: Run, result: str, detail: str) -> None:
        book = table.book
        book.current = None
        record = run.end(result, detail)
        book.finished(record)
        level = logging.INFO if result == "success" else logging.WARNING
        log.log(level, "%s: run %s after %.3fs (%s)", table.name, result, record["duration"], detail)
        self._publish(table.name, "started", result, f"after {record['duration']:.3f}s: {detail}")
        queued, book.queued = book.queued, None
        if queued is not None and result != "stopped":
            self._start_run(table, queued)

    def _publish(self, name: str, old: str, new: str, reason: str) -> None:
        self.supervisor.events.publish(Event("run", name, None, old, new, reason, time.time()))

    # --- verbs ----------------------------------------------------------------------------------

    def schedules(self, name: str) -> bool:
        return name in self.jobs

    async def run_now(self, name: str, nowait: bool, index: int | None) -> Reply:
        """`start` of a scheduled job: one run now, as `systemctl start` beside a timer."""
        table = self.jobs[name]
        if index is not None:
            return fail(f'job "{name}" is scheduled: a run starts every instance (start {name}, not {name}:{index})')
        if table.book.current is not None:
            return REDUNDANT
        run = Run("start command", None)
        self._claim(table, run)
        return await self._launch(table, run, nowait)

    async def repair(self, name: str, nowait: bool, index: int | None) -> Reply:
        """`repair` of a scheduled job: a run now when its last run failed, else nothing (its
        instances start with its runs only)."""
        last = self.jobs[name].book.history
        if self.jobs[name].book.current is not None or not last or last[-1]["result"] != "failed":
            return REDUNDANT
        return await self.run_now(name, nowait, index)

    def status_extra(self, entries: dict[str, dict]) -> None:
        for name in entries.keys() & self.jobs.keys():  # walks the smaller of the two
            entries[name]["schedule"] = self._document(self.jobs[name])

    @staticmethod
    def _document(table: _Timetable) -> dict:
        settings = table.settings
        return {"schedule": settings.schedule.text, "timezone": settings.timezone or "host",
                "overlap": settings.overlap, "next_run": None if table.fire_at is None else round(table.fire_at, 3),
                **table.book.document()}

    async def close(self) -> None:
        """No run starts from now on (shutdown); what is recorded reaches the disk."""
        self.closed = True
        if self._alarm is not None:
            self._alarm.close()
            self._alarm = None
        for table in self.jobs.values():
            if table.book.current is not None and table.book.current.timeout is not None:
                table.book.current.timeout.cancel()
        await self.last_runs.flush()


def _when(moment: float | None, zone: tzinfo) -> str:
    if moment is None:
        return "now"
    return datetime.fromtimestamp(moment, zone).isoformat(timespec="seconds")
