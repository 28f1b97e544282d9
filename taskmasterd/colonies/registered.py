"""What every executor of this daemon does to be one on the server: register until it is (with
backoff while the server is away, slowly while only an operator can help), show its state and
its problem (logged once), and come back online. A job's executor (executor.py) and the daemon's
own (service.py: the blueprint reconciler) are both one."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from .client import ColoniesError, transient
from .keystore import ExecutorKey
from .registration import Identity, Registration, RegistrationProblem
from .retry import Backoff
from .shared import Shared

log = logging.getLogger("taskmasterd.colonies")


class RegisteredExecutor:
    def __init__(self, shared: Shared, label: str, keyname: str, identity: Identity,
                 remedy: str = "give the job another executorname") -> None:
        self.label = label  # what the log lines start with: the job's name, or "blueprints"
        self.identity = identity
        self.state = "starting"
        self.error: str | None = None
        self._shared = shared
        self._colony = shared.settings.colony_name
        self._registration = Registration(shared, keyname, identity, remedy)
        self._backoff = Backoff(shared.timing)

    @property
    def executorname(self) -> str:
        return self._registration.name

    @property
    def functions(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _main_ended(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: ColonyOS executor failed", self.label, exc_info=task.exception())
            self.state, self.error = "error", f"internal error: {task.exception()!r}"

    def _problem(self, text: str) -> None:
        if text != self.error:
            log.error("%s: %s", self.label, text)
        self.state, self.error = "error", text

    def _online(self) -> None:
        self._shared.outage.recovered()
        self._backoff.reset()

    async def _register_until_done(self) -> ExecutorKey:
        while True:
            self.state = "registering"
            try:
                key = await self._registration.register()
                await self._registration.sync_functions(key, self.functions)
            except RegistrationProblem as problem:
                self._problem(str(problem))
            except ColoniesError as exc:
                if transient(exc):
                    self._shared.outage.failed(exc)
                else:
                    self._problem(f"executor {self.executorname!r}: registration refused: {exc.message}")
            else:
                self._online()
                self.state, self.error = "registered", None
                log.info("%s: ColonyOS executor %s (type %s) registered in colony %s",
                         self.label, key.executorname, self.identity.executortype, self._colony)
                return key
            await asyncio.sleep(self._backoff.next_delay())
