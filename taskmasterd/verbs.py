"""The one table of control verbs.

The TCP server, taskmasterctl (through the wire) and the Colonies control functions all reach the
supervisor through `dispatch`, so a verb means the same thing whichever door it came through.
A verb never raises for a caller's mistake: it answers a `Reply` whose `response` is one of the
protocol's response names.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .jobfile import job_name_error

if TYPE_CHECKING:
    from .supervisor import Supervisor


@dataclass(frozen=True, slots=True)
class Reply:
    """What a verb answers; `response` is the wire name (success, fail, redundant, status, file, list)."""

    response: str
    error: str | None = None
    value: Any = None  # JSON-able document of `status` and `list`
    data: bytes | None = None  # the file bytes of `file`
    job: str | None = None  # the job a `file` reply is about

    @property
    def ok(self) -> bool:
        return self.response != "fail"


SUCCESS = Reply("success")
REDUNDANT = Reply("redundant")


def fail(message: str) -> Reply:
    return Reply("fail", error=message)


class JobArg(enum.Enum):
    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True, slots=True)
class Request:
    job: str | None = None
    data: bytes | None = None
    nowait: bool = False  # reply once the action is initiated, not when it has completed


Handler = Callable[["Supervisor", Request], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Verb:
    name: str
    job: JobArg
    needs_data: bool
    handler: Handler
    summary: str


def _verb(name: str, job: JobArg, summary: str, needs_data: bool = False) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        VERBS[name] = Verb(name, job, needs_data, handler, summary)
        return handler

    return register


VERBS: dict[str, Verb] = {}


@_verb("start", JobArg.REQUIRED, "start every instance that is not running")
async def _start(sup: Supervisor, req: Request) -> Reply:
    return await sup.start(req.job, nowait=req.nowait)


@_verb("stop", JobArg.REQUIRED, "stop every instance gracefully")
async def _stop(sup: Supervisor, req: Request) -> Reply:
    return await sup.stop(req.job, nowait=req.nowait)


@_verb("kill", JobArg.REQUIRED, "SIGKILL every instance's process group now")
async def _kill(sup: Supervisor, req: Request) -> Reply:
    return await sup.kill(req.job, nowait=req.nowait)


@_verb("repair", JobArg.REQUIRED, "clear FATAL/BACKOFF and start what should run")
async def _repair(sup: Supervisor, req: Request) -> Reply:
    return await sup.repair(req.job, nowait=req.nowait)


@_verb("status", JobArg.OPTIONAL, "report one job, or every job")
async def _status(sup: Supervisor, req: Request) -> Reply:
    return sup.status(req.job)


@_verb("pull", JobArg.REQUIRED, "the job file as it is on disk")
async def _pull(sup: Supervisor, req: Request) -> Reply:
    return sup.pull(req.job)


@_verb("push", JobArg.REQUIRED, "validate, write and apply a job file", needs_data=True)
async def _push(sup: Supervisor, req: Request) -> Reply:
    return await sup.push(req.job, req.data or b"", nowait=req.nowait)


@_verb("delete", JobArg.REQUIRED, "stop the job, remove its file, forget it")
async def _delete(sup: Supervisor, req: Request) -> Reply:
    return await sup.delete(req.job)


@_verb("list", JobArg.NONE, "names of every job")
async def _list(sup: Supervisor, req: Request) -> Reply:
    return sup.list()


@_verb("reload", JobArg.REQUIRED, "re-read one job file and apply the difference")
async def _reload(sup: Supervisor, req: Request) -> Reply:
    return await sup.reload(req.job, nowait=req.nowait)


@_verb("restart", JobArg.NONE, "reload every job file, as SIGHUP does")
async def _restart(sup: Supervisor, req: Request) -> Reply:
    return await sup.reload_all()


async def dispatch(sup: Supervisor, verb: str, request: Request) -> Reply:
    """Run `verb`; an unknown verb or a bad job name is a `fail` (the wire layer maps unknown verbs
    to `invalid` before calling this)."""
    spec = VERBS.get(verb)
    if spec is None:
        return fail(f"unknown command {verb!r}")
    if spec.job is JobArg.REQUIRED and request.job is None:
        return fail(f"{verb} needs a job name")
    if spec.job is not JobArg.NONE and request.job is not None:
        problem = job_name_error(request.job)
        if problem:
            return fail(problem)
    if spec.needs_data and request.data is None:
        return fail(f"{verb} needs data")
    return await spec.handler(sup, request)
