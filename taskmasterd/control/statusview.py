"""`status` with options (docs/protocol.md, "Status options"): the accounting of instances (CPU and
memory) and the detail of a job (`taskmasterctl status JOB`: its file, command, enablement,
process trees and last log lines). A seed client sends no `data` with `status` and never gets
any of it.

The options are JSON in the request's `data`, every key optional:
`{"accounting": true | "<selector>", "detail": true, "lines": 10, "logs": true}`. A selector names the
instances whose accounting is read (`top` asks for the rows on its screen); `true`, every
instance of the reply. Accounting is read once, here, for the whole reply. `logs` (implied by
`detail`): where each instance's streams go (`taskmasterctl logs` asks it: which to follow).
"""
from __future__ import annotations

import fnmatch
import os
from typing import TYPE_CHECKING

from . import selection
from ..observe.accounting import accounting
from ..observe.following import STREAMS, options_object
from ..observe.logfollow import tail
from ..reply import Reply, fail

if TYPE_CHECKING:
    from ..lifecycle.supervisor import Supervisor
    from ..processes.table import Child

MAX_LINES = 1000  # log lines per stream in a detail


class StatusOptions:
    __slots__ = ("everything", "jobs", "instances", "globs", "detail", "lines", "logs")

    def __init__(self, accounting: bool | list[selection.Item], detail: bool, lines: int, logs: bool) -> None:
        items = [] if isinstance(accounting, bool) else accounting
        self.everything = accounting is True
        self.jobs = {item.name for item in items if item.name is not None and item.index is None}
        self.instances = {(item.name, item.index) for item in items if item.index is not None}
        self.globs = [item.text for item in items if item.name is None]
        self.detail, self.lines, self.logs = detail, lines, logs or detail

    def counts(self, job: str, index: int) -> bool:
        """Whether the accounting of instance `index` of `job` is asked for."""
        return self.everything or job in self.jobs or (job, index) in self.instances or any(
            fnmatch.fnmatchcase(job, glob) for glob in self.globs)


def parse_status_options(data: bytes) -> StatusOptions | str:
    document = options_object(data)
    if isinstance(document, str):
        return document
    detail = document.get("detail", False)
    logs = document.get("logs", False)
    lines = document.get("lines", 10)
    wanted = document.get("accounting", bool(detail))
    if not isinstance(detail, bool) or not isinstance(logs, bool):
        return 'options "detail" and "logs" must be true or false'
    if isinstance(lines, bool) or not isinstance(lines, int) or not 0 <= lines <= MAX_LINES:
        return f'option "lines" must be a number of lines from 0 to {MAX_LINES}'
    if isinstance(wanted, str):
        items = selection.parse(wanted) if wanted else []
        if isinstance(items, str):
            return f'option "accounting": {items}'
        wanted = items
    elif not isinstance(wanted, bool):
        return 'option "accounting" must be true, false or a selector'
    return StatusOptions(wanted, detail, lines, logs)


async def detailed_status(sup: Supervisor, data: bytes, reply: Reply) -> Reply:
    """The status `reply` with what the options in `data` ask for added."""
    if reply.response != "status":
        return reply
    options = parse_status_options(data)
    if isinstance(options, str):
        return fail(options)
    jobs = reply.value["jobs"]
    counted: list[tuple[dict, Child]] = []  # (an instance's entry, the spawn it runs)
    for job in jobs:
        loaded = sup.jobs.get(job["name"])
        if loaded is None:
            continue
        instances = loaded.instances
        for inst in job["instances"]:
            index = inst["index"]
            if inst["pid"] and index < len(instances) and (options.everything or options.counts(job["name"], index)):
                child = instances[index].child
                if child is not None:
                    counted.append((inst, child))
    usages = accounting(dict(enumerate(child for _, child in counted)), tree=options.detail) if counted else {}
    for position, usage in usages.items():
        inst = counted[position][0]
        inst.update(usage.document())
        if options.detail:
            inst["processes"] = [{"pid": p.pid, "ppid": p.ppid, "command": p.command} for p in usage.processes]
    if options.detail or options.logs:
        for job in jobs:
            if options.detail:
                _add_detail(sup, job)
            if options.logs:
                await _add_logs(sup, job, options.lines if options.detail else None)
    return reply


def _add_detail(sup: Supervisor, entry: dict) -> None:
    loaded = sup.jobs.get(entry["name"])
    entry["file"] = sup.path_of(entry["name"])
    if loaded is None:
        return
    spec = loaded.spec
    entry.update({"cmd": list(spec.argv), "autostart": spec.autostart, "ready": spec.ready,
                  "stopsignal": spec.stopsignal, "stoptime": spec.stoptime,
                  "autorestart": spec.autorestart})
    entry.setdefault("enabled", True)


async def _add_logs(sup: Supervisor, entry: dict, lines: int | None) -> None:
    """Where each instance's streams go ({"path": null}: discarded; "merged": stderr goes into
    stdout's file), and with `lines` the last lines of each."""
    loaded = sup.jobs.get(entry["name"])
    if loaded is None:
        return
    spec = loaded.spec
    for inst in entry["instances"]:
        logs = {}
        for stream in STREAMS:
            path = spec.log_path(stream, inst["index"], sup.log_dir)
            merged = stream == "stderr" and spec.stderr_to_stdout
            logs[stream] = {"path": path, **({"merged": True} if merged else {})}
            if path is None or merged or lines is None:
                continue
            try:
                last = (await tail(path, "", lines, follow=False)).data or b""
            except OSError as exc:
                logs[stream]["error"] = os.strerror(exc.errno) if exc.errno else str(exc)
                continue
            logs[stream]["lines"] = last.decode("utf-8", "replace")
        inst["logs"] = logs
