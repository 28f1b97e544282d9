"""The `logs` verb: the last lines of one instance's stdout or stderr, or of the daemon's own log,
and with follow what is written after them (docs/protocol.md, "Extensions")."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..observe import daemonlog
from ..observe.following import parse_options
from ..observe.logfollow import tail
from ..reply import Reply, fail

if TYPE_CHECKING:
    from ..lifecycle.supervisor import Supervisor


async def logs(sup: Supervisor, job_name: str | None, index: int | None, data: bytes | None) -> Reply:
    """`job_name` (and `index`, for `name:N`): whose output; None: the daemon's own log. `data`:
    the request's options."""
    options = parse_options(data)
    if isinstance(options, str):
        return fail(options)
    if job_name is None:
        return daemonlog.follow(options)
    found = sup.instances_of(job_name, index)
    if isinstance(found, Reply):
        return found
    job, instances = found
    if len(instances) > 1:
        return fail(f'job "{job.name}" has {len(instances)} instances: name one, '
                    f"{job.name}:0 to {job.name}:{len(instances) - 1}")
    index = instances[0].index
    label = f"{job.name}:{index}"
    path = job.spec.log_path(options.stream, index, sup.log_dir)
    if path is None:
        return fail(f'{label}: its {options.stream} is discarded ("{options.stream}": null in its file)')
    capture = sup.log_files.get(path)  # while an instance writes it: when each part was written
    marks = list(capture.marks) if capture is not None else []
    try:
        return await tail(path, label, options.last, options.follow, options.since, marks, options.times)
    except OSError as exc:
        return fail(f"{label}: cannot read {path}: {exc.strerror or exc}")
