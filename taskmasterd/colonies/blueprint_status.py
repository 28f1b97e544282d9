"""Each blueprint's status on the server, as this daemon reports it: its own entry under
`status.hosts.<host>` (the job here: the generation applied, instances, states, health, the last
error), and `status.error` for what keeps every daemon from running it.

updateblueprintstatusmsg replaces the whole status (jsonb_set of `status`, seen on the real
server), and every daemon the blueprint places writes its own entry. So a write is: read, change
ours, write, read again to see that it stayed — another daemon may have written in between —
and after a short random pause, again. Nothing is written that the server already shows, and at
most one round of writes goes out per `status_interval`, however often the jobs change.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import random
from typing import Any, Callable

from .client import ColoniesClient, ColoniesError, transient
from .retry import Outage

log = logging.getLogger("taskmasterd.colonies")
WRITE_TRIES = 8
Report = tuple[dict[str, Any] | None, str | None]  # (our entry or None: none, the blueprint's problem)
STAMP = "updated"  # the entry's time of writing: not part of what is compared


class StatusWriter:
    def __init__(self, client: ColoniesClient, colony: str, host: str, outage: Outage, interval: float,
                 report: Callable[[str], Report | None], prvkey: Callable[[], str | None]) -> None:
        self._client = client
        self._colony = colony
        self._host = host
        self._outage = outage
        self._interval = interval
        self._report = report  # blueprint -> what we report of it; None: it is gone, write nothing
        self._prvkey = prvkey
        self._shown: dict[str, Report] = {}  # blueprint -> what the server shows of ours
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def seen(self, docs: list[Any]) -> None:
        """The blueprints as the server listed them: what it shows of ours."""
        self._shown = {doc["metadata"]["name"]: self._ours(doc) for doc in docs
                       if isinstance(doc, dict) and isinstance(doc.get("metadata"), dict)
                       and isinstance(doc["metadata"].get("name"), str)}

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
            dirty, self._dirty = self._dirty, set()
            for name in sorted(dirty):
                report = self._report(name)
                if report is None or report == self._shown.get(name):
                    continue
                try:
                    written = await self._write(name, report)
                except ColoniesError as exc:
                    if transient(exc):
                        self._outage.failed(exc)
                    else:
                        log.warning("blueprint %s: its status could not be written: %s", name, exc.message)
                    written = False
                if not written:
                    self._dirty.add(name)  # again at the next round
            if self._dirty:
                self._wake.set()
            await asyncio.sleep(self._interval)

    async def _write(self, name: str, report: Report) -> bool:
        """True once the server shows `report` as ours (or the blueprint is gone)."""
        prvkey = self._prvkey()
        if prvkey is None:  # the reconciler is not registered yet
            return False
        entry, problem = report
        for _ in range(WRITE_TRIES):
            try:
                doc = await self._client.get_blueprint(self._colony, name, prvkey)
            except ColoniesError as exc:
                if exc.status == 404:  # removed meanwhile: nothing to report on
                    self._shown.pop(name, None)
                    return True
                raise
            if self._ours(doc) == report:
                self._shown[name] = report
                return True
            status = doc.get("status") if isinstance(doc.get("status"), dict) else {}
            hosts = status.get("hosts") if isinstance(status.get("hosts"), dict) else {}
            if entry is None:
                hosts.pop(self._host, None)
            else:
                hosts[self._host] = {**entry, STAMP: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            status["hosts"] = hosts
            if problem is None:
                status.pop("error", None)
            else:
                status["error"] = problem
            await self._client.update_blueprint_status(self._colony, name, status, prvkey)
            self._outage.recovered()
            await asyncio.sleep(random.uniform(0.02, 0.2))  # then see whether another daemon's write undid ours
        log.info("blueprint %s: its status keeps being overwritten by other daemons; written again later", name)
        return False
