"""The resource fields of a job file: limits (cgroup controllers) and what a process starts with.

| field | meaning | applied |
|---|---|---|
| `memory_max` | bytes (`536870912`) or with a unit (`"512M"`, K/M/G/T, 1024-based) | the memory controller; live at a reload |
| `cpu_quota` | `"50%"` = half a CPU, `"200%"` = two | the cpu controller (CFS bandwidth); live |
| `tasks_max` | processes and threads | the pids controller; live |
| `nice` | -20 … 19 | the process at its start; a change restarts |
| `oom_score_adjust` | -1000 … 1000 | the process at its start; a change restarts |
| `rlimits` | `{"nofile": 65536, "core": 0}`; a number, `"infinity"`, or `[soft, hard]` | the process at its start; a change restarts |

Pure: parsing and bounds only. Where the controllers are is processes/containment.py's business.
"""
from __future__ import annotations

import re
import resource
from dataclasses import dataclass
from typing import Any

MIN_MEMORY = 1 << 20  # below a MiB nothing starts: the kernel would kill the program at once
MAX_MEMORY = 1 << 62
MIN_CPU_PERCENT = 1
MAX_CPU_PERCENT = 100 * 4096
MAX_TASKS = 4194304  # the kernel's pid_max limit
CPU_PERIOD_US = 100_000  # the CFS period the quota is a share of (systemd's default too)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"([0-9]{1,19})(?:\.([0-9]{1,6}))?([KMGT]?)B?\Z", re.IGNORECASE)
_PERCENT = re.compile(r"([0-9]{1,7})(?:\.([0-9]{1,3}))?%\Z")
RLIMITS: dict[str, int] = {name[len("RLIMIT_"):].lower(): getattr(resource, name)
                           for name in dir(resource) if name.startswith("RLIMIT_") and name != "RLIMIT_OFILE"}
INFINITY = resource.RLIM_INFINITY
MAX_RLIMIT = (1 << 63) - 1
RESOURCE_FIELDS = ("memory_max", "cpu_quota", "tasks_max", "nice", "oom_score_adjust", "rlimits")


class ResourceProblem(Exception):
    """Why a resource field's value is refused (the caller names the file and the field)."""


@dataclass(frozen=True, slots=True)
class Resources:
    memory_max: int | None = None  # bytes
    cpu_quota: float | None = None  # percent of one CPU
    tasks_max: int | None = None
    nice: int | None = None
    oom_score_adjust: int | None = None
    rlimits: tuple[tuple[str, int, int], ...] = ()  # (name, soft, hard)

    def controllers(self) -> tuple[str, ...]:
        """The cgroup controllers these limits need."""
        return tuple(name for name, value in (("memory", self.memory_max), ("cpu", self.cpu_quota),
                                              ("pids", self.tasks_max)) if value is not None)

    def start_settings(self) -> tuple[Any, ...]:
        """What only a new process can be given: a change of these restarts the instance."""
        return (self.nice, self.oom_score_adjust, self.rlimits)

    def any(self) -> bool:
        return self != NO_RESOURCES


NO_RESOURCES = Resources()


def memory_text(value: int) -> str:
    """512M rather than 536870912, where it is exact."""
    for unit in "TGMK":
        if value % _UNITS[unit] == 0:
            return f"{value // _UNITS[unit]}{unit}"
    return str(value)


def parse_memory(value: Any) -> int:
    if isinstance(value, bool):
        raise ResourceProblem(f"must be a number of bytes or a size like \"512M\", got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (match := _SIZE.match(value.strip())):
        whole, fraction, unit = match.groups()
        scale = _UNITS[unit.upper()]
        number = int(whole) * scale + (int(fraction) * scale // 10 ** len(fraction) if fraction else 0)
    else:
        raise ResourceProblem(f"must be a number of bytes or a size like \"512M\" (units K, M, G, T), got {value!r:.80}")
    if not MIN_MEMORY <= number <= MAX_MEMORY:
        raise ResourceProblem(f"must be from 1M to {MAX_MEMORY} bytes, got {number}")
    return number


def parse_cpu_quota(value: Any) -> float:
    match = _PERCENT.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ResourceProblem(f"must be a percentage of one CPU like \"50%\" or \"200%\", got {value!r:.80}")
    whole, fraction = match.groups()
    percent = int(whole) + (int(fraction) / 10 ** len(fraction) if fraction else 0)
    if not MIN_CPU_PERCENT <= percent <= MAX_CPU_PERCENT:
        raise ResourceProblem(f"must be from {MIN_CPU_PERCENT}% to {MAX_CPU_PERCENT}%, got {value}")
    return percent


def _integer(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ResourceProblem(f"must be an integer from {low} to {high}, got {value!r:.80}")
    return value


def _rlimit_value(value: Any) -> int:
    if value == "infinity":
        return INFINITY
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RLIMIT:
        raise ResourceProblem(f"must be an integer from 0 to {MAX_RLIMIT} or \"infinity\", got {value!r:.80}")
    return value


def parse_rlimits(value: Any) -> tuple[tuple[str, int, int], ...]:
    if not isinstance(value, dict):
        raise ResourceProblem(f"must be an object of limits by name, like {{\"nofile\": 65536}}, got {type(value).__name__}")
    limits = []
    for name, given in value.items():
        if name not in RLIMITS:
            raise ResourceProblem(f"unknown limit {name!r:.40}: use one of {', '.join(sorted(RLIMITS))}")
        try:
            if isinstance(given, list):
                if len(given) != 2:
                    raise ResourceProblem("must be one value or [soft, hard]")
                soft, hard = (_rlimit_value(v) for v in given)
            else:
                soft = hard = _rlimit_value(given)
        except ResourceProblem as problem:
            raise ResourceProblem(f"{name}: {problem}") from None
        if hard != INFINITY and (soft == INFINITY or soft > hard):
            raise ResourceProblem(f"{name}: the soft limit {soft} is above the hard limit {hard}")
        limits.append((name, soft, hard))
    return tuple(sorted(limits))


PARSERS = {
    "memory_max": parse_memory,
    "cpu_quota": parse_cpu_quota,
    "tasks_max": lambda v: _integer(v, 1, MAX_TASKS),
    "nice": lambda v: _integer(v, -20, 19),
    "oom_score_adjust": lambda v: _integer(v, -1000, 1000),
    "rlimits": parse_rlimits,
}


def parse_resources(document: dict[str, Any], source: str) -> tuple[Resources, list[str]]:
    """The resource fields of a job file's document: the Resources and the problems, each naming
    the file and the field. A field given as null is left unset."""
    values: dict[str, Any] = {}
    problems = []
    for name in RESOURCE_FIELDS:
        if name not in document or document[name] is None:
            continue
        try:
            values[name] = PARSERS[name](document[name])
        except ResourceProblem as problem:
            problems.append(f'{source}: field "{name}": {problem}')
    return (Resources(**values) if values else NO_RESOURCES), problems
