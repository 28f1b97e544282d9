"""Human (and --json) renderings of the daemon's replies. Pure: strings in, strings out."""
from __future__ import annotations

import json
from typing import Any

from taskmasterd.verbs import Reply

COLUMNS = ("JOB", "INSTANCE", "STATE", "PID", "UPTIME", "RESTARTS", "INFO")
JOB_FIELDS = {"name", "state", "instances", "error"}
INSTANCE_FIELDS = {"index", "state", "pid", "since", "uptime", "restarts", "exitcode", "signal", "description"}
STATE_COLOURS = {"RUNNING": "32", "STARTING": "36", "STOPPING": "36", "BACKOFF": "33",
                 "FATAL": "1;31", "INVALID": "1;31", "EXITED": "2", "STOPPED": "2"}


def reply_json(reply: Reply) -> str:
    """The reply with its base64 fields decoded: status/list data as JSON, file data as text."""
    doc: dict[str, Any] = {"response": reply.response}
    if reply.error is not None:
        doc["error"] = reply.error
    if reply.job is not None:
        doc["job"] = reply.job
    if reply.value is not None:
        doc["data"] = reply.value
    elif reply.data is not None:
        doc["data"] = reply.data.decode("utf-8", "replace")
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def job_list(value: dict) -> str:
    jobs = value.get("jobs", [])
    width = max((len(job["name"]) for job in jobs), default=0)
    return "".join(f"{job['name']:<{width}}  {job.get('state', '')}".rstrip() + "\n" for job in jobs)


def uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _extras(doc: dict, known: set[str]) -> list[str]:
    return [f"{key}={json.dumps(value, separators=(',', ':'))}"
            for key, value in doc.items() if key not in known and value is not None]


def _instance_info(instance: dict) -> list[str]:
    info = [instance["description"]] if instance.get("description") else []
    if not info and instance.get("signal") is not None:
        info.append(f"killed by signal {instance['signal']}")
    elif not info and instance.get("exitcode") is not None:
        info.append(f"exit code {instance['exitcode']}")
    return info + _extras(instance, INSTANCE_FIELDS)


def _rows(job: dict) -> list[tuple[str, ...]]:
    job_info = ([f"error: {job['error']}"] if job.get("error") else []) + _extras(job, JOB_FIELDS)
    instances = job.get("instances") or []
    if not instances:
        return [(job["name"], "-", job.get("state", "-"), "-", "-", "-", "; ".join(job_info))]
    rows = []
    for position, inst in enumerate(instances):
        info = _instance_info(inst) + (job_info if position == 0 else [])
        rows.append((job["name"], str(inst.get("index", position)), inst.get("state", "-"),
                     "-" if inst.get("pid") is None else str(inst["pid"]), uptime(inst.get("uptime")),
                     str(inst.get("restarts", "-")), "; ".join(info)))
    return rows


def status_table(jobs: list[dict], colour: bool = False) -> str:
    """The status of jobs as an aligned table; states coloured when `colour`."""
    rows = [row for job in jobs for row in _rows(job)]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = []
    for number, row in enumerate([COLUMNS, *rows]):
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        if colour and number and row[2] in STATE_COLOURS:
            cells[2] = f"\x1b[{STATE_COLOURS[row[2]]}m{cells[2]}\x1b[0m"
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
