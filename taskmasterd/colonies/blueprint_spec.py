"""One `TaskmasterJob` blueprint as a daemon reads it: the job it becomes here, and whether it is
placed here. Pure.

    {"kind": "TaskmasterJob", "metadata": {"name": "web", "colonyname": "dev"},
     "spec": {"hosts": ["web-*"], "location": "lab-1", "job": {"cmd": "...", "numprocs": 2}}}

`hosts` are names or shell-style globs matched against the daemon's host name; `location` is
matched against the daemon's `colonies.location` (as the server matches locations: whatever the
case). Given both, both must match; one of them must be given. A blueprint whose
`metadata.locationname` is set is also placed only at that location (the server sends its
reconciliation processes only to reconcilers there). The job is named `colony.<name>`: a local
job file cannot take that name while blueprints are on (jobsource.py).
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from typing import Any

from ..jobfiles.names import job_name_error

PREFIX = "colony."


@dataclass(frozen=True)
class Blueprint:
    name: str
    generation: int
    job: str  # the job's name here
    data: bytes | None  # the job file (canonical JSON); None when the spec has no job object
    placed: bool  # this daemon runs it
    problem: str | None  # what keeps any daemon from running it: reported once, for every host
    user: Any = None  # the job's `user` (or its alias `runas`), as written; None: the daemon's own


def job_name(blueprint: str) -> str:
    return PREFIX + blueprint


def read_blueprint(doc: Any, host: str, location: str) -> Blueprint | None:
    """The blueprint of a server document, or None for a document without a name."""
    if not isinstance(doc, dict):
        return None
    metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        return None
    generation = metadata.get("generation")
    generation = generation if isinstance(generation, int) and not isinstance(generation, bool) else 0
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    job = spec.get("job")
    data = (json.dumps(job, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode() if isinstance(job, dict) else None
    problem = _name_problem(name) or _placement_problem(spec) or (None if data is not None else
                                                                  'spec.job: must be a job file (a JSON object)')
    placed = problem is None and _placed(spec, metadata, host, location)
    user = job.get("user", job.get("runas")) if isinstance(job, dict) else None
    return Blueprint(name, generation, job_name(name), data, placed, problem, user)


def _name_problem(name: str) -> str | None:
    problem = job_name_error(job_name(name))
    return None if problem is None else f"blueprint {name!r} cannot name a job here: {problem}"


def _placement_problem(spec: dict[str, Any]) -> str | None:
    hosts, location = spec.get("hosts"), spec.get("location")
    if hosts is None and location is None:
        return "spec: give hosts (host names or globs) and/or location, to say where the job runs"
    if hosts is not None and (not isinstance(hosts, list) or not hosts
                              or any(not isinstance(h, str) or not h for h in hosts)):
        return "spec.hosts: must be a list of host names or globs"
    if location is not None and (not isinstance(location, str) or not location):
        return "spec.location: must be a location name"
    return None


def _placed(spec: dict[str, Any], metadata: dict[str, Any], host: str, location: str) -> bool:
    hosts, wanted = spec.get("hosts"), spec.get("location")
    if hosts is not None and not any(fnmatch.fnmatchcase(host, pattern) for pattern in hosts):
        return False
    if wanted is not None and wanted.lower() != location.lower():
        return False
    routed = metadata.get("locationname")
    return not (isinstance(routed, str) and routed and routed.lower() != location.lower())


def user_refusal(user: Any, allowed: tuple[str, ...] | None, account: Any) -> str | None:
    """Why a blueprint's job may not run as `user` here (None: it may). `account` is its passwd
    entry (the daemon's own when the job names no user; None when there is no such user: the job
    file check says so). `allowed`: colonies.blueprint_users; None: anyone but root."""
    if account is None:
        return None
    who = f"user {user!r}" if user is not None else f"the daemon's own user {account.pw_name!r} (the job names none)"
    if allowed is None:
        if account.pw_uid != 0:
            return None
        return (f"a blueprint's job does not run as root here: it would run as {who}; name another user in the "
                f"job, or allow it in the daemon's colonies.blueprint_users")
    if account.pw_name in allowed or str(account.pw_uid) in allowed:
        return None
    return f"a blueprint's job may run as {', '.join(allowed)} here (colonies.blueprint_users), not as {who}"
