"""The package as an operator receives it: one version, an SPDX license, docs and unit in the sdist."""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import taskmasterd
from tests.support.daemon import ROOT


def test_the_sdist_carries_license_docs_and_unit_and_builds_without_warnings(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c",
         "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    assert "Deprecat" not in build.stdout + build.stderr
    name = build.stdout.split()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        members = {member.split("/", 1)[1] for member in sdist.getnames() if "/" in member}
        metadata = sdist.extractfile(f"taskmaster-{taskmasterd.__version__}/PKG-INFO").read().decode()
    assert {"LICENSE", "systemd/taskmasterd.service", "docs/protocol.md", "docs/taskmasterctl.md"} <= members
    assert f"Version: {taskmasterd.__version__}" in metadata
    assert "License-Expression: MIT" in metadata and "Classifier: Operating System :: POSIX :: Linux" in metadata
