"""`taskmasterctl status JOB`: one job as a block, like `systemctl status`. Pure: a status document
(asked with the detail option) in, text out. Everything that came from the job is escaped.

    ● web - RUNNING, 2 instances
          File: /etc/taskmaster/jobs/web.tm.json
           Cmd: python3 -m http.server 8080
       Enabled: yes (autostart)
      Schedule: …        (where the daemon reports one)
       Sockets: …        (idem)

      web[0]: RUNNING since 2026-12-06 20:50:01 (2h04m ago)
              Restarts: 0   Last exit: -   Health: healthy (http 200)
                   CPU: 1.2 % (3.45 s)   Memory: 12.3M
             Processes: 4242 python3 -m http.server 8080
                        └─4250 sleep 5
        stdout (logs/web.0.out):
          GET / 200
"""
from __future__ import annotations

import time

from .render import last_exit, memory, uptime
from .safetext import safe

STATE_MARKS = {"RUNNING": "●", "STARTING": "●", "STOPPING": "●", "WAITING": "○", "BACKOFF": "×", "FATAL": "×",
               "INVALID": "×", "EXITED": "○", "STOPPED": "○"}
LABEL = 14  # width of the field names
INDENT = " " * (LABEL + 2)


def _field(name: str, value: str) -> str:
    return f"{name:>{LABEL}}: {value}"


def _when(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_")


def _command(argv: list[str]) -> str:
    """The command as a shell would take it back (shlex.join's quoting, without importing `re`
    on the path of a one-shot command)."""
    return " ".join(word if word and _PLAIN.issuperset(word) else "'" + word.replace("'", "'\"'\"'") + "'"
                    for word in argv)


def job_block(job: dict) -> str:
    """The block of one job (every instance the document holds)."""
    instances = job.get("instances") or []
    state = job.get("state", "-")
    count = f", {len(instances)} instance{'s' if len(instances) != 1 else ''}" if instances else ""
    lines = [f"{STATE_MARKS.get(state, '●')} {job['name']} - {state}{count}"]
    if job.get("file"):
        lines.append(_field("File", safe(job["file"])))
    if job.get("cmd"):
        lines.append(_field("Cmd", safe(_command(job["cmd"]))))
    if "enabled" in job:
        enabled = "yes" if job["enabled"] else "no (disabled: no autostart, not started by 'start all')"
        autostart = "" if "autostart" not in job else (
            " (autostart: at the first connection)" if job["autostart"] == "socket"
            else " (autostart)" if job["autostart"] else " (autostart: false)")
        lines.append(_field("Enabled", enabled + (autostart if job["enabled"] else "")))
    if job.get("ready") and job["ready"] != "starttime":
        lines.append(_field("Readiness", safe(str(job["ready"]))))
    if job.get("schedule"):
        from .render import schedule_lines

        head, *runs = schedule_lines(job["schedule"])
        lines.append(_field("Schedule", safe(head.removeprefix("schedule "))))
        lines += [f"{'':>{LABEL}}  {safe(run)}" for run in runs]
    if job.get("sockets"):  # held by the daemon
        lines.append(_field("Sockets", safe(", ".join(map(str, job["sockets"])))))
    for key, label in (("rollout", "Rollout"), ("pending", "File")):
        if job.get(key):
            lines.append(_field(label, safe(str(job[key]))))
    for problem in (job.get("error") or "").splitlines():
        if problem.strip():
            lines.append(_field("Error", safe(problem)))
    for inst in instances:
        lines += [""] + _instance_lines(job["name"], inst)
    return "\n".join(lines) + "\n"


def _instance_lines(name: str, inst: dict) -> list[str]:
    state = inst.get("state", "-")
    since = inst.get("since")
    ago = f" ({uptime(time.time() - since)} ago)" if since else ""
    lines = [_field(f"{name}[{inst.get('index')}]", f"{state} since {_when(since)}{ago}")]
    facts = [f"Restarts: {inst.get('restarts', '-')}", f"Last exit: {last_exit(inst)}"]
    if inst.get("spawn") is not None:
        facts.append(f"Spawn: {inst['spawn']}")  # the id its log lines and events carry
    if inst.get("health"):
        result = f" ({inst['last_result']})" if inst.get("last_result") else ""
        facts.append(f"Health: {inst['health']}{result}")
    lines.append(INDENT + "   ".join(safe(fact) for fact in facts))
    if inst.get("description"):
        lines.append(_field("Info", safe(inst["description"])))
    if inst.get("notify_status"):
        lines.append(_field("Status", safe(inst["notify_status"])))
    if inst.get("cpu_percent") is not None:
        lines.append(_field("CPU", f"{inst['cpu_percent']:.1f} % ({inst.get('cpu_seconds', 0):.2f} s)   "
                                   f"Memory: {memory(inst.get('memory_bytes'))}"))
    processes = inst.get("processes") or []
    for position, line in enumerate(_tree(processes)):
        lines.append(_field("Processes", line) if position == 0 else INDENT + line)
    for stream, log in (inst.get("logs") or {}).items():
        lines += _log_lines(stream, log)
    return lines


def _tree(processes: list[dict]) -> list[str]:
    """`pid command`, each child under its parent, indented with └─."""
    depth: dict[int, int] = {}
    shown = []
    for process in processes:
        level = depth.get(process.get("ppid"), -1) + 1 if shown else 0
        depth[process["pid"]] = level
        prefix = "  " * (level - 1) + "└─" if level else ""
        shown.append(f"{prefix}{process['pid']} {safe(process.get('command', ''))}")
    return shown


def _log_lines(stream: str, log: dict) -> list[str]:
    path = safe(log.get("path") or "")
    if log.get("path") is None:
        return [f"{'':>{LABEL - 4}}{stream}: discarded"]
    if log.get("merged"):
        return [f"{'':>{LABEL - 4}}{stream}: into stdout's file"]
    if log.get("error"):
        return [f"{'':>{LABEL - 4}}{stream} ({path}): cannot read: {safe(log['error'])}"]
    text = log.get("lines") or ""
    head = f"{'':>{LABEL - 4}}{stream} ({path}):" + ("" if text else " (nothing yet)")
    return [head] + [" " * (LABEL - 2) + safe(line) for line in text.splitlines()]
