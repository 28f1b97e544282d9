"""The host's hardware as an executor reports it when it registers (Executor.capabilities)."""
from __future__ import annotations

import asyncio
import logging
import os
import platform
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

import psutil

from ..processes.spawner import inherited_environment

if TYPE_CHECKING:
    from ..processes.table import ProcessTable

log = logging.getLogger("taskmasterd.colonies")
_NVIDIA_SMI_TIMEOUT = 5.0
_NVIDIA_SMI_OUTPUT = 64 * 1024  # more than any GPU list; the rest is not read
_NO_GPU = {"name": "", "mem": "0Mi", "count": 0, "nodecount": 0}


async def host_capabilities(processes: ProcessTable) -> dict[str, Any]:
    """Probed once per daemon: psutil off the event loop, then nvidia-smi if it is installed
    (spawned by the daemon's process table, like every process the daemon starts)."""
    hardware = await asyncio.to_thread(_hardware)
    hardware["gpu"] = await _gpus(processes)
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


async def _gpus(processes: ProcessTable) -> dict[str, Any]:
    from ..processes.launch import Launch

    program = shutil.which("nvidia-smi")
    if program is None:
        return _NO_GPU
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        launch = Launch(argv=(program, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"),
                        env=inherited_environment(os.environ), stoptime=1.0)
        child = processes.spawn(launch, write_fd, subprocess.DEVNULL)
    except Exception as exc:  # informative only: whatever fails means "no GPU"
        os.close(read_fd)
        log.warning("nvidia-smi failed (%s); reporting no GPU", exc)
        return _NO_GPU
    finally:
        os.close(write_fd)
    reader = asyncio.StreamReader(limit=_NVIDIA_SMI_OUTPUT)
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0))
    out = b""
    try:
        async with asyncio.timeout(_NVIDIA_SMI_TIMEOUT):
            while len(out) < _NVIDIA_SMI_OUTPUT and (chunk := await reader.read(_NVIDIA_SMI_OUTPUT - len(out))):
                out += chunk
            returncode = await child.exited
    except TimeoutError:
        log.warning("nvidia-smi gave no answer in %g s; reporting no GPU", _NVIDIA_SMI_TIMEOUT)
        await child.kill()
        return _NO_GPU
    finally:
        transport.close()
    rows = [line.rsplit(",", 1) for line in out.decode(errors="replace").splitlines() if "," in line]
    if returncode != 0 or not rows:
        return _NO_GPU
    name, mem = rows[0][0].strip(), rows[0][1].strip()
    return {"name": name, "mem": f"{mem}Mi" if mem.isdigit() else "0Mi", "count": len(rows), "nodecount": 1}
