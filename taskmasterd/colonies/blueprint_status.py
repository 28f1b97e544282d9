"""Each blueprint's status on the server, as this daemon reports it: its own entry under
`status.hosts.<host>` (the job here: the generation applied, instances, states, health, the last
error), and `status.error` for what keeps every daemon from running it.

updateblueprintstatusmsg replaces the whole status (jsonb_set of `status`, seen on the real
server), and every daemon the blueprint places writes its own entry. So a round of writes reads
the blueprints (one list), writes the statuses whose entry of ours differs from what we report
(each the status just read, with ours changed; a few at a time), and a while later, after a
random pause, reads them again: an entry another daemon's write undid is written again. Nothing
is written that the server already shows, and at most one round goes out per `status_interval`,
however often the jobs change.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import random
from typing import Any, Awaitable, Callable

from ..foreground import Foreground
from ..tasks import Turns, all_settled
from .client import ColoniesClient, ColoniesError, transient
from .retry import Outage
from .shared import cancel_and_wait

log = logging.getLogger("taskmasterd.colonies")
Report = tuple[dict[str, Any] | None, str | None]  # (our entry or None: none, the blueprint's problem)
STAMP = "updated"  # the entry's time of writing: not part of what is compared
IN_FLIGHT = 8  # status writes at once
CHECK_AFTER = (0.3, 1.0)  # seconds before written statuses are read again (random: daemons spread)


class StatusWriter:
    def __init__(self, client: ColoniesClient, colony: str, host: str, outage: Outage, interval: float,
                 report: Callable[[str], Report | None], listing: Callable[[str], Awaitable[list[Any]]],
                 prvkey: Callable[[], str | None], foreground: Foreground) -> None:
        self._client = client
        self._colony = colony
        self._host = host
        self._outage = outage
        self._interval = interval
        self._report = report  # blueprint -> what we report of it; None: it is gone, write nothing
        self._listing = listing  # prvkey -> the blueprints as the server has them
        self._prvkey = prvkey
        self._shown: dict[str, Report] = {}  # blueprint -> what the server shows of ours (or we wrote)
        self._dirty: set[str] = set()  # what we report may have changed
        self._unchecked: set[str] = set()  # written: to be read again
        self._wake = asyncio.Event()
        # Writes begin a batch per loop iteration, after the control requests under way: a
        # hundred signed requests and their replies in one iteration kept `status` waiting 7 ms.
        self._turns = Turns(foreground=foreground)
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        await cancel_and_wait(self._task)

    def seen(self, docs: list[Any]) -> None:
        """The blueprints as the server listed them: what it shows of ours."""
        self._shown = {doc["metadata"]["name"]: self._ours(doc) for doc in docs if _name(doc) is not None}

    def mark(self, names: set[str] | list[str]) -> None:
        self._dirty.update(names)
        self._wake.set()

    def _ours(self, doc: dict[str, Any]) -> Report:
        status = doc.get("status") if isinstance(doc.get("status"), dict) else {}
        hosts = status.get("hosts") if isinstance(status.get("hosts"), dict) else {}
        entry = hosts.get(self._host)
        if isinstance(entry, dict):
            entry = {key: value for key, value in entry.items() if key != STAMP}
        problem = status.get("error")
        return entry if isinstance(entry, dict) else None, problem if isinstance(problem, str) else None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._round()
            except ColoniesError as exc:
                if transient(exc):
                    self._outage.failed(exc)
                else:
                    log.warning("blueprints: statuses could not be written: %s", exc.message)
                self._wake.set()  # again at the next round
            await asyncio.sleep(self._interval)

    def _wanted(self, names: set[str]) -> dict[str, Report]:
        reports = {name: self._report(name) for name in names}
        return {name: report for name, report in reports.items() if report is not None and report != self._shown.get(name)}

    async def _round(self) -> None:
        prvkey = self._prvkey()
        if prvkey is None:  # not registered yet: the first pass marks every blueprint again
            return
        names = self._dirty | self._unchecked
        if not self._unchecked and not self._wanted(names):
            self._dirty.clear()
            return
        docs = await self._listing(prvkey)
        self._dirty -= names
        self._unchecked -= names
        self.seen(docs)
        by_name = {_name(doc): doc for doc in docs if _name(doc) is not None}
        todo = [(by_name[name], report) for name, report in self._wanted(names).items() if name in by_name]

        async def write(doc: dict[str, Any], report: Report) -> None:
            await self._turns.turn()
            await self._write(doc, report, prvkey)

        # IN_FLIGHT workers, not a task per write: a hundred tasks made and stepped in one
        # iteration cost the loop 1-2 ms.
        outcomes = await all_settled((write(doc, report) for doc, report in todo), at_once=IN_FLIGHT)
        failed = [(doc, outcome) for (doc, _), outcome in zip(todo, outcomes) if isinstance(outcome, Exception)]
        if todo:
            asyncio.get_running_loop().call_later(random.uniform(*CHECK_AFTER), self._check,
                                                  {_name(doc) for doc, _ in todo})
        if failed:
            self._dirty.update(_name(doc) for doc, _ in failed)
            raise failed[0][1]

    def _check(self, names: set[str | None]) -> None:
        self._unchecked.update(name for name in names if name is not None)
        self._wake.set()

    async def _write(self, doc: dict[str, Any], report: Report, prvkey: str) -> None:
        name = _name(doc)
        assert name is not None
        entry, problem = report
        status = dict(doc["status"]) if isinstance(doc.get("status"), dict) else {}
        hosts = dict(status["hosts"]) if isinstance(status.get("hosts"), dict) else {}
        if entry is None:
            hosts.pop(self._host, None)
        else:
            hosts[self._host] = {**entry, STAMP: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        status["hosts"] = hosts
        if problem is None:
            status.pop("error", None)
        else:
            status["error"] = problem
        try:
            await self._client.update_blueprint_status(self._colony, name, status, prvkey)
        except ColoniesError as exc:
            if exc.status == 404:  # removed meanwhile: nothing to report on
                self._shown.pop(name, None)
                return
            raise
        self._outage.recovered()
        self._shown[name] = report  # until the check reads it again


def _name(doc: Any) -> str | None:
    metadata = doc.get("metadata") if isinstance(doc, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None
