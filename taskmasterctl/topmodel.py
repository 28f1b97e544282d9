"""What `taskmasterctl top` shows, without the terminal: rows made from a status document, each
instance's CPU and memory history over the last minute, sparklines, the filter. Pure.

A job of one instance is one row (`db`); a job of several is a row for the job (its summary,
its instances' CPU and memory added up) and a row per instance (`  web[0]`).
"""
from __future__ import annotations

import fnmatch

from .render import memory, uptime
from .safetext import safe

HISTORY = 60  # samples kept: a minute at one refresh a second
BLOCKS = "▁▂▃▄▅▆▇█"
ASCII_BLOCKS = " .:-=+*#"


class Row:
    __slots__ = ("job", "index", "label", "state", "uptime", "restarts", "health", "cpu", "memory", "key", "info")

    def __init__(self, job: str, index: int | None, label: str, state: str, up: str, restarts: str, health: str,
                 cpu: float | None, used: int | None, info: str) -> None:
        self.job, self.index, self.label, self.state = job, index, label, state
        self.uptime, self.restarts, self.health, self.cpu, self.memory = up, restarts, health, cpu, used
        self.key = job if index is None else f"{job}:{index}"  # the selector this row stands for
        self.info = info


def rows_of(jobs: list[dict], pattern: str = "") -> list[Row]:
    """The rows of the jobs whose name matches `pattern` (a substring, or a shell pattern)."""
    rows: list[Row] = []
    for job in jobs:
        name = job["name"]
        if pattern and not (fnmatch.fnmatchcase(name, pattern) if set("*?[") & set(pattern) else pattern in name):
            continue
        instances = job.get("instances") or []
        info = safe((job.get("error") or "").split("\n")[0])
        if len(instances) == 1:
            rows.append(_instance_row(name, instances[0], name, info))
            continue
        # the job's total only when every running instance was counted (top counts those it shows)
        counted = [inst for inst in instances if inst.get("cpu_percent") is not None]
        whole = counted and len(counted) == sum(1 for inst in instances if inst.get("pid"))
        cpu = sum(inst["cpu_percent"] for inst in counted) if whole else None
        used = sum(inst.get("memory_bytes") or 0 for inst in counted) if whole else None
        running = sum(1 for inst in instances if inst.get("state") == "RUNNING")
        restarts = sum(inst.get("restarts") or 0 for inst in instances)
        unhealthy = sum(1 for inst in instances if inst.get("health") == "unhealthy")
        health = f"{unhealthy} bad" if unhealthy else ""
        state = safe(job.get("state", "-"))
        summary = f"{running}/{len(instances)} up" if instances else info
        rows.append(Row(name, None, name, state, "", str(restarts) if instances else "", health, cpu, used,
                        summary if not info else info))
        rows += [_instance_row(name, inst, f"  [{inst.get('index')}]", "") for inst in instances]
    return rows


def _instance_row(job: str, inst: dict, label: str, info: str) -> Row:
    description = info or safe(inst.get("notify_status") or inst.get("description") or "")
    return Row(job, inst.get("index"), label, safe(inst.get("state", "-")), uptime(inst.get("uptime")),
               str(inst.get("restarts", "-")), safe(inst.get("health") or ""), inst.get("cpu_percent"),
               inst.get("memory_bytes"), description)


class History:
    """The last HISTORY readings of CPU % and memory per row key; a row not read in a refresh
    gets no sample (its line keeps what it had)."""

    def __init__(self) -> None:
        self.cpu: dict[str, list[float]] = {}
        self.memory: dict[str, list[float]] = {}

    def add(self, rows: list[Row]) -> None:
        for row in rows:
            if row.cpu is None:
                continue
            for series, value in ((self.cpu, row.cpu), (self.memory, float(row.memory or 0))):
                samples = series.setdefault(row.key, [])
                samples.append(value)
                del samples[:-HISTORY]

    def forget_except(self, keys: set[str]) -> None:
        for series in (self.cpu, self.memory):
            for key in [key for key in series if key not in keys]:
                del series[key]


def sparkline(samples: list[float], width: int, top: float | None = None, unicode: bool = True) -> str:
    """`samples` (oldest first) as `width` characters, right-aligned: each character the largest
    sample of its share of the last minute; the scale is `top` (CPU: 100 %) or the largest."""
    if width <= 0:
        return ""
    if not samples:
        return " " * width
    per = max(1, -(-HISTORY // width))  # samples per character
    buckets = [max(samples[i:i + per]) for i in range(max(0, len(samples) - per * width), len(samples), per)]
    scale = top if top else max(buckets) or 1.0
    blocks = BLOCKS if unicode else ASCII_BLOCKS
    shown = "".join(blocks[min(len(blocks) - 1, int(value / scale * (len(blocks) - 1) + 0.5))] for value in buckets)
    return shown[-width:].rjust(width)


def cells(row: Row) -> tuple[str, str, str, str, str, str, str]:
    """STATE, UPTIME, RESTARTS, HEALTH, CPU%, MEM and INFO as text."""
    cpu = "" if row.cpu is None else f"{row.cpu:.1f}"
    return row.state, row.uptime, row.restarts, row.health, cpu, memory(row.memory) if row.memory is not None else "", \
        row.info
