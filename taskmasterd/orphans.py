"""What survives a daemon killed with SIGKILL.

The daemon keeps `<state_dir>/children.json`: the process groups it started, each with its
leader's start time. A daemon that starts and finds the file from a predecessor that died without
cleaning up stops those groups (stop signal, then SIGKILL) before it starts any job, so children
are never left running unsupervised past the next start. Under systemd, KillMode=mixed already
kills the whole cgroup when the daemon dies; this covers every other way of running it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import orjson
import psutil

log = logging.getLogger("taskmasterd.orphans")
FLUSH_DELAY = 0.2  # coalesce the writes of a burst of spawns into one


class ChildrenRegistry:
    def __init__(self, path: str):
        self.path = path
        self._groups: dict[int, tuple[float, int]] = {}  # leader pid -> (start time, stop signal)
        self._flush: asyncio.TimerHandle | None = None

    def record(self, pid: int, stopsignal: int) -> None:
        try:
            self._groups[pid] = (psutil.Process(pid).create_time(), stopsignal)
        except psutil.Error:
            return  # already gone
        self._schedule()

    def forget(self, pid: int) -> None:
        self._groups.pop(pid, None)
        self._schedule()

    def _schedule(self) -> None:
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        entries = [[pid, created, sig] for pid, (created, sig) in self._groups.items()]
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "wb") as out:
                out.write(orjson.dumps(entries))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot record children in %s: %s", self.path, exc)


def _leftover_groups(path: str) -> list[tuple[int, int]]:
    try:
        with open(path, "rb") as src:
            entries = orjson.loads(src.read())
    except FileNotFoundError:
        return []
    except (OSError, orjson.JSONDecodeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return []
    groups = []
    for pid, created, sig in entries:
        try:
            # Same pid and same start time: the very process we started, not a recycled pid.
            if abs(psutil.Process(pid).create_time() - created) < 0.05 and os.getpgid(pid) == pid:
                groups.append((pid, sig))
        except (psutil.Error, ProcessLookupError):
            continue
    return groups


async def stop_leftovers(path: str, grace: float = 5.0) -> int:
    """Stop the process groups a previous daemon left running; returns how many there were."""
    groups = _leftover_groups(path)
    if not groups:
        return 0
    log.warning("stopping %d process group(s) left by a daemon that did not shut down", len(groups))
    for pid, sig in groups:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_group_alive(pid) for pid, _ in groups):
        await asyncio.sleep(0.05)  # not our children: no pidfd or SIGCHLD can tell us; bounded
    for pid, _ in groups:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(groups)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
