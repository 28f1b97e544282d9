"""Executor keys: one file per job in `<state_dir>/colonies/`, mode 0600, replaced atomically.

A file is `{"executorname": …, "prvkey": …}` as the daemon writes it. An operator who registered
an executor by hand may instead drop the bare 64-hex private key in `<job>.key`; the executor name
then comes from the job file. No key ever appears in a message or a repr.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field

from .crypto import derive_id

_HEX_KEY = re.compile(r"[0-9a-f]{64}")


class KeyStoreError(ValueError):
    """A key file that cannot be used; the message names the file, never its content."""


@dataclass(frozen=True)
class ExecutorKey:
    executorname: str | None  # None: whatever the job file names (operator-provided bare key)
    prvkey: str = field(repr=False)

    @property
    def executorid(self) -> str:
        return derive_id(self.prvkey)


class KeyStore:
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, job: str) -> str:
        return os.path.join(self.directory, f"{job}.key")  # job names are safe file names

    def load(self, job: str) -> ExecutorKey | None:
        path = self.path(job)
        try:
            with open(path, encoding="utf-8") as src:
                text = src.read().strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyStoreError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        if _HEX_KEY.fullmatch(text.lower()):
            return ExecutorKey(None, text.lower())
        try:
            document = json.loads(text)
            name, prvkey = document.get("executorname"), str(document["prvkey"]).lower()
        except (ValueError, TypeError, KeyError, AttributeError):
            raise KeyStoreError(f"{path}: want a 64-hex private key or {{\"executorname\", \"prvkey\"}}") from None
        if not _HEX_KEY.fullmatch(prvkey) or not (name is None or isinstance(name, str) and name):
            raise KeyStoreError(f"{path}: invalid executor name or private key")
        return ExecutorKey(name, prvkey)

    def save(self, job: str, key: ExecutorKey) -> None:
        """Write through a private temp file, fsync, rename: a crash leaves the old key or the new."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = self.path(job)
        tmp = f"{path}.{os.getpid()}.tmp"
        data = json.dumps({"executorname": key.executorname, "prvkey": key.prvkey}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # a stale temp file may have had other bits
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._sync_directory()

    def remove(self, job: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(job))
            self._sync_directory()

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
