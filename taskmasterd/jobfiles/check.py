"""`taskmasterd --check [DIR|FILE]`: validate every job file of a directory, or one file,
offline, as the daemon would on load.

Each problem is printed as the daemon would log it (the file and the field named); a file with a
job-file suffix whose name is not a job name is reported too, since the daemon would ignore it.
"""
from __future__ import annotations

import os
from typing import Iterator

from ..kernel.nss import uid_of
from .cycles import cycle_problem
from .jobfile import JobFileError, Limits, host_errors, parse_job
from .jobsdir import JobsDirectory, unloadable_name
from .names import SUFFIX, job_name_from_filename


def problems_in(jobs_dir: str, limits: Limits = Limits(), only: str | None = None) -> tuple[int, list[str]]:
    """(how many job files were read, every problem found in them); OSError for the directory.
    `only`: the one file of the directory to check (its dependencies on the others are not)."""
    directory = JobsDirectory(jobs_dir)  # read as the daemon reads: regular files only, capped
    checked, problems = 0, []
    entries = [only] if only is not None else sorted(os.listdir(jobs_dir))
    unsafe = directory.problem()  # the daemon would refuse to start on it, and read none of its files
    if unsafe is not None:
        problems.append(unsafe)
    graph: dict[str, list[str]] = {}  # the dependencies of the files that loaded so far, in the daemon's order
    for entry in entries:
        path = os.path.join(jobs_dir, entry)
        name = job_name_from_filename(entry)
        if name is None:
            unloadable = unloadable_name(entry)
            if unloadable is not None:
                problems.append(f"{path}: {unloadable}")
            elif only is not None:
                problems.append(f"{path}: not a job file: job files are named NAME{SUFFIX}")
            continue
        checked += 1
        problems += list(_file_problems(directory, name, limits, graph))
    return checked, problems


def _file_problems(directory: JobsDirectory, name: str, limits: Limits, graph: dict[str, list[str]]) -> Iterator[str]:
    path = directory.path_of(name)
    try:
        raw = directory.read(name)
        if raw is None:
            return  # removed meanwhile
        spec = parse_job(name, raw, path, limits)
    except JobFileError as exc:
        yield from exc.problems
        return
    problems = host_errors(spec, path, uid_of(spec.user) if spec.user is not None else None)
    if not problems:  # loaded, unless it closes a cycle with the files loaded before it
        graph[name] = [dependency.job for dependency in spec.depends_on]
        cycle = cycle_problem(graph, name, path)
        if cycle:
            del graph[name]
            problems.append(cycle)
    yield from problems


def run_check(path: str, limits: Limits = Limits()) -> int:
    """Print each problem of the directory or the one file at `path`, then a summary; 1 if
    anything is wrong, else 0."""
    jobs_dir, only = (path, None) if os.path.isdir(path) else os.path.split(path)
    if only is not None and not os.path.lexists(path):
        print(f"taskmasterd: no such file or directory: {path}")
        return 1
    try:
        checked, problems = problems_in(jobs_dir or ".", limits, only)
    except OSError as exc:
        print(f"taskmasterd: cannot read the jobs directory {jobs_dir}: {exc.strerror}")
        return 1
    for problem in problems:
        print(problem)
    verdict = f"{len(problems)} problem(s)" if problems else "all valid"
    print(f"taskmasterd: {checked} job file(s) in {path}: {verdict}")
    return 1 if problems else 0
