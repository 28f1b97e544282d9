"""What an instance's processes use: CPU time and memory, and their tree.

`accounting` is the one function `status` and `top` ask. It reads the kernel's figures when a
request asks for them, once per request, for the instances that request names, never on a
timer and never per wake-up: a daemon nobody asks costs nothing. Today it reads each process of
the instance — its leader and every descendant, found through /proc/PID/task/TID/children,
which lists only our own children rather than scanning every process of the machine — from
/proc/PID/stat: CPU time, threads and resident pages in one read (psutil reads the same file,
and statm besides, at four times the cost in Python: a screenful of instances a second would
cost the daemon more than its budget); psutil gives the command lines of a process tree. An
instance in a cgroup of its own can later be answered from the cgroup's cpu.stat and
memory.current behind the same function.

CPU % is the CPU time used since the previous reading of that leader (by any request, at most
`WINDOW` seconds ago), else over its whole life.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Hashable, Mapping, TypeVar

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
    found = [(leader, 0)]
    position = 0
    while position < len(found):
        pid, ppid = found[position]
        position += 1
        stat = _stat(pid)
        if stat is None:  # gone meanwhile: nothing left to count (nor below it)
            continue
        cpu, threads, begun, resident, parent = stat
        total.cpu_seconds += cpu
        total.memory += resident
        if pid == leader:
            started = begun
        if tree:
            total.processes.append(ProcessInfo(pid, parent if pid == leader else ppid, _command(pid)))
        if len(found) < MAX_TREE:  # depth first: a child right after its parent
            found[position:position] = [(child, pid) for child in _children(pid, threads)][: MAX_TREE - len(found)]
    if started is None:
        return None
    previous = _previous.get(leader)
    if previous is not None and previous[0] == started and now - previous[2] >= 0.1:
        total.cpu_percent = max(total.cpu_seconds - previous[1], 0.0) / (now - previous[2]) * 100
    else:
        total.cpu_percent = total.cpu_seconds / max(_since_boot() - started, 0.1) * 100
    if previous is None or previous[0] != started or now - previous[2] >= 0.1:
        _previous[leader] = (started, total.cpu_seconds, now)
    return total


_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[float, int, float, int, int] | None:
    """(CPU seconds, threads, start in seconds since boot, resident bytes, parent) of a live
    process; None when it is gone or a zombie."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    fields = data[data.rfind(b")") + 2:].split()  # the name may hold spaces and parentheses
    if len(fields) < 22 or fields[0] == b"Z":
        return None
    return ((int(fields[11]) + int(fields[12])) / _TICKS, int(fields[17]), int(fields[19]) / _TICKS,
            int(fields[21]) * _PAGE, int(fields[1]))


def _since_boot() -> float:
    """Seconds since boot: the clock of a process's start time in /proc/PID/stat."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _children(pid: int, threads: int) -> list[int]:
    """The children of every thread of `pid` (one read for a single-threaded process)."""
    if threads == 1:
        tasks = [str(pid)]
    else:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return []
    children: list[int] = []
    for task in tasks:
        try:
            fd = os.open(f"/proc/{pid}/task/{task}/children", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            children += [int(word) for word in os.read(fd, 1 << 16).split()]
        except (OSError, ValueError):
            continue
        finally:
            os.close(fd)
    return children


def _command(pid: int) -> str:
    import psutil  # only a detail's process tree needs command lines

    try:
        process = psutil.Process(pid)
        words = process.cmdline()
        text = " ".join(words) if words else f"[{process.name()}]"
    except psutil.Error:
        return "?"
    return text if len(text) <= MAX_COMMAND else text[: MAX_COMMAND - 3] + "..."
