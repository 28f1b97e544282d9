"""What a verb is asked: one request as the wire codec (or a Colonies control function) made it.
A module of its own: the verb table, its wrappers (caveats.py) and the codec all speak it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Request:
    job: str | None = None
    data: bytes | None = None
    nowait: bool = False  # reply once the action is initiated, not when it has completed
    instance: int | None = None  # set by dispatch for a `name:N` target
    deps: bool = False  # `start`: start the jobs it depends on too
    rolling: bool = False  # `restart-job`: a rolling restart, whatever the job's file says
    inline: bool = False  # the reply's JSON documents as JSON, not base64 (protocol.encode_reply)
