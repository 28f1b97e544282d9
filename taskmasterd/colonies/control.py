"""The control functions (start, stop, restart, status, kill, repair): the protocol's verbs, by Colonies.

They go through `verbs.dispatch` like taskmasterctl does, so a verb means the same whichever door
it came through. The protocol's own `restart` reloads every file; the Colonies `restart` of one
job is `restart-job`: its stop and start as one command (a `stop` meanwhile comes after it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from ..control.verbs import Request, dispatch

if TYPE_CHECKING:
    from ..lifecycle.supervisor import Supervisor

CONTROL_FUNCTIONS = ("start", "stop", "restart", "status", "kill", "repair")


async def control(supervisor: Supervisor, job: str, funcname: str) -> tuple[bool, list[str]]:
    """(successful, out or errors): `out` is the job's status as JSON text."""
    request = Request(job=job)
    verb = "restart-job" if funcname == "restart" else funcname
    reply = await dispatch(supervisor, verb, request)
    if not reply.ok:
        return False, [reply.error or f"{verb} failed"]
    status = await dispatch(supervisor, "status", request)
    if not status.ok:
        return False, [status.error or "status failed"]
    return True, [orjson.dumps(status.value).decode()]
