"""The event bus: every state change of every instance, as it happens, for `events` followers.

`kind` says what changed: "state" for the instance state machine, "health" for its health verdict
(starting, healthy, unhealthy) — both published by the instance, with the id of the spawn they are
about — and "run" for a scheduled job's runs (started, queued, skipped, and each result; by
lifecycle/scheduler.py). The bus keeps the last HISTORY events for a late `events` and gives each
follower a bounded queue (fanout.py). Inside the daemon, what must act on instances changing (the
scheduler, container mode's exit watch) listens to the supervisor instead (`JobListener.jobs_changed`,
once per loop iteration).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .fanout import Fanout, Subscription
from .following import FollowOptions, parse_options, recent_then_stream
from ..reply import Reply, fail

HISTORY = 1000  # events kept for `events` without follow, and for the start of a follow
QUEUE = 1000  # events a follower may be behind before it loses the oldest (~200 KB at most)


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # "state", "health" or "run"
    job: str
    instance: int | None
    old: str
    new: str
    reason: str
    time: float  # Unix time
    spawn: int | None = None  # the spawn (Child.spawn_id) it is about; None: no process yet or any more

    def document(self) -> dict:
        return {"kind": self.kind, "job": self.job, "instance": self.instance, "old": self.old,
                "new": self.new, "reason": self.reason, "time": self.time, "spawn": self.spawn}


class EventBus:
    def __init__(self) -> None:
        self.history: deque[Event] = deque(maxlen=HISTORY)
        self._fanout: Fanout[Event] = Fanout(QUEUE)

    def publish(self, event: Event) -> None:
        self.history.append(event)
        self._fanout.publish(event)

    def subscribe(self) -> Subscription[Event]:
        """Every later event, in a bounded queue of its own (the ColonyOS blueprint status follows it)."""
        return self._fanout.subscribe()

    def follow(self, options: FollowOptions) -> Reply:
        """The last `options.last` events, and with `follow` a stream of every later one."""
        return recent_then_stream(self._fanout, self.history, options, events_document)


def events_document(events: list[Event], lost: int) -> Reply:
    return Reply("events", value={"events": [event.document() for event in events], "lost": lost})


def events_reply(bus: EventBus, data: bytes | None) -> Reply:
    options = parse_options(data)
    return fail(options) if isinstance(options, str) else bus.follow(options)
