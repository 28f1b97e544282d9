"""What an instance's processes use: CPU time, memory, tasks, OOM kills, and their tree.

`accounting` is the one function `status` (its `accounting` option), `top` and the metrics ask.
It reads the kernel's figures when a request asks for them, for the instances that request
names, never on a timer and never per wake-up: a daemon nobody asks costs nothing. A spawn's
figures are kept for `FRESH` seconds, so a client that asks in a loop costs the daemon one
reading a second per instance (`top` asks once a second anyway).

Where the instance has a cgroup of its own (processes/containment.py), the kernel keeps the
figures for the whole cell, whatever it forked, escapes included: `cpu.stat` (the CPU of every
process that ever ran in it), the memory controller's usage, peak and OOM kills (v2, or v1 on a
hybrid host) and `pids.current`; its members are read from `cgroup.procs`. Where the cell has no
memory controller (a job without `memory_max` on a hybrid host), memory is the sum of its
members' resident sets, and the peak and OOM kills are not known (null). Without cgroups
(process-group mode) the instance is its leader and every descendant, found through
/proc/PID/task/TID/children (only our own children, rather than every process of the machine),
each read from /proc/PID/stat: CPU time, threads and resident pages in one read (psutil reads the
same file, and statm besides, at four times the cost); psutil gives the command lines of a tree.

CPU % is the CPU time used since the previous reading of that spawn (by any request, at most
`WINDOW` seconds ago), else over its whole life.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Hashable, Mapping, TypeVar

if TYPE_CHECKING:
    from ..processes.table import Child

K = TypeVar("K", bound=Hashable)
WINDOW = 60.0  # seconds a previous reading stays the base of a CPU %
FRESH = 1.0  # seconds a spawn's figures (without its tree) are reused
MAX_TREE = 256  # processes followed below one leader (a fork bomb is not walked to its end)
MAX_COMMAND = 512  # characters of a process's command line shown


@dataclass(slots=True)
class ProcessInfo:
    pid: int
    ppid: int
    command: str


@dataclass(slots=True)
class Usage:
    cpu_seconds: float  # user + system time of every process of the instance
    cpu_percent: float
    memory: int  # bytes: the memory controller's usage, else resident bytes summed
    tasks: int  # processes and threads
    memory_peak: int | None = None  # known with a memory controller only
    oom_kills: int | None = None
    processes: list[ProcessInfo] = field(default_factory=list)  # with `tree`: leader first
    _document: dict | None = None

    def document(self) -> dict:
        """The status fields (made once: a reused reading is asked for by every request)."""
        if self._document is None:
            self._document = {"cpu_percent": round(self.cpu_percent, 1), "cpu_seconds": round(self.cpu_seconds, 3),
                              "memory_bytes": self.memory, "memory_peak_bytes": self.memory_peak,
                              "tasks": self.tasks, "oom_kills": self.oom_kills}
        return self._document


# spawn (its leader's pid, or its cell) -> (its start, CPU seconds, monotonic time of the reading)
_previous: dict[object, tuple[float, float, float]] = {}
_fresh: dict[Child, tuple[float, Usage]] = {}  # the last reading of a spawn, reused for FRESH seconds
_pruned = 0.0  # when both were last rid of old readings (at most once per FRESH: not per request)


def accounting(spawns: Mapping[K, Child], tree: bool = False) -> dict[K, Usage]:
    """The usage of each spawn given (keyed as given); spawns that are gone are left out.
    `tree`: also each process's pid, parent and command (always read afresh)."""
    now = time.monotonic()
    usages: dict[K, Usage] = {}
    for key, child in spawns.items():
        kept = None if tree else _fresh.get(child)
        if kept is not None and now - kept[0] < FRESH:
            usages[key] = kept[1]
            continue
        usage = _cell_usage(child, tree, now) if child.cell is not None else _tree_usage(child, tree, now)
        if usage is not None:
            usages[key] = usage
            _fresh[child] = (now, usage)
    _prune(now)
    return usages


def _prune(now: float) -> None:
    """Forget readings too old to be used: an ended spawn's among them."""
    global _pruned
    if now - _pruned < FRESH:
        return
    _pruned = now
    for child in [child for child, (when, _) in _fresh.items() if now - when >= FRESH]:
        del _fresh[child]
    for spawn in [spawn for spawn, (_, _, when) in _previous.items() if now - when > WINDOW]:
        del _previous[spawn]


def _cell_usage(child: Child, tree: bool, now: float) -> Usage | None:
    cell = child.cell
    assert cell is not None
    figures = cell.figures()
    if figures["cpu_seconds"] is None:  # the cell is gone: the spawn ended meanwhile
        return None
    members = cell.member_pids()
    memory, tasks = figures["memory_bytes"], figures["tasks"]
    stats = {pid: stat for pid in members if (stat := _stat(pid)) is not None} \
        if memory is None or tasks is None or tree else {}
    usage = Usage(float(figures["cpu_seconds"]), 0.0,
                  memory if memory is not None else sum(stat[3] for stat in stats.values()),
                  tasks if tasks is not None else sum(stat[1] for stat in stats.values()),
                  figures["memory_peak_bytes"], figures["oom_kills"])
    if tree:
        usage.processes = _cell_tree(child.pid, stats)
    _cpu_percent(usage, cell.path, 0.0, now, child.started_at)
    return usage


def _cell_tree(leader: int, stats: dict[int, tuple[float, int, float, int, int]]) -> list[ProcessInfo]:
    """The members of a cell, each after its parent, the leader's tree first, then each process
    whose parent is outside the cell (an escape, reparented to the daemon) with its own tree."""
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat[4], []).append(pid)
    roots = [leader] if leader in stats else []
    roots += sorted(pid for pid, stat in stats.items() if stat[4] not in stats and pid != leader)
    shown: list[ProcessInfo] = []
    stack = list(reversed(roots))
    while stack and len(shown) < MAX_TREE:
        pid = stack.pop()
        shown.append(ProcessInfo(pid, stats[pid][4], _command(pid)))
        stack.extend(sorted(children.get(pid, ()), reverse=True))
    return shown


def _tree_usage(child: Child, tree: bool, now: float) -> Usage | None:
    leader = child.pid
    total = Usage(0.0, 0.0, 0, 0)
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
        total.tasks += threads
        if pid == leader:
            started = begun
        if tree:
            total.processes.append(ProcessInfo(pid, parent if pid == leader else ppid, _command(pid)))
        if len(found) < MAX_TREE:  # depth first: a child right after its parent
            found[position:position] = [(child, pid) for child in _children(pid, threads)][: MAX_TREE - len(found)]
    if started is None:
        return None
    limits = child.limits_cell  # process-group mode with a v1 memory cgroup for its memory_max
    if limits is not None:
        figures = limits.figures()
        total.memory_peak, total.oom_kills = figures["memory_peak_bytes"], figures["oom_kills"]
    _cpu_percent(total, leader, started, now, None)
    return total


def _cpu_percent(usage: Usage, spawn: object, started: float, now: float, began: float | None) -> None:
    """Since the previous reading of that spawn (at least 0.1 s ago), else over its life: since
    `started` (seconds since boot) or, for a cell, `began` (monotonic)."""
    previous = _previous.get(spawn)
    if previous is not None and previous[0] == started and now - previous[2] >= 0.1:
        usage.cpu_percent = max(usage.cpu_seconds - previous[1], 0.0) / (now - previous[2]) * 100
    elif began is not None:
        usage.cpu_percent = usage.cpu_seconds / max(now - began, 0.1) * 100
    else:
        usage.cpu_percent = usage.cpu_seconds / max(_since_boot() - started, 0.1) * 100
    if previous is None or previous[0] != started or now - previous[2] >= 0.1:
        _previous[spawn] = (started, usage.cpu_seconds, now)


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
