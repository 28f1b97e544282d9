"""What a verb answers: `Reply`, shared by the daemon, the codec and taskmasterctl.

A plain slotted class: taskmasterctl imports this on its one-shot path, where a dataclass
(dataclasses, inspect) or a named tuple (collections) would cost it more than all its own code.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, AsyncIterator

_FIELDS = ("response", "error", "value", "data", "job", "stream")


class Reply:
    """`response` is the wire name (success, fail, redundant, invalid, status, file, list, events).

    - error: the text of `fail`/`invalid`
    - value: the JSON-able document of `status`, `list`, `events`; on success/redundant/fail an
      optional extension document (per-target results, the reload report)
    - data, job: the bytes of a `file` reply and the job it is about
    - stream: set on the reply of a following verb (`logs`, `events` with follow): after this
      reply the connection carries each Reply the iterator yields, until it ends or the client
      closes the connection; the server calls `aclose()` on it when the client goes away.
    """

    __slots__ = _FIELDS

    def __init__(self, response: str, error: str | None = None, value: Any = None, data: bytes | None = None,
                 job: str | None = None, stream: AsyncIterator[Reply] | None = None) -> None:
        self.response, self.error, self.value, self.data, self.job, self.stream = response, error, value, data, job, stream

    @property
    def ok(self) -> bool:
        return self.response != "fail"

    def with_(self, **changes: Any) -> Reply:
        """A copy with some fields changed (replies are never changed in place)."""
        fields = {name: getattr(self, name) for name in _FIELDS}
        fields.update(changes)
        return Reply(**fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reply):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _FIELDS)

    __hash__ = None  # type: ignore[assignment]  # equal by value, and `value` may be a dict

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS[1:] if getattr(self, name) is not None)
        return f"Reply({self.response!r}{', ' if shown else ''}{shown})"


SUCCESS = Reply("success")
REDUNDANT = Reply("redundant")


def fail(message: str) -> Reply:
    return Reply("fail", error=message)
