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
