"""The runs of a scheduled job: the one under way, the last ones, and what a run's end means.

A run is a start of every instance of the job, by its schedule, a catch-up, `@reboot` or a
`start` command. It is over once no instance is up or on its way (each EXITED, FATAL or STOPPED);
its result is decided from the instances' public status (pure: `run_result`):
- "success": every instance exited with a code of `exitcodes`;
- "failed": one exited with another code or a signal, or could not be started (FATAL);
- "timed out": it was still going after `timeout` and the scheduler stopped it;
- "replaced": a due run with `overlap: "replace"` stopped it;
- "stopped": a stop command (or a shutdown) ended it.
A due time that finds a run still going with `overlap: "skip"` is itself a "skipped" run.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field

HISTORY = 10  # finished runs kept per job (status --json shows them all)
RESULTS = ("success", "failed", "timed out", "replaced", "stopped", "skipped")
# Instance states in which a run is not over: up, on its way up, retrying a start, stopping.
GOING = frozenset({"WAITING", "STARTING", "RUNNING", "BACKOFF", "STOPPING"})


@dataclass
class Run:
    cause: str  # "schedule", "catch-up", "@reboot", "start command"
    due: float | None  # the due time it serves (Unix time), None when started by hand
    started: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)
    ending: str | None = None  # a result the scheduler decided ("timed out", "replaced")
    launching: bool = True  # its start request is still under way: the instances are not yet its own
    timeout: asyncio.TimerHandle | None = None

    def end(self, result: str, detail: str) -> dict:
        if self.timeout is not None:
            self.timeout.cancel()
            self.timeout = None
        return {"start": round(self.started, 3), "duration": round(time.monotonic() - self.started_monotonic, 3),
                "result": result, "cause": self.cause, "detail": detail}


def run_result(instances: list[dict], exitcodes: frozenset[int], ending: str | None) -> tuple[str, str] | None:
    """(result, detail) once the run over `instances` (status entries) is over, else None."""
    if any(inst["state"] in GOING for inst in instances):
        return None
    if ending is not None:
        return ending, _exits(instances)
    if any(inst["state"] == "FATAL" for inst in instances):
        return "failed", _exits(instances)
    if any(inst["state"] == "STOPPED" for inst in instances):
        return "stopped", _exits(instances)
    ok = all(inst["signal"] is None and inst["exitcode"] in exitcodes for inst in instances)
    return ("success" if ok else "failed"), _exits(instances)


def _exits(instances: list[dict]) -> str:
    return "; ".join(f"{inst['index']}: {inst['description']}" for inst in instances)


class RunBook:
    """One job's runs: the one under way, the one waiting (`overlap: "queue"`), the last
    HISTORY finished, and counts by result for the metrics."""

    def __init__(self) -> None:
        self.current: Run | None = None
        self.queued: Run | None = None
        self.history: deque[dict] = deque(maxlen=HISTORY)
        self.totals: Counter[str] = Counter()
        self.last_success: float | None = None

    def finished(self, record: dict) -> None:
        self.history.append(record)
        self.totals[record["result"]] += 1
        if record["result"] == "success":
            self.last_success = record["start"] + record["duration"]

    def skipped(self, due: float | None, cause: str, why: str) -> dict:
        record = {"start": round(due if due is not None else time.time(), 3), "duration": 0.0,
                  "result": "skipped", "cause": cause, "detail": why}
        self.finished(record)
        return record

    def document(self) -> dict:
        """What status shows of the runs (newest last)."""
        current = self.current
        return {
            "running": None if current is None else {"start": round(current.started, 3), "cause": current.cause},
            "queued": self.queued is not None,
            "last_runs": list(self.history),
            "runs_total": {result: self.totals.get(result, 0) for result in RESULTS},
            "last_success": self.last_success,
        }
