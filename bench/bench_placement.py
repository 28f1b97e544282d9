"""What a cgroup per spawn costs (run by hand, as root, where a cgroup2 hierarchy is writable):
`python bench/bench_placement.py`.

Times, per spawn of `sleep`: a plain posix_spawn; the same spawn with its cell made and the
spawning thread placed in it (containment.Cell.placed); the same with v1 memory, cpu and pids
cells too (a job with memory_max, cpu_quota and tasks_max on a hybrid host); and the cell's
end (cgroup.kill, the wait for cgroup.events to say empty, rmdir).
"""
from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from taskmasterd.jobfiles.resources import NO_RESOURCES, Resources  # noqa: E402
from taskmasterd.processes.containment import choose  # noqa: E402

COUNT = 300


def spawn(placement=None) -> int:
    if placement is None:
        return os.posix_spawn("/bin/sleep", ["sleep", "100"], {}, setsid=True)
    with placement():
        return os.posix_spawn("/bin/sleep", ["sleep", "100"], {}, setsid=True)


async def measure(resources: Resources) -> tuple[list[float], list[float]]:
    state = tempfile.mkdtemp(prefix="bench-placement-")
    containment = choose(state, "cgroup2")
    starts, ends = [], []
    try:
        for spawn_id in range(COUNT):
            began = time.perf_counter()
            cell = containment.cell("bench.0", "run", spawn_id, resources, 15, 1.0)
            pid = spawn(cell.placed)
            if resources.controllers():
                cell.apply(resources)
            starts.append(time.perf_counter() - began)
            began = time.perf_counter()
            empty = asyncio.get_running_loop().create_future()
            cell.kill()
            os.waitpid(pid, 0)
            cell.when_empty(lambda: empty.done() or empty.set_result(None))
            await empty
            cell.remove()
            ends.append(time.perf_counter() - began)
    finally:
        containment.close()
    return starts, ends


def main() -> None:
    plain = []
    for _ in range(COUNT):
        began = time.perf_counter()
        pid = spawn()
        plain.append(time.perf_counter() - began)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    us = 1e6
    print(f"plain posix_spawn                          p50 {statistics.median(plain) * us:6.0f} us")
    starts, ends = asyncio.run(measure(NO_RESOURCES))
    print(f"cell made + placed spawn (v2)              p50 {statistics.median(starts) * us:6.0f} us")
    print(f"cell's end (kill, empty, rmdir)            p50 {statistics.median(ends) * us:6.0f} us")
    limited = Resources(memory_max=64 << 20, cpu_quota=50, tasks_max=100)
    starts, ends = asyncio.run(measure(limited))
    print(f"... with memory, cpu, pids limits          p50 {statistics.median(starts) * us:6.0f} us")
    print(f"... their end                              p50 {statistics.median(ends) * us:6.0f} us")
    print(f"load: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
