"""One publisher, many subscribers, each with a bounded queue (the event bus, the daemon's log).

A subscriber that reads too slowly never makes the daemon hold more: once its queue is full the
oldest item goes, and the next batch it takes says how many it lost. Publishing is a loop over the
subscribers (none, usually) and a deque append: cheap enough for every state change.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Subscription(Generic[T]):
    def __init__(self, fanout: Fanout[T], limit: int) -> None:
        self._fanout = fanout
        self._items: deque[T] = deque(maxlen=limit)
        self._lost = 0
        self._waiter: asyncio.Future[None] | None = None

    def push(self, item: T) -> None:
        if len(self._items) == self._items.maxlen:
            self._lost += 1  # the deque drops the oldest
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def batch(self) -> tuple[list[T], int]:
        """Everything queued (waiting for at least one item), and how many were lost before it."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, lost = list(self._items), self._lost
        self._items.clear()
        self._lost = 0
        return items, lost

    def close(self) -> None:
        self._fanout.subscribers.discard(self)


class Fanout(Generic[T]):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.subscribers: set[Subscription[T]] = set()

    def subscribe(self) -> Subscription[T]:
        subscription = Subscription(self, self.limit)
        self.subscribers.add(subscription)
        return subscription

    def publish(self, item: T) -> None:
        for subscription in self.subscribers:
            subscription.push(item)
