"""Job names: the one rule that keeps every path built from a name inside the jobs directory.
Tiny on purpose: taskmasterctl imports it on its fast path."""
from __future__ import annotations

import re

SUFFIX = ".tm.json"
MAX_NAME = 64
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


def job_name_error(name: str) -> str | None:
    """Why `name` cannot be a job name, or None."""
    if not name:
        return "a job name cannot be empty"
    if len(name) > MAX_NAME:
        return f"job name is longer than {MAX_NAME} characters"
    if not _NAME_RE.match(name) or name.endswith(SUFFIX):
        return f"invalid job name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
    return None


def job_name_from_filename(filename: str) -> str | None:
    """The job a file in the jobs directory defines, or None for files the daemon ignores
    (other suffixes, hidden files, editor temp files)."""
    if not filename.endswith(SUFFIX) or filename.startswith("."):
        return None
    name = filename[: -len(SUFFIX)]
    return None if job_name_error(name) else name
