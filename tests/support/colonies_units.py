"""CPU and memory quantities as the real server parses them (pkg/parsers/parser.go, v1.9.12).

The server stores a process's `conditions.cpu`/`mem` as integers at submission
(pkg/database/postgresql/processes.go AddProcess) and an assign's `availablecpu`/`availablemem`
the same way (pkg/server/handlers/process/handlers.go HandleAssignProcess, "" meaning no limit);
a process matches only when its cpu <= availablecpu and its mem <= availablemem
(SelectAndAssign, FindCandidates).
"""
from __future__ import annotations

import re
from typing import Callable

INT64_MAX = 2**63 - 1
_GO_INT = re.compile(r"[+-]?[0-9]+")
# ConvertMemoryToBytes's unit map; Go iterates it in random order, so of the units that end the
# text (case-insensitively) any may be tried: one whose exact spelling trims cleanly wins here.
_MEMORY_UNITS = {
    "Ki": 1024, "KiB": 1024, "Mi": 1024**2, "MiB": 1024**2, "Gi": 1024**3, "GiB": 1024**3, "TiB": 1024**4,
    "K": 1000, "KB": 1000, "Kb": 1000, "M": 1000**2, "MB": 1000**2, "Mb": 1000**2,
    "G": 1000**3, "Gb": 1000**3, "TB": 1000**4, "Tb": 1000**4,
}


class QuantityError(ValueError):
    """The text the real server answers with (HTTP 400)."""


def _parse_int64(text: str) -> int:
    """strconv.ParseInt(text, 10, 64): an optional sign and decimal digits, nothing else."""
    if not _GO_INT.fullmatch(text) or not -(2**63) <= int(text) <= INT64_MAX:
        raise ValueError(text)
    return int(text)


def cpu_millis(text: str) -> int:
    """ConvertCPUToInt: "<n>m" is n millicores; text without the m suffix counts as 0."""
    if not text.endswith("m"):
        return 0
    try:
        return _parse_int64(text[:-1])
    except ValueError:
        raise QuantityError("Error converting CPU to int") from None


def memory_bytes(text: str) -> int:
    """ConvertMemoryToBytes: "" is 0; otherwise a number and one of the units above."""
    if not text:
        return 0
    found = False
    for unit, factor in _MEMORY_UNITS.items():
        if text.upper().endswith(unit.upper()):
            found = True
            if text.endswith(unit):
                try:
                    return _parse_int64(text[: -len(unit)]) * factor
                except ValueError:
                    pass
    if not found:
        raise QuantityError('error converting memory to int: strconv.ParseInt: parsing "": invalid syntax')
    raise QuantityError(f'error converting memory to int: strconv.ParseInt: parsing "{text}": invalid syntax')


def available(text: str, parse: Callable[[str], int]) -> int:
    """An assign's availablecpu/availablemem: "" means no limit (math.MaxInt64)."""
    return INT64_MAX if text == "" else parse(text)
