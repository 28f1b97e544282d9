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


def test_the_units_name_documentation_and_a_command_the_readme_installs() -> None:
    """A newcomer following the README's "Installing" on a PEP 668 system ends with the unit's
    ExecStart and with every page its Documentation= names."""
    readme = (ROOT / "README.md").read_text()
    install = readme[readme.index("## Installing"):readme.index("## A look at what runs")]
    assert "python3 -m venv /opt/taskmaster" in install and "/opt/taskmaster/bin/pip install" in install
    assert "ln -s /opt/taskmaster/bin/taskmasterd /opt/taskmaster/bin/taskmasterctl /usr/local/bin/" in install
    assert "install -Dm644 taskmaster/README.md taskmaster/docs/*.md -t /usr/share/doc/taskmaster/" in install
    installed = {"README.md"} | {path.name for path in (ROOT / "docs").glob("*.md")}
    for unit in ("taskmasterd.service", "taskmasterd-user.service"):
        lines = (ROOT / "systemd" / unit).read_text().splitlines()
        pages = [page for line in lines if line.startswith("Documentation=") for page in line.split("=", 1)[1].split()]
        assert pages, unit
        for page in pages:
            assert page.startswith("file:/usr/share/doc/taskmaster/"), page
            assert page.rsplit("/", 1)[1] in installed, page  # a page the install step puts there
        (start,) = [line for line in lines if line.startswith("ExecStart=")]
        assert start.split("=", 1)[1].split()[0] == "/usr/local/bin/taskmasterd"
