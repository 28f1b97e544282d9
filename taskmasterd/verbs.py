"""The one table of control verbs.

The TCP server, taskmasterctl (through the wire) and the Colonies control functions all reach the
supervisor through `dispatch`, so a verb means the same thing whichever door it came through.
A verb never raises for a caller's mistake: it answers a `Reply` whose `response` is one of the
protocol's response names.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

from .names import job_name_error

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
    # Set on the reply of a following verb (`logs` with follow, `events` with follow): after this
    # reply the connection carries each Reply the iterator yields, until it ends or the client
    # closes the connection; the server calls `aclose()` on it when the client goes away.
    stream: AsyncIterator[Reply] | None = None

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


Handler = Callable[["Supervisor", Request], "Awaitable[Reply] | Reply"]


@dataclass(frozen=True, slots=True)
class Verb:
    name: str
    job: JobArg
    needs_data: bool
    handler: Handler
    summary: str


_R, _O, _N = JobArg.REQUIRED, JobArg.OPTIONAL, JobArg.NONE
VERBS: dict[str, Verb] = {verb.name: verb for verb in (
    Verb("start", _R, False, lambda s, r: s.start(r.job, nowait=r.nowait), "start every instance that is not running"),
    Verb("stop", _R, False, lambda s, r: s.stop(r.job, nowait=r.nowait), "stop every instance gracefully"),
    Verb("kill", _R, False, lambda s, r: s.kill(r.job, nowait=r.nowait), "SIGKILL every instance's process group now"),
    Verb("repair", _R, False, lambda s, r: s.repair(r.job, nowait=r.nowait), "clear FATAL/BACKOFF and start what should run"),
    Verb("status", _O, False, lambda s, r: s.status(r.job), "report one job, or every job"),
    Verb("pull", _R, False, lambda s, r: s.pull(r.job), "the job file as it is on disk"),
    Verb("push", _R, True, lambda s, r: s.push(r.job, r.data or b"", nowait=r.nowait), "validate, write and apply a job file"),
    Verb("delete", _R, False, lambda s, r: s.delete(r.job), "stop the job, remove its file, forget it"),
    Verb("list", _N, False, lambda s, r: s.list(), "names of every job"),
    Verb("reload", _R, False, lambda s, r: s.reload(r.job, nowait=r.nowait), "re-read one job file and apply the difference"),
    Verb("restart", _N, False, lambda s, r: s.reload_all(), "reload every job file, as SIGHUP does"),
)}


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
    reply = spec.handler(sup, request)
    return reply if isinstance(reply, Reply) else await reply
