"""What a verb answers: `Reply`, shared by the daemon, the codec and taskmasterctl.

A named tuple, not a dataclass: taskmasterctl imports this on its one-shot path, and dataclasses
(through inspect) would cost it more than a third of its start-up time.
"""
from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, AsyncIterator

_FIELDS = namedtuple("_FIELDS", ("response", "error", "value", "data", "job", "stream"),
                     defaults=(None, None, None, None, None))


class Reply(_FIELDS):
    """`response` is the wire name (success, fail, redundant, invalid, status, file, list, events).

    - error: the text of `fail`/`invalid`
    - value: the JSON-able document of `status`, `list`, `events`; on success/redundant/fail an
      optional extension document (per-target results, the reload report)
    - data, job: the bytes of a `file` reply and the job it is about
    - stream: set on the reply of a following verb (`logs`, `events` with follow): after this
      reply the connection carries each Reply the iterator yields, until it ends or the client
      closes the connection; the server calls `aclose()` on it when the client goes away.
    """

    __slots__ = ()
    response: str
    error: str | None
    value: Any
    data: bytes | None
    job: str | None
    stream: AsyncIterator[Reply] | None

    @property
    def ok(self) -> bool:
        return self.response != "fail"


SUCCESS = Reply("success")
REDUNDANT = Reply("redundant")


def fail(message: str) -> Reply:
    return Reply("fail", error=message)
