"""Which jobs are disabled (`taskmasterctl disable`), kept in `<state-dir>/disabled.json`.

Like `systemctl disable`: the operator's job file is never written; a disabled job is loaded and
may be started by name, but it does not autostart and `start all` (or a pattern) leaves it
alone. The set survives restarts of the daemon. A missing or unreadable file means nothing is
disabled (the reason is logged once); a write replaces the file atomically, from a worker
thread (fsync can take seconds on a busy disk), one write at a time, each with the latest set.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os

from ..jobfiles.jobsdir import write_atomically
from ..jobfiles.names import job_name_error

log = logging.getLogger("taskmasterd")
FILE_NAME = "disabled.json"
FILE_MODE = 0o600


class Enablement:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, FILE_NAME)
        self._disabled: set[str] = set()
        self._writing = asyncio.Lock()

    def load(self) -> None:
        try:
            with open(self.path, "rb") as file:
                document = json.loads(file.read(1 << 20))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s): every job counts as enabled", self.path, exc)
            return
        names = document.get("disabled") if isinstance(document, dict) else None
        if not isinstance(names, list):
            log.error("%s holds no \"disabled\" list: every job counts as enabled", self.path)
            return
        self._disabled = {name for name in names if isinstance(name, str) and job_name_error(name) is None}

    def disabled(self, name: str) -> bool:
        return name in self._disabled

    def status_extra(self, entries: dict[str, dict]) -> None:
        for name in entries.keys() & self._disabled:  # walks the smaller of the two
            entries[name]["enabled"] = False

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._disabled)

    async def set(self, name: str, enabled: bool) -> bool:
        """Enable or disable `name`; False when it already was. OSError when it cannot be kept
        (then nothing changed)."""
        if (name not in self._disabled) == enabled:
            return False
        if enabled:
            self._disabled.discard(name)
        else:
            self._disabled.add(name)
        try:
            async with self._writing:
                data = json.dumps({"disabled": sorted(self._disabled)}).encode() + b"\n"
                await asyncio.to_thread(write_atomically, self.path, data, FILE_MODE)
        except OSError:
            (self._disabled.add if enabled else self._disabled.discard)(name)  # as it was
            raise
        return True
