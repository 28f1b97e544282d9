"""The job-file fields of rolling restarts: `rolling`, `max_unavailable`. Pure.

With `"rolling": true` every restart of the job — `restart`, a changed file, a reload — replaces
its instances a few at a time (lifecycle/rollout.py): a new run starts beside the old one, and the
old one is stopped once the new one is ready (its `ready` rule). `max_unavailable` says how many
instances are being replaced at once (default 1). Both apply live: they only shape the next
restart.
"""
from __future__ import annotations

from typing import Any

from .fields import boolean, refuse

MAX_UNAVAILABLE = 1024


def _max_unavailable(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_UNAVAILABLE:
        raise refuse(f"must be an integer 1…{MAX_UNAVAILABLE} (instances replaced at once)", value)
    return value


ROLLOUT_FIELDS = {"rolling": boolean, "max_unavailable": _max_unavailable}
