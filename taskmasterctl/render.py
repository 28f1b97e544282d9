"""Human (and --json) renderings of the daemon's replies. Pure: strings in, strings out."""
from __future__ import annotations

from taskmasterd.reply import Reply

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

COLUMNS = ("JOB", "INSTANCE", "STATE", "PID", "UPTIME", "RESTARTS", "EXIT", "CPU%", "MEM", "INFO")
JOB_FIELDS = {"name", "state", "instances", "error", "enabled", "file", "cmd", "autostart", "ready", "stopsignal",
              "stoptime", "autorestart", "schedule", "rollout", "pending", "sockets"}
SHOWN_RUNS = 3  # last runs in the table (status --json has the last 10)
INSTANCE_FIELDS = {"index", "state", "pid", "since", "uptime", "restarts", "exitcode", "signal", "description",
                   "wanted", "spawn",  # the spawn's id: in status JOB and --json, not in every row
                   "second",  # a rolling restart's second run: its description says it
                   # health: shown as "healthy (http 200)"; the rest (and a check's output) in --json
                   "health", "check", "last_check", "last_result", "output", "failures",
                   "notify_status", "notify_stopping",
                   # accounting and detail (status options): columns, or the block of `status JOB`
                   "cpu_percent", "cpu_seconds", "memory_bytes", "memory_peak_bytes", "tasks", "oom_kills", "processes",
                   "logs"}
STATE_COLOURS = {"RUNNING": "32", "STARTING": "36", "WAITING": "36", "STOPPING": "36", "BACKOFF": "33",
                 "FATAL": "1;31", "INVALID": "1;31", "EXITED": "2", "STOPPED": "2"}


def reply_json(reply: Reply) -> str:
    """The reply with its base64 fields decoded, as one line of JSON."""
    return dumps(reply_document(reply))


def dumps(document: Any) -> str:
    import json

    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def reply_document(reply: Reply) -> dict[str, Any]:
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
    return doc


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
    extra = [(key, value) for key, value in doc.items() if key not in known and value is not None]
    if not extra:
        return []
    import json  # only for the fields a bridge adds (colonies=...)

    return [f"{key}={json.dumps(value, separators=(',', ':'))}" for key, value in extra]


def cpu(instance: dict) -> str:
    percent = instance.get("cpu_percent")
    return "-" if percent is None else f"{percent:.1f}"


def memory(size: int | None) -> str:
    """Bytes as ps and top write them: 512K, 12.3M, 1.2G."""
    if size is None:
        return "-"
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20)):
        if size >= scale:
            return f"{size / scale:.1f}{unit}"
    return f"{size >> 10}K"


def last_exit(instance: dict) -> str:
    """The last exit: its code, or the signal that killed it; "-" before any."""
    if instance.get("signal") is not None:
        from taskmasterd.jobfiles.signames import signal_name  # signal (and enum) only when there is one

        return signal_name(instance["signal"])
    if instance.get("exitcode") is not None:
        return str(instance["exitcode"])
    return "-"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _instance_info(instance: dict) -> list[str]:
    info = [instance["description"]] if instance.get("description") else []
    if instance.get("health"):
        result = instance.get("last_result")
        info.append(instance["health"] + (f" ({result})" if result else ""))
    if instance.get("notify_status"):
        info.append(f"status: {instance['notify_status']}")
    return info + _extras(instance, INSTANCE_FIELDS)


def _rows(job: dict) -> list[tuple[str, ...]]:
    """A row per instance, then a row per problem of the job's file: a multi-line error never
    breaks the table."""
    problems = [f"error: {line}" for line in (job.get("error") or "").splitlines() if line.strip()]
    extras = (["disabled"] if job.get("enabled") is False else []) + [
        job[key] for key in ("rollout", "pending") if job.get(key)] + _extras(job, JOB_FIELDS)
    instances = job.get("instances") or []
    rows: list[tuple[str, ...]] = []
    for position, inst in enumerate(instances):
        info = _instance_info(inst)
        rows.append((job["name"], str(inst.get("index", position)), inst.get("state", "-"),
                     "-" if inst.get("pid") is None else str(inst["pid"]), uptime(inst.get("uptime")),
                     str(inst.get("restarts", "-")), last_exit(inst), cpu(inst), memory(inst.get("memory_bytes")),
                     _one_line("; ".join(info + (extras if position == 0 else [])))))
    if not instances:
        first = problems.pop(0) if problems else ""
        rows.append((job["name"], "-", job.get("state", "-"), "-", "-", "-", "-", "-", "-",
                     _one_line("; ".join([first, *extras] if first else extras))))
    rows += [("", "", "", "", "", "", "", "", "", _one_line(problem)) for problem in problems]
    if job.get("schedule"):
        rows += [("", "", "", "", "", "", "", "", "", line) for line in schedule_lines(job["schedule"])]
    return rows


def schedule_lines(schedule: dict, now: float | None = None) -> list[str]:
    """`next run …` and `last runs: …` (newest first) of a scheduled job, in local time."""
    import time

    now = time.time() if now is None else now

    def stamp(when: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S" if abs(when - now) > 43200 else "%H:%M:%S", time.localtime(when))

    nxt = schedule.get("next_run")
    head = f"schedule {schedule.get('schedule')}"
    if schedule.get("timezone") not in (None, "host"):
        head += f" ({schedule['timezone']})"
    head += f"; next run {stamp(nxt)} (in {uptime(max(nxt - now, 0))})" if nxt is not None else "; no next run"
    if schedule.get("running"):
        head += f"; running since {stamp(schedule['running']['start'])}"
    runs = list(reversed(schedule.get("last_runs") or []))[:SHOWN_RUNS]
    lines = [head]
    if runs:
        lines.append("last runs: " + ", ".join(f"{stamp(run['start'])} {run['result']} {run['duration']:.1f}s"
                                               for run in runs))
    return lines


def status_table(jobs: list[dict], colour: bool = False, ignored: list[dict] = ()) -> str:
    """The status of jobs as an aligned table, then a row per file of the jobs directory that is
    not a job (`ignored`); states coloured when `colour`."""
    rows = [row for job in jobs for row in _rows(job)]
    rows += [(entry["file"], "-", "INVALID", "-", "-", "-", "-", "-", "-", _one_line(f"error: {entry['error']}"))
             for entry in ignored]
    from .safetext import safe

    rows = [tuple(safe(cell) for cell in row) for row in rows]  # a job's words never steer the terminal
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = []
    for number, row in enumerate([COLUMNS, *rows]):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        if colour and number and row[2] in STATE_COLOURS:
            cells[2] = f"\x1b[{STATE_COLOURS[row[2]]}m{cells[2]}\x1b[0m"
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


_CHANGE_ORDER = ("added", "removed", "restarted", "applied", "invalid", "unchanged")
_CHANGE_WORDS = {"applied": "applied in place"}


def reload_report(changes: list[dict]) -> str:
    """What a reload changed, one line per kind of change (unchanged jobs only counted); an
    invalid file gets a line per problem."""
    by_change: dict[str, list[dict]] = {}
    for change in changes:
        by_change.setdefault(change.get("change", "?"), []).append(change)
    lines = []
    for kind in [*_CHANGE_ORDER, *(k for k in by_change if k not in _CHANGE_ORDER)]:
        entries = by_change.get(kind)
        if not entries:
            continue
        if kind == "unchanged":
            lines.append(f"  unchanged: {len(entries)} job(s)")
        elif kind == "invalid":
            lines += [f"  invalid: {entry['job']}: {line}" for entry in entries
                      for line in (entry.get("error") or "its file is invalid").splitlines()]
        else:
            lines.append(f"  {_CHANGE_WORDS.get(kind, kind)}: {', '.join(entry['job'] for entry in entries)}")
    return "".join(line + "\n" for line in lines)


def event_line(event: dict) -> str:
    """`2026-05-01 12:00:00.123 web[0] RUNNING -> EXITED (reason)`, local time."""
    import time

    when = event.get("time") or 0.0
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) + f".{int(when * 1000) % 1000:03d}"
    where = event.get("job", "?") if event.get("instance") is None else f"{event.get('job')}[{event['instance']}]"
    kind = "" if event.get("kind", "state") == "state" else f"{event['kind']}: "
    reason = f" ({event['reason']})" if event.get("reason") else ""
    change = f"{event.get('old')} -> {event.get('new')}" if event.get("old") else str(event.get("new"))
    from .safetext import safe

    return safe(f"{stamp} {where} {kind}{change}{reason}")
