"""The host report of a registering executor, nvidia-smi included (a stand-in on PATH)."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from taskmasterd.colonies import capabilities
from taskmasterd.processes.table import ProcessTable
from tests.support.supervised import run


async def probe() -> dict[str, Any]:
    table = ProcessTable()
    table.open(asyncio.get_running_loop())
    try:
        report = await capabilities.host_capabilities(table)
        assert not table.children  # nvidia-smi was reaped, whatever it did
        return report
    finally:
        table.close()


def fake_nvidia_smi(directory: Path, body: str) -> None:
    program = directory / "nvidia-smi"
    program.write_text(f"#!/bin/sh\n{body}\n")
    program.chmod(0o755)


@pytest.mark.parametrize("body, gpu", [
    ('printf "Tesla T4, 15360\\nTesla T4, 15360\\n"', {"name": "Tesla T4", "mem": "15360Mi", "count": 2, "nodecount": 1}),
    ("echo broken; exit 9", {"name": "", "mem": "0Mi", "count": 0, "nodecount": 0}),
    ("exec sleep 60", {"name": "", "mem": "0Mi", "count": 0, "nodecount": 0}),
])
def test_gpus_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, gpu: dict) -> None:
    fake_nvidia_smi(tmp_path, body)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(capabilities, "_NVIDIA_SMI_TIMEOUT", 0.5)
    report = run(probe())
    hardware = report["hardware"][0]
    assert hardware["gpu"] == gpu
    assert hardware["cores"] >= 1 and hardware["mem"].endswith("Mi") and hardware["cpu"].endswith("m")


def test_no_nvidia_smi_no_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert run(probe())["hardware"][0]["gpu"]["count"] == 0
