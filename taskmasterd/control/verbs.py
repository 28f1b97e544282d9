"""The one table of control verbs.

The control server, taskmasterctl (through the wire) and the Colonies control functions all reach
the supervisor through `dispatch`, so a verb means the same thing whichever door it came through.
A verb never raises for a caller's mistake: it answers a `Reply` whose `response` is one of the
protocol's response names.

`dispatch` also resolves job selectors (the extension of selection.py): a verb that acts on many
jobs runs its handler once per selected job or instance, all at once (`stop` and `kill`: a layer
of jobs at a time, dependants before what they depend on), and answers one reply.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Awaitable, Callable

from ..observe import counters
from . import selection
from .caveats import noting_kills, refuse_stale_version
from .request import Request
from ..jobfiles.names import job_name_error
from ..jobfiles.signames import signal_number
from ..reply import REDUNDANT, SUCCESS, Reply, fail
from ..tasks import all_settled

if TYPE_CHECKING:
    from ..lifecycle.supervisor import Supervisor

__all__ = ["REDUNDANT", "SUCCESS", "VERBS", "JobArg", "Reply", "Request", "Selects", "Verb", "dispatch", "fail"]

log = logging.getLogger("taskmasterd.verbs")


class JobArg(enum.Enum):
    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


class Selects(enum.Enum):
    """What the `job` field of a verb may name."""

    NAME = "name"  # one job name (the seed protocol)
    ONE = "one"  # one job or one instance: name or name:N
    MANY = "many"  # a selector: names, name:N and globs


Handler = Callable[["Supervisor", Request], "Awaitable[Reply] | Reply"]


@dataclass(frozen=True, slots=True)
class Verb:
    name: str
    job: JobArg
    needs_data: bool
    handler: Handler
    summary: str
    selects: Selects = Selects.NAME
    stops: bool = False  # on several jobs: dependants first (Supervisor.stop_in_order)
    # Answered from what the daemon holds, waiting for no job's work: the request goes before the
    # background batches until its reply is written (foreground.py), not only until dispatched.
    reads: bool = False


def _status(sup: Supervisor, request: Request) -> Reply | Awaitable[Reply]:
    reply = _plain_status(sup, request)
    if request.data is None:
        return reply
    from .statusview import detailed_status  # accounting, a job's detail (extension)

    return detailed_status(sup, request.data, reply)


def _plain_status(sup: Supervisor, request: Request) -> Reply:
    reply = sup.status(request.job)
    if request.job is None and reply.response == "status":
        unloadable = sup.directory.unloadable()  # files named like jobs that cannot be (`my job.tm.json`)
        if unloadable:
            reply.value["ignored"] = [{"file": name, "error": why} for name, why in unloadable]
    return reply if request.instance is None else selection.only_instance(reply, request.instance)


async def _start(sup: Supervisor, request: Request) -> Reply:
    return await sup.start(request.job, nowait=request.nowait, index=request.instance, deps=request.deps)


async def _stop(sup: Supervisor, request: Request) -> Reply:
    return await sup.stop(request.job, nowait=request.nowait, index=request.instance)


async def _repair(sup: Supervisor, request: Request) -> Reply:
    return await sup.repair(request.job, nowait=request.nowait, index=request.instance)


async def _restart_job(sup: Supervisor, request: Request) -> Reply:
    return await sup.restart(request.job, nowait=request.nowait, index=request.instance, rolling=request.rolling)


def _signal(sup: Supervisor, request: Request) -> Reply | Awaitable[Reply]:
    text = (request.data or b"").decode("utf-8", "replace").strip()
    number = signal_number(text)
    if number is None:
        return fail(f"unknown signal {text!r}")
    return sup.signal(request.job, number, index=request.instance)


def _logs(sup: Supervisor, request: Request) -> Awaitable[Reply]:
    from .logverb import logs

    return logs(sup, request.job, request.instance, request.data)


def _events(sup: Supervisor, request: Request) -> Reply:
    from ..observe.events import events_reply

    return events_reply(sup.events, request.data)


async def _reloaded(reply: Awaitable[Reply], request: Request) -> Reply:
    """The reload report (what changed per job) only for a client that asked for it with
    `data` = `{"report":true}`: a seed client gets the seed reply, bytes and all."""
    answer = await reply
    return answer if request.data is not None else answer.with_(value=None)


def _push(sup: Supervisor, request: Request) -> Reply | Awaitable[Reply]:
    refusal = sup.directory.refuses_change(request.job)
    return fail(refusal) if refusal else sup.push(request.job, request.data or b"", nowait=request.nowait)


def _delete(sup: Supervisor, request: Request) -> Reply | Awaitable[Reply]:
    refusal = sup.directory.refuses_change(request.job)
    return fail(refusal) if refusal else sup.delete(request.job)


async def _enable(sup: Supervisor, request: Request, enabled: bool) -> Reply:
    if sup.jobs.get(request.job or "") is None and request.job not in sup.invalid:
        return fail(f'job "{request.job}" does not exist')
    try:
        changed = await sup.enablement.set(request.job or "", enabled)
    except OSError as exc:
        return fail(f"cannot write {sup.enablement.path}: {exc.strerror or exc}")
    job = sup.jobs.get(request.job or "")
    if job is not None:
        job.watch_sockets()  # a disabled job is not started by a connection either
    return SUCCESS if changed else REDUNDANT


def _shutdown(sup: Supervisor, request: Request) -> Reply | Awaitable[Reply]:
    if sup.daemon is None:
        return fail("this supervisor is not a daemon of its own: it cannot shut down on request")
    return sup.daemon.shutdown()


_R, _O, _N = JobArg.REQUIRED, JobArg.OPTIONAL, JobArg.NONE
_ONE, _MANY = Selects.ONE, Selects.MANY
VERBS: dict[str, Verb] = {verb.name: verb for verb in (
    Verb("start", _R, False, refuse_stale_version(_start),
         "start every instance that is not running (with deps: the jobs it depends on first)", _MANY),
    Verb("stop", _R, False, noting_kills(_stop), "stop every instance gracefully", _MANY, stops=True),
    Verb("kill", _R, False, lambda s, r: s.kill(r.job, nowait=r.nowait, index=r.instance),
         "SIGKILL every instance's process group now", _MANY, stops=True),
    Verb("repair", _R, False, refuse_stale_version(_repair), "clear FATAL/BACKOFF and start what should run", _MANY),
    Verb("status", _O, False, _status, "report one job, or every job", _MANY, reads=True),
    Verb("pull", _R, False, lambda s, r: s.pull(r.job), "the job file as it is on disk"),
    Verb("push", _R, True, _push, "validate, write and apply a job file"),
    Verb("delete", _R, False, _delete, "stop the job, remove its file, forget it"),
    Verb("list", _N, False, lambda s, r: s.list(), "names of every job", reads=True),
    Verb("reload", _R, False, lambda s, r: _reloaded(s.reload(r.job, nowait=r.nowait), r),
         "re-read one job file and apply the difference"),
    # The seed protocol's name: it re-reads every job file (as SIGHUP does) and restarts nothing
    # but what a changed file asks for; `restart-job` restarts processes.
    Verb("restart", _N, False, lambda s, r: _reloaded(s.reload_all(), r),
         "re-read every job file, as SIGHUP does (restarts no process by itself)"),
    # Extensions (docs/protocol.md): a seed client never sends these.
    Verb("restart-job", _R, False, refuse_stale_version(_restart_job),
         "stop, then start every instance, as one command", _MANY),
    Verb("signal", _R, True, _signal, "send a signal to every running instance's process group", _MANY),
    Verb("logs", _O, False, _logs, "the last lines of an instance's output (or of the daemon's log), then follow", _ONE),
    Verb("events", _N, False, _events, "the last state changes, then follow"),
    Verb("shutdown", _N, False, _shutdown, "stop every job as SIGTERM does, reply, exit"),
    Verb("enable", _R, False, lambda s, r: _enable(s, r, True), "let the job autostart and be started by patterns", _MANY),
    Verb("disable", _R, False, lambda s, r: _enable(s, r, False),
         "keep the job from autostart and from `start all` (a start by name still starts it)", _MANY),
)}


_EVERY_FILE = frozenset({"status", "enable", "disable"})  # verbs whose patterns reach files that never loaded
_STARTS = frozenset({"start", "repair", "restart-job"})


async def dispatch(sup: Supervisor, verb: str, request: Request) -> Reply:
    """Run `verb`; an unknown verb or a bad job name is a `fail` (the wire layer maps unknown verbs
    to `invalid` before calling this). Every answer is counted for the metrics."""
    spec = VERBS.get(verb)
    reply = fail(f"unknown command {verb!r}") if spec is None else await _run(sup, spec, request)
    counters.count_request(verb if spec is not None else "unknown", reply.response)
    return reply


async def _run(sup: Supervisor, spec: Verb, request: Request) -> Reply:
    if spec.job is JobArg.REQUIRED and request.job is None:
        return fail(f"{spec.name} needs a job name")
    if spec.needs_data and request.data is None:
        return fail(f"{spec.name} needs data")
    if request.job is not None and spec.job is not JobArg.NONE:
        await sup.jobs_read()  # never "does not exist" for a file not read yet
        if spec.selects is not Selects.NAME and selection.is_selector(request.job):
            return await _run_selected(sup, spec, request)
        problem = job_name_error(request.job)
        if problem:
            return fail(problem)
    return await _call(spec, sup, request)


async def _call(spec: Verb, sup: Supervisor, request: Request) -> Reply:
    reply = spec.handler(sup, request)
    return reply if isinstance(reply, Reply) else await reply


async def _run_selected(sup: Supervisor, spec: Verb, request: Request) -> Reply:
    assert request.job is not None
    many = spec.selects is Selects.MANY
    items = selection.parse(request.job, many=many, globs=many)
    if isinstance(items, str):
        return fail(items)
    known = {name: job.spec.numprocs for name, job in sup.jobs.items()}
    never_loaded = {name for name in sup.invalid if name not in known}
    known.update((name, 0) for name in never_loaded)
    # A pattern reaches a file that never loaded only in `status`, which shows it INVALID; a
    # pattern starts no disabled job (`start all`), naming it does.
    skipped = frozenset() if spec.name in _EVERY_FILE else never_loaded
    if spec.name in _STARTS:
        skipped = skipped | sup.enablement.names
    targets, problems = selection.resolve(items, known, skipped)
    if not many:
        if problems:
            return fail(problems[0])
        return await _call(spec, sup, replace(request, job=targets[0].name, instance=targets[0].index))
    outcomes = await (_each_in_stop_order if spec.stops else _each)(sup, spec, request, targets)
    replies = [_internal_error(spec.name, outcome) if isinstance(outcome, Exception) else outcome
               for outcome in outcomes]
    if spec.name == "status":
        return selection.merge_status(replies, problems, targets)
    return selection.aggregate(targets, replies, problems)


async def _each(sup: Supervisor, spec: Verb, request: Request,
                targets: list[selection.Target]) -> list[Reply | Exception]:
    """The handler on every target at once."""
    return await all_settled(_call(spec, sup, replace(request, job=t.name, instance=t.index)) for t in targets)


async def _each_in_stop_order(sup: Supervisor, spec: Verb, request: Request,
                              targets: list[selection.Target]) -> list[Reply | Exception]:
    """The handler on every target, the targets of a job together, the jobs in stop order."""
    of_job: dict[str, list[selection.Target]] = {}
    for target in targets:
        of_job.setdefault(target.name, []).append(target)

    async def stop_job(name: str) -> list[Reply | Exception]:
        return await _each(sup, spec, request, of_job[name])

    done = await sup.stop_in_order(list(of_job), stop_job)
    answers = {target: outcome for name, outcomes in done.items() for target, outcome in zip(of_job[name], outcomes)}
    return [answers[target] for target in targets]


def _internal_error(verb: str, exc: Exception) -> Reply:
    log.error("%s failed", verb, exc_info=exc)
    return fail(f"internal error in {verb}: {exc}")
