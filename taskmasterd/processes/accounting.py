"""What a spawn uses: CPU seconds, memory, tasks, OOM kills — read when asked, never on a timer.

With cgroups the kernel keeps the figures for the whole cell (cpu.stat, memory.current or
memory.usage_in_bytes, pids.current, the OOM counter): one read each, whatever the spawn forked.
Without a memory controller for the cell (a hybrid host where the job has no `memory_max`, or
process-group mode), memory is the sum of its processes' resident sets, through psutil (its
peak and OOM kills are then null), and status's `daemon.accounting` says so once, not in each
instance (a status of 100 instances is a hot path, its size included); in process-group mode
CPU and tasks are summed too, over the processes of its group (an escape that left the group is
not counted: only a cgroup can see it).

Figures are read at most once a second per spawn (`FRESH`): status is a hot path (100 instances
would cost ~3 ms of file reads per request), and a figure of CPU or memory a second old tells an
operator the same.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .table import Child

FRESH = 1.0  # seconds a spawn's figures are reused (Child.figures keeps them)
FIGURES = ("cpu_seconds", "memory_bytes", "memory_peak_bytes", "tasks", "oom_kills")
_groups: tuple[float, dict[int, list[int]]] | None = None  # process groups of the machine, when read


def spawn_figures(child: Child, now: float) -> dict:
    """The figures of a spawn, read now (`now`: time.monotonic())."""
    cell = child.cell or child.limits_cell
    figures: dict = dict.fromkeys(FIGURES) if cell is None else cell.figures()
    if figures["memory_bytes"] is None or child.cell is None:
        pids = child.cell.member_pids() if child.cell is not None else _group_members(child.pid, now)
        summed = process_figures(pids)
        for name, value in summed.items():
            if figures.get(name) is None:
                figures[name] = value
    return figures


def process_figures(pids: list[int]) -> dict:
    """CPU seconds, resident memory and threads summed over `pids`, through psutil."""
    import psutil  # only once figures are asked for: the daemon starts without it

    cpu = 0.0
    rss = 0
    threads = 0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                times = process.cpu_times()
                cpu += times.user + times.system
                rss += process.memory_info().rss
                threads += process.num_threads()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return {"cpu_seconds": round(cpu, 3), "memory_bytes": rss, "tasks": threads}


def _group_members(pgid: int, now: float) -> list[int]:
    """The processes of group `pgid`, from one scan of /proc shared by every spawn asked about
    within the same second."""
    global _groups
    if _groups is None or now - _groups[0] >= FRESH:
        groups: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as src:
                    fields = src.read().rpartition(b")")[2].split()
                groups.setdefault(int(fields[2]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
        _groups = (now, groups)
    return _groups[1].get(pgid, [])
