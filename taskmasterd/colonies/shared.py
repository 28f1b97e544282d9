"""What every job's executor shares: one client, one key directory, one outage, one clock."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from .client import ColoniesClient
from .keystore import KeyStore
from .retry import Outage, Timing
from .settings import ColoniesSettings


@dataclass(frozen=True)
class Shared:
    client: ColoniesClient
    settings: ColoniesSettings
    keystore: KeyStore
    outage: Outage
    timing: Timing
    capabilities: asyncio.Future[dict[str, Any]]
