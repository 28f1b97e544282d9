"""The jobs of the colony's blueprints, as a second source of job files beside the jobs directory.

With `colonies.blueprints` on, the supervisor's `directory` is a `JobSources`: names that start
with `colony.` are files of `<state>/blueprints/` (written by the reconciler only, atomically, so
a crash leaves the old file or the new, and loaded at start like the jobs directory's, before
anything is asked of the server); every other name is the jobs directory's. A job file of the
jobs directory named `colony.*` is ignored, with the reason in the log: a local file and a
blueprint never share a name. The manifest (`.manifest.json` there) says which blueprint and
generation each file came from.
"""
from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING

from ..jobfiles.jobsdir import JobsDirectory, write_atomically
from ..jobfiles.names import SUFFIX
from .blueprint_spec import PREFIX

if TYPE_CHECKING:
    from ..lifecycle.supervisor import Supervisor

log = logging.getLogger("taskmasterd.colonies")
MANIFEST = ".manifest.json"  # hidden: never taken for a job file
MANIFEST_MODE = 0o600
RESERVED = f"names starting with {PREFIX!r} are kept for the colony's blueprints"


class ColonyJobs(JobsDirectory):
    """`<state>/blueprints/`: only `colony.*` files, and the manifest."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        os.makedirs(path, mode=0o700, exist_ok=True)
        self.manifest: dict[str, dict[str, object]] = self._read_manifest()  # job -> {blueprint, generation}

    def job_name(self, filename: str) -> str | None:
        name = super().job_name(filename)
        return name if name is not None and name.startswith(PREFIX) else None

    def _read_manifest(self) -> dict[str, dict[str, object]]:
        try:
            with open(os.path.join(self.path, MANIFEST), encoding="utf-8") as src:
                found = json.load(src)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # rebuilt at the first reconciliation
            log.warning("%s: unreadable (%s); the blueprints' generations are learnt again", MANIFEST, exc)
            return {}
        return {job: entry for job, entry in found.items() if isinstance(entry, dict)} if isinstance(found, dict) else {}

    def save_manifest(self) -> None:
        """Atomically (temp file, fsync, rename): blocking, for a worker thread."""
        data = json.dumps(self.manifest, indent=1, sort_keys=True).encode()
        write_atomically(os.path.join(self.path, MANIFEST), data, MANIFEST_MODE)

    def blueprint_of(self, job: str) -> dict[str, object] | None:
        return self.manifest.get(job)


class JobSources(JobsDirectory):
    """The jobs directory (this object, to the supervisor) and the colony's jobs, seen as one
    directory: each name goes to the one source that owns it. What the jobs directory grows
    later is the jobs directory's unless routed here."""

    def __init__(self, path: str, colony: ColonyJobs, colony_name: str) -> None:
        super().__init__(path)
        self.colony = colony
        self._colony_name = colony_name

    def _owned(self, name: str) -> bool:
        return name.startswith(PREFIX)

    def path_of(self, name: str) -> str:
        return self.colony.path_of(name) if self._owned(name) else super().path_of(name)

    def names(self) -> set[str]:
        return super().names() | self.colony.names()  # job_name() keeps the local colony.* files out

    def job_name(self, filename: str) -> str | None:
        """The local job a file of the jobs directory defines (for its watcher, and names())."""
        name = super().job_name(filename)
        if name is not None and self._owned(name):
            self.ignored(filename, RESERVED)
            self.note_unloadable(filename, RESERVED)
            return None
        return name

    def read(self, name: str) -> bytes | None:
        return self.colony.read(name) if self._owned(name) else super().read(name)

    def write(self, name: str, data: bytes) -> None:
        if self._owned(name):
            self.colony.write(name, data)
        else:
            super().write(name, data)

    def remove(self, name: str) -> None:
        if self._owned(name):
            self.colony.remove(name)
        else:
            super().remove(name)

    def refuses_change(self, name: str) -> str | None:
        if not self._owned(name):
            return None
        entry = self.colony.blueprint_of(name)
        if entry is None:
            return f"job names starting with {PREFIX!r} are kept for the ColonyOS blueprints of colony {self._colony_name!r}"
        return (f"job {name!r} comes from the ColonyOS blueprint {entry.get('blueprint')!r} of colony "
                f"{self._colony_name!r}: the colony owns it; change or remove the blueprint instead")


def install(supervisor: Supervisor, colony_name: str) -> JobSources:
    """Make the supervisor see the colony's jobs beside the jobs directory's: before it opens."""
    os.makedirs(supervisor.state_dir, mode=0o700, exist_ok=True)
    sources = JobSources(supervisor.directory.path, ColonyJobs(os.path.join(supervisor.state_dir, "blueprints")),
                         colony_name)
    supervisor.directory = sources  # type: ignore[assignment]
    return sources
