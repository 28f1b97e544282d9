"""Control requests go before background batches.

A request takes a handful of loop iterations before its verb runs (accepted, its transport made,
its peer admitted, its bytes read), and every iteration ran one slice of each background batch
that was ready: a spawn (3-16 ms on a loaded machine, for the fork waits for the exec), a slice
of job files read, of blueprints reconciled. While a restart spawned 100 jobs, that made `status`
take 40-75 ms, a spawn per step.

So an admitted control connection is *asking* from its accept (when its uid or address admits
it; else from its admission), and from the moment its next request's bytes arrive, until its verb is dispatched (a verb then runs as any other work: a `start` that
waits for its own spawn must not hold that spawn back), or until its reply is written for a verb
that only reads (`status`, `list`: verbs.Verb.reads), for HOLD at most. A batch's next slice
(`after`, `turn`) runs after the I/O callbacks of the next loop iteration (a timer due at once:
asyncio runs those after the callbacks the select found, where `call_soon`'s run before them),
and only when no connection asks then; else it is held until none asks, for HOLD at most. So a
request waits for at most the slice already running when it came, and a stream of requests
slows background work but never stops it. A peer that is refused never asks: connecting again
and again must not let anyone slow the daemon's spawns.
"""
from __future__ import annotations

import asyncio
from typing import Callable

HOLD = 0.02  # seconds a connection asks at most, and a held slice waits at most


class Foreground:
    def __init__(self) -> None:
        self.asking = 0  # control connections between their accept (or request) and its dispatch
        self._held: dict[asyncio.TimerHandle, Callable[[], None]] = {}  # slices held, by their deadline's timer

    def begin(self) -> None:
        self.asking += 1

    def end(self) -> None:
        self.asking -= 1
        if not self.asking and self._held:
            held, self._held = self._held, {}
            loop = asyncio.get_running_loop()
            for timer, callback in held.items():
                timer.cancel()
                loop.call_later(0, self._gate, callback, timer.when())

    def after(self, callback: Callable[[], None]) -> None:
        """Call `callback` (a slice of background work) in a later iteration, after that
        iteration's I/O callbacks, once no connection asks (HOLD at most)."""
        loop = asyncio.get_running_loop()
        loop.call_later(0, self._gate, callback, loop.time() + HOLD)

    async def turn(self) -> None:
        """Yield to the loop as `after` would: for a coroutine's next slice."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.after(lambda: turn.done() or turn.set_result(None))
        await turn

    def _gate(self, callback: Callable[[], None], deadline: float) -> None:
        loop = asyncio.get_running_loop()
        if self.asking and loop.time() < deadline:
            def expire() -> None:
                if self._held.pop(timer, None) is not None:  # still held: its time is up
                    callback()

            timer = loop.call_at(deadline, expire)
            self._held[timer] = callback
        else:
            callback()
