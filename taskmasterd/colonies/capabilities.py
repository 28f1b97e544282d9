"""The host's hardware as an executor reports it when it registers (Executor.capabilities)."""
from __future__ import annotations

import asyncio
import logging
import platform
import shutil
from typing import Any

import psutil

log = logging.getLogger("taskmasterd.colonies")
_NVIDIA_SMI_TIMEOUT = 5.0


async def host_capabilities() -> dict[str, Any]:
    """Probed once per daemon: psutil off the event loop, then nvidia-smi if it is installed."""
    hardware = await asyncio.to_thread(_hardware)
    hardware["gpu"] = await _gpus()
    return {"hardware": [hardware], "software": [{"name": "taskmasterd", "type": "supervisor", "version": ""}]}


def _hardware() -> dict[str, Any]:
    logical = psutil.cpu_count() or 1
    return {
        "model": _cpu_model(),
        "nodes": 1,
        "cpu": f"{logical * 1000}m",
        "cores": psutil.cpu_count(logical=False) or logical,
        "mem": f"{psutil.virtual_memory().total // (1 << 20)}Mi",
        "platform": platform.system().lower(),
        "architecture": platform.machine(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as src:
            for line in src:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor()


async def _gpus() -> dict[str, Any]:
    none = {"name": "", "mem": "0Mi", "count": 0, "nodecount": 0}
    program = shutil.which("nvidia-smi")
    if program is None:
        return none
    try:
        proc = await asyncio.create_subprocess_exec(
            program, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), _NVIDIA_SMI_TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    except (OSError, asyncio.TimeoutError) as exc:
        log.warning("nvidia-smi failed (%s); reporting no GPU", exc)
        return none
    rows = [line.rsplit(",", 1) for line in out.decode(errors="replace").splitlines() if "," in line]
    if proc.returncode != 0 or not rows:
        return none
    name, mem = rows[0][0].strip(), rows[0][1].strip()
    return {"name": name, "mem": f"{mem}Mi" if mem.isdigit() else "0Mi", "count": len(rows), "nodecount": 1}
