"""What the notification tests share: the bundled notify program and a directory short enough
for unix socket paths (pytest's tmp_path can be too long)."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

NOTIFY_READY = Path(__file__).resolve().parents[2] / "jobs" / "notify_ready.py"
PYTHON = os.path.realpath(sys.executable)


@contextlib.contextmanager
def short_tempdir() -> Iterator[str]:
    base = tempfile.mkdtemp(prefix="tm-", dir="/tmp")
    try:
        yield base
    finally:
        shutil.rmtree(base)
