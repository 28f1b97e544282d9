"""What every job's executor shares: one client, one key directory, one outage, one clock, and
the supervisor its control functions go to."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .client import ColoniesClient
from .keystore import KeyStore
from .retry import Outage, Timing
from .settings import ColoniesSettings

if TYPE_CHECKING:
    from ..lifecycle.supervisor import Supervisor


@dataclass(frozen=True)
class Shared:
    client: ColoniesClient
    settings: ColoniesSettings
    keystore: KeyStore
    outage: Outage
    timing: Timing
    capabilities: asyncio.Future[dict[str, Any]]
    supervisor: Supervisor


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the tasks and wait until each has ended, cancelling again one that runs on: a
    cancellation lost somewhere (asyncio.wait_for on Python 3.11) must not hang a shutdown."""
    pending = {task for task in tasks if task is not None and not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
