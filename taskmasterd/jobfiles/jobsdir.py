"""The jobs directory on disk: which files define jobs, reading one safely, writing one atomically.

Only regular files are read (a symlink to one is fine: the directory is the operator's), opened
non-blocking and size-capped, so a FIFO or a link to /dev/zero can neither hang nor exhaust the
daemon; and only files that nobody may write but those who may write the directory
(safepath.job_file_problem), since a job runs as root by default.
"""
from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile

from .jobfile import MAX_FILE, JobFileError
from .names import SUFFIX, job_name_error
from ..kernel.safepath import job_file_problem, jobs_directory_problem

log = logging.getLogger("taskmasterd")
JOB_FILE_MODE = 0o640
_MAX_REMEMBERED = 10_000  # ignored names already logged, bounded


class JobsDirectory:
    def __init__(self, path: str) -> None:
        self.path = path
        self._ignored_logged: set[str] = set()
        # Files named like job files that cannot be jobs, as the last listing and the watcher's
        # events since have seen them: status shows them without listing the directory each time.
        self._unloadable: dict[str, str] = {}

    def path_of(self, name: str) -> str:
        return os.path.join(self.path, name + SUFFIX)

    def names(self) -> set[str]:
        """The job names of the files in the directory (empty when it is missing)."""
        try:
            entries = os.listdir(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return set()
        names = set()
        self._unloadable.clear()
        for entry in entries:
            name = self.job_name(entry)
            if name is not None:
                names.add(name)
        return names

    def unloadable(self) -> list[tuple[str, str]]:
        """(file name, why) for each file that is named like a job file but cannot be one (its
        name is not a job name: `my job.tm.json`), as the last listing (`names`) and the watcher's
        events since (`job_name`) saw them; status asks at every request, so nothing is read here."""
        return sorted(self._unloadable.items())

    def note_unloadable(self, filename: str, why: str) -> None:
        """A file named like a job file that is no job: kept for status while it is there."""
        if os.path.lexists(os.path.join(self.path, filename)):
            if filename not in self._unloadable and len(self._unloadable) < _MAX_REMEMBERED:
                self._unloadable[filename] = f"ignored: {why}"
        else:
            self._unloadable.pop(filename, None)

    def problem(self) -> str | None:
        """Why the directory's files may not be read (or written) now, or None. Checked at every
        reload, not only at startup: a deploy may swap in a directory everyone may write, and a
        directory that is not there means "wait", never "every job was removed"."""
        try:
            if not os.path.isdir(self.path):
                return f"the jobs directory {self.path} is not there"
            unsafe = jobs_directory_problem(self.path)
        except OSError as exc:
            return f"the jobs directory {self.path} cannot be examined: {exc.strerror}"
        return None if unsafe is None else f"the jobs directory {self.path} is open to everyone: {unsafe}"

    def job_name(self, filename: str) -> str | None:
        """The job `filename` defines, or None; a file ignored for a reason an operator should
        know (a bad name, a near-miss suffix) is logged once."""
        if filename.startswith(".") or filename.endswith(("~", ".swp", ".swx", ".tmp")):
            return None  # hidden and editor files: silently ignored
        if not filename.endswith(SUFFIX):
            if filename.endswith(".json") or ".tm." in filename:
                self.ignored(filename, f"job files end in {SUFFIX}")
            return None
        name = filename[: -len(SUFFIX)]
        problem = job_name_error(name)
        if problem:
            self.ignored(filename, problem)
            if not filename.startswith("."):
                self.note_unloadable(filename, problem)
            return None
        return name

    def ignored(self, filename: str, why: str) -> None:
        """Say once in the log that a file of the directory is not a job, and why."""
        if filename in self._ignored_logged or len(self._ignored_logged) >= _MAX_REMEMBERED:
            return
        self._ignored_logged.add(filename)
        log.info("ignoring %s in %s: %s", filename, self.path, why)

    def read(self, name: str) -> bytes | None:
        """The bytes of `name`'s file; None when there is none; JobFileError when it is not a
        regular file, too large, or unreadable."""
        path = self.path_of(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise JobFileError([f"{path}: cannot read: {exc.strerror}"]) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise JobFileError([f"{path}: not a regular file"])
            if info.st_size > MAX_FILE:
                raise JobFileError([f"{path}: larger than {MAX_FILE} bytes"])
            untrusted = job_file_problem(path, info, os.stat(self.path))
            if untrusted is not None:
                raise JobFileError([f"{path}: not read: {untrusted}"])
            chunks, total = [], 0
            while chunk := os.read(fd, MAX_FILE + 1 - total):
                chunks.append(chunk)
                total += len(chunk)
                if total > MAX_FILE:
                    raise JobFileError([f"{path}: larger than {MAX_FILE} bytes"])
            return b"".join(chunks)
        except OSError as exc:
            raise JobFileError([f"{path}: cannot read: {exc.strerror}"]) from None
        finally:
            os.close(fd)

    def refuses_change(self, name: str) -> str | None:
        """Why a client may not push or delete job `name` here, or None. The jobs directory
        refuses no name; a source that owns some (colonies/jobsource.py) says why."""
        return None

    def write(self, name: str, data: bytes) -> None:
        """Temp file in the same directory (hidden, so the watcher ignores it), fsync, rename,
        fsync the directory; the file is 0640."""
        write_atomically(self.path_of(name), data, JOB_FILE_MODE)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path_of(name))


def unloadable_name(filename: str) -> str | None:
    """Why a file with the job-file suffix cannot define a job (its name), or None."""
    if not filename.endswith(SUFFIX) or filename.startswith("."):
        return None
    problem = job_name_error(filename[: -len(SUFFIX)])
    return None if problem is None else f"ignored: {problem}"


def write_atomically(path: str, data: bytes, mode: int) -> None:
    directory, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
