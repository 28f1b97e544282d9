"""When each scheduled job last ran, kept in `<state>/schedule.json` across restarts and crashes.

`catch_up` needs it: a job whose next due time after its last run has passed when the daemon
starts missed a run while the daemon was down. The file is JSON `{"job": unix time, ...}`,
replaced atomically (temporary file, fsync, rename, fsync of the directory: a crash leaves the
old file or the new one, never half of one). Writes happen on a worker thread, never on the
loop; while one is under way, later changes wait and go out together in the next one.

A file that cannot be read or parsed is logged and taken as empty: a missed catch-up costs less
than a daemon that does not start.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os

from ..jobfiles.jobsdir import write_atomically

log = logging.getLogger("taskmasterd.schedule")
FILE_NAME = "schedule.json"
MAX_FILE = 4 << 20  # bytes read at most: names are bounded, and so are the jobs


class LastRuns:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, FILE_NAME)
        self._times: dict[str, float] = {}
        self._loaded = False
        self._writing: asyncio.Task[None] | None = None
        self._dirty = False

    def load(self) -> None:
        """Read the file once (a small local file, at start-up)."""
        if self._loaded:
            return
        self._loaded = True
        try:
            with open(self.path, "rb") as file:
                document = json.loads(file.read(MAX_FILE + 1)[:MAX_FILE] or b"{}")
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s): no missed run is caught up this time", self.path, exc)
            return
        if not isinstance(document, dict):
            log.error("%s is not a JSON object: no missed run is caught up this time", self.path)
            return
        self._times = {name: float(when) for name, when in document.items()
                       if isinstance(name, str) and isinstance(when, (int, float)) and not isinstance(when, bool)
                       and math.isfinite(when)}

    def get(self, name: str) -> float | None:
        self.load()
        return self._times.get(name)

    def record(self, name: str, when: float) -> None:
        self.load()
        self._times[name] = when
        self._changed()

    def forget(self, name: str) -> None:
        if self._times.pop(name, None) is not None:
            self._changed()

    def _changed(self) -> None:
        self._dirty = True
        if self._writing is None:
            self._writing = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                data = json.dumps(self._times, separators=(",", ":"), sort_keys=True).encode()
                try:
                    await asyncio.to_thread(write_atomically, self.path, data, 0o600)
                except OSError as exc:
                    log.error("cannot write %s: %s", self.path, exc.strerror or exc)
        finally:
            self._writing = None

    async def flush(self) -> None:
        """Until every recorded time is on disk (shutdown)."""
        while self._writing is not None:
            await asyncio.wait([self._writing])  # never cancels the write, whoever waits
