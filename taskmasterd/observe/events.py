"""The event bus: every state change of every instance, as it happens, for `events` followers.

`kind` says what changed: "state" for the instance state machine (published by Instance._enter),
"health" for its health verdict (starting, healthy, unhealthy; by Instance.health_changed). The bus keeps the
last HISTORY events for a late `events` and gives each follower a bounded queue (fanout.py).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .fanout import Fanout
from ..health.state import Health
from .following import FollowOptions, parse_options, recent_then_stream
from ..reply import Reply, fail
from ..lifecycle.states import State

HISTORY = 1000  # events kept for `events` without follow, and for the start of a follow
QUEUE = 1000  # events a follower may be behind before it loses the oldest (~200 KB at most)


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # "state" or "health"
    job: str
    instance: int | None
    old: str
    new: str
    reason: str
    time: float  # Unix time

    def document(self) -> dict:
        return {"kind": self.kind, "job": self.job, "instance": self.instance, "old": self.old,
                "new": self.new, "reason": self.reason, "time": self.time}


class EventBus:
    def __init__(self) -> None:
        self.history: deque[Event] = deque(maxlen=HISTORY)
        self._fanout: Fanout[Event] = Fanout(QUEUE)

    def publish(self, event: Event) -> None:
        self.history.append(event)
        self._fanout.publish(event)

    def publish_state(self, job: str, index: int, old: State, new: State, reason: str, when: float) -> None:
        self.publish(Event("state", job, index, old.value, new.value, reason, when))

    def publish_health(self, job: str, index: int, old: Health, new: Health, reason: str, when: float) -> None:
        self.publish(Event("health", job, index, old.value, new.value, reason, when))

    def follow(self, options: FollowOptions) -> Reply:
        """The last `options.last` events, and with `follow` a stream of every later one."""
        return recent_then_stream(self._fanout, self.history, options, events_document)


def events_document(events: list[Event], lost: int) -> Reply:
    return Reply("events", value={"events": [event.document() for event in events], "lost": lost})


def events_reply(bus: EventBus, data: bytes | None) -> Reply:
    options = parse_options(data)
    return fail(options) if isinstance(options, str) else bus.follow(options)
