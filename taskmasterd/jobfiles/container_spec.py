"""The job-file field of container mode: `essential`. Pure logic.

An essential job is the container's reason to be: once its instances have ended for good (FATAL,
or exited with nothing to restart them) the daemon stops every job and exits with that job's exit
code (container/exitwatch.py). A scheduled job never ends for good, so it cannot be essential.
"""
from __future__ import annotations

from typing import Any

from .fields import boolean

CONTAINER_FIELDS = {"essential": boolean}


def container_problems(document: dict[str, Any], source: str) -> list[str]:
    if document.get("essential") is True and "schedule" in document:
        return [f'{source}: field "essential": a scheduled job never ends for good, so it cannot be essential']
    return []
