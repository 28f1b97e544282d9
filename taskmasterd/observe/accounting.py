"""What an instance's processes use: CPU time and memory, and their tree.

`accounting` is the one function `status` and `top` ask. It reads the kernel's figures when a
request asks for them, once per request, for the instances that request names, never on a
timer and never per wake-up: a daemon nobody asks costs nothing. Today it reads each process
with psutil (its leader and every descendant, found through
/proc/PID/task/TID/children, which lists only our own children rather than scanning every
process of the machine); an instance in a cgroup of its own can later be answered from the
cgroup's cpu.stat and memory.current behind the same function.

CPU % is the CPU time used since the previous reading of that leader (by any request, at most
`WINDOW` seconds ago), else over its whole life.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Hashable, Mapping, TypeVar

import psutil

K = TypeVar("K", bound=Hashable)
WINDOW = 60.0  # seconds a previous reading stays the base of a CPU %
MAX_TREE = 256  # processes followed below one leader (a fork bomb is not walked to its end)
MAX_COMMAND = 512  # characters of a process's command line shown


@dataclass(slots=True)
class ProcessInfo:
    pid: int
    ppid: int
    command: str


@dataclass(slots=True)
class Usage:
    cpu_seconds: float  # user + system time of every process of the tree
    cpu_percent: float
    memory: int  # resident bytes, summed over the tree
    processes: list[ProcessInfo] = field(default_factory=list)  # with `tree`: leader first

    def document(self) -> dict:
        return {"cpu_percent": round(self.cpu_percent, 1), "cpu_seconds": round(self.cpu_seconds, 3),
                "memory": self.memory}


# leader pid -> (its start time, CPU seconds, monotonic time of the reading)
_previous: dict[int, tuple[float, float, float]] = {}


def accounting(leaders: Mapping[K, int], tree: bool = False) -> dict[K, Usage]:
    """The usage of each instance whose leader's pid is given (keyed as given); instances whose
    leader is gone are left out. `tree`: also each process's pid, parent and command."""
    now = time.monotonic()
    usages: dict[K, Usage] = {}
    for key, pid in leaders.items():
        usage = _usage(pid, tree, now)
        if usage is not None:
            usages[key] = usage
    for pid, (_, _, when) in list(_previous.items()):
        if now - when > WINDOW:
            del _previous[pid]
    return usages


def _usage(leader: int, tree: bool, now: float) -> Usage | None:
    total = Usage(0.0, 0.0, 0)
    started = None
    for pid, ppid in _tree(leader):
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                times = process.cpu_times()
                total.cpu_seconds += times.user + times.system
                total.memory += process.memory_info().rss
                if pid == leader:
                    started = process.create_time()
                if tree:
                    parent = process.ppid() if pid == leader else ppid
                    total.processes.append(ProcessInfo(pid, parent, _command(process)))
        except psutil.Error:  # gone meanwhile (or a zombie): nothing left to count
            continue
    if started is None:
        return None
    previous = _previous.get(leader)
    if previous is not None and previous[0] == started and now - previous[2] >= 0.1:
        total.cpu_percent = max(total.cpu_seconds - previous[1], 0.0) / (now - previous[2]) * 100
    else:
        total.cpu_percent = total.cpu_seconds / max(time.time() - started, 0.1) * 100
    if previous is None or previous[0] != started or now - previous[2] >= 0.1:
        _previous[leader] = (started, total.cpu_seconds, now)
    return total


def _tree(leader: int) -> list[tuple[int, int]]:
    """(pid, parent pid) of the leader and its descendants, depth first, at most MAX_TREE."""
    found = [(leader, 0)]
    position = 0
    while position < len(found) and len(found) < MAX_TREE:
        pid = found[position][0]
        position += 1
        found[position:position] = [(child, pid) for child in _children(pid)][: MAX_TREE - len(found)]
    return found


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    children: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as file:
                children += [int(word) for word in file.read().split()]
        except (OSError, ValueError):
            continue
    return children


def _command(process: psutil.Process) -> str:
    try:
        words = process.cmdline()
    except psutil.Error:
        words = []
    text = " ".join(words) if words else f"[{process.name()}]"
    return text if len(text) <= MAX_COMMAND else text[: MAX_COMMAND - 3] + "..."
