"""Find the processes a test started, whoever their parent is now, by a marker in their environment."""
from __future__ import annotations

import os
import uuid


def new_mark() -> dict[str, str]:
    """An `env` entry for a job file; every process of that job (escapes included) carries it."""
    return {"TEST_MARK": uuid.uuid4().hex}


def marked(mark: dict[str, str]) -> list[int]:
    """Live (not zombie) processes whose environment has the mark."""
    (name, value), = mark.items()
    needle = f"{name}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as src:
                if needle not in src.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat", "rb") as src:
                if src.read().rpartition(b")")[2].split()[0] == b"Z":
                    continue
        except OSError:
            continue
        found.append(int(entry))
    return found


def environment_of(pid: int) -> dict[str, str]:
    """Its environment; empty when it is gone."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as src:
            pairs = [item.partition(b"=") for item in src.read().split(b"\0") if item]
    except OSError:
        return {}
    return {k.decode(): v.decode(errors="replace") for k, _, v in pairs}


def comm(pid: int) -> str | None:
    """The process's command name, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as src:
            return src.read().strip()
    except OSError:
        return None
