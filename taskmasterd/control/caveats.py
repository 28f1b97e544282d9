"""What a start or stop must say besides its outcome (docs/protocol.md, "Caveats"):

- a job whose file on disk is invalid runs its last valid version; `start`, `restart-job` and
  `repair` of it fail with the file's error rather than run, silently, a version that is not
  the one on disk — unless the request says `{"force":true}`, and then the reply notes it;
- a `stop` that had to SIGKILL an instance after its stoptime notes which.

A note travels in the reply's `value` (`{"note": …}`), and only to a client that sent `data`
with its request (taskmasterctl does): a seed client's replies stay the seed bytes.
"""
from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Awaitable, Callable

from ..lifecycle.states import State
from ..observe.following import options_object
from ..reply import Reply, fail
from .request import Request

if TYPE_CHECKING:
    from ..lifecycle.supervisor import Supervisor

Handler = Callable[["Supervisor", "Request"], Awaitable[Reply]]


def _options(request: Request) -> dict:
    document = options_object(request.data)
    return {} if isinstance(document, str) else document


def with_note(reply: Reply, request: Request, note: str | None) -> Reply:
    if note is None or request.data is None:
        return reply
    return reply.with_(value={**(reply.value or {}), "note": note})


def refuse_stale_version(handler: Handler) -> Handler:
    """`handler` (a start) unless the job's file on disk is invalid and `force` was not asked."""
    async def run(sup: Supervisor, request: Request) -> Reply:
        job = sup.jobs.get(request.job or "")
        error = None if job is None else job.error
        if error is None:
            return await handler(sup, request)
        problem = "; ".join(line for line in error.splitlines() if line.strip())
        if not _options(request).get("force"):
            return fail(f"its file on disk is invalid, so it would run a version that is not the file's "
                        f"({problem}); fix the file, or force a start of the last valid version")
        reply = await handler(sup, request)
        return with_note(reply, request, f"started its last valid version: its file on disk is invalid ({problem})")
    return run


def noting_kills(handler: Handler) -> Handler:
    """`handler` (a stop), its reply noting the instances it had to SIGKILL after their stoptime."""
    async def run(sup: Supervisor, request: Request) -> Reply:
        began = time.time()
        reply = await handler(sup, request)
        if reply.response != "success" or request.nowait or request.data is None:
            return reply
        found = sup.instances_of(request.job or "", request.instance, retired_too=True)
        if isinstance(found, Reply):
            return reply
        job, instances = found
        if job.spec.stopsignal == signal.SIGKILL:
            return reply
        killed = [inst.label for inst in instances
                  if inst.state is State.STOPPED and inst.signal == signal.SIGKILL and inst.since >= began]
        note = (f"killed with SIGKILL: {', '.join(killed)} did not stop within its stoptime of "
                f"{job.spec.stoptime:g}s") if killed else None
        return with_note(reply, request, note)
    return run
