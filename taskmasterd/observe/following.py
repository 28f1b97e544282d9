"""What the following verbs (`logs`, `events`) share: their options, carried as JSON in the
request's `data`, and the stream of replies made from a subscription."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

from .fanout import Fanout, Subscription
from ..reply import Reply

T = TypeVar("T")
MAX_LAST = 100_000  # lines or events one request may ask for
DEFAULT_LAST = 10
STREAMS = ("stdout", "stderr")


@dataclass(frozen=True, slots=True)
class FollowOptions:
    last: int = DEFAULT_LAST  # how many of the most recent lines (or events) come first
    follow: bool = False  # then keep sending what comes, until the client closes
    stream: str = "stdout"  # logs: which output of the instance
    since: float | None = None  # logs: only what was written from this Unix time on (to the second)
    times: bool = False  # logs: say when each part was written (`times` in each reply)


def options_object(data: bytes | None) -> dict | str:
    """The JSON object of options a request carries in its `data` ({} without any), or why it
    is not one. Shared by every verb that takes options."""
    if not data:
        return {}
    try:
        document = json.loads(data)
    except ValueError:
        return 'the options in "data" are not JSON'
    if not isinstance(document, dict):
        return 'the options in "data" must be a JSON object'
    return document


def parse_options(data: bytes | None) -> FollowOptions | str:
    """`{"last":N,"follow":B,"stream":S}`, each optional, unknown keys ignored; or the problem."""
    if not data:
        return FollowOptions()
    document = options_object(data)
    if isinstance(document, str):
        return document
    last = document.get("last", DEFAULT_LAST)
    follow = document.get("follow", False)
    stream = document.get("stream", "stdout")
    if isinstance(last, bool) or not isinstance(last, int) or not 0 <= last <= MAX_LAST:
        return f'option "last" must be a number of lines from 0 to {MAX_LAST}'
    if not isinstance(follow, bool):
        return 'option "follow" must be true or false'
    if stream not in STREAMS:
        return 'option "stream" must be "stdout" or "stderr"'
    since = document.get("since")
    times = document.get("times", False)
    if since is not None and (isinstance(since, bool) or not isinstance(since, (int, float)) or not 0 <= since < 1e11):
        return 'option "since" must be a Unix time'
    if not isinstance(times, bool):
        return 'option "times" must be true or false'
    return FollowOptions(last, follow, stream, since, times)


class SubscriptionStream(Generic[T]):
    """The replies after a following verb's first one: each batch of a subscription, rendered.
    `aclose()` ends the subscription even if the stream was never iterated."""

    def __init__(self, subscription: Subscription[T], render: Callable[[list[T], int], Reply]) -> None:
        self._subscription = subscription
        self._render = render

    def __aiter__(self) -> SubscriptionStream[T]:
        return self

    async def __anext__(self) -> Reply:
        items, lost = await self._subscription.batch()
        return self._render(items, lost)

    async def aclose(self) -> None:
        self._subscription.close()


def recent_then_stream(fanout: Fanout[T], history: Sequence[T], options: FollowOptions,
                       render: Callable[[list[T], int], Reply]) -> Reply:
    """The reply of the last `options.last` items of `history`; with `follow`, it carries the
    stream of every later one. The subscription is taken before the snapshot: nothing falls
    between the two."""
    subscription = fanout.subscribe() if options.follow else None
    recent = list(history)[-options.last:] if options.last else []
    first = render(recent, 0)
    return first if subscription is None else first.with_(stream=SubscriptionStream(subscription, render))
