"""Spawns made from the spawn thread (a descriptor table of its own), as they are once the daemon
holds many descriptors: real processes, real pipes, the Supervisor in this process."""
import os
import signal
import subprocess
import time

from taskmasterd.processes.launch import Launch
from taskmasterd.processes.table import THREAD_SPAWN_DESCRIPTORS
from taskmasterd.processes.spawnthread import SpawnThread
from taskmasterd.lifecycle.states import State

from .support.supervised import eventually, reach, run, supervised

S = State
# Prints the descriptors it was given, then a line on each stream, and lives on.
TALKER = ["sh", "-c", "ls /proc/self/fd; echo out-$TASKMASTER_INSTANCE; echo err >&2; exec sleep 300"]


def hold_descriptors(count: int) -> list[int]:
    return [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(count)]


def forked_by_other_threads() -> set[int]:
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        if int(task) != os.getpid():
            with open(f"/proc/self/task/{task}/children") as src:
                found.update(int(pid) for pid in src.read().split())
    return found


def test_children_of_the_spawn_thread_are_supervised_like_any_other(tmp_path):
    held = hold_descriptors(THREAD_SPAWN_DESCRIPTORS + 100)  # so the spawns go through the thread

    async def scenario():
        job = {"cmd": TALKER, "starttime": 0, "numprocs": 3}
        async with supervised(tmp_path, {"talk": job}) as sup:
            instances = sup.jobs["talk"].instances
            for inst in instances:
                await reach(inst, S.RUNNING)
            assert {inst.child.pid for inst in instances} <= forked_by_other_threads()
            logs = tmp_path / "logs"
            for index in range(3):
                out = await eventually(lambda: (logs / f"talk.{index}.out").exists()
                                       and f"out-{index}" in (logs / f"talk.{index}.out").read_text(), what="output")
                assert out
                listing = (logs / f"talk.{index}.out").read_text().split()
                # 0, 1, 2 and the fd `ls` itself opens: none of the daemon's thousand descriptors
                assert len([word for word in listing if word.isdigit()]) <= 4, listing
                await eventually(lambda: (logs / f"talk.{index}.err").exists()
                                 and "err" in (logs / f"talk.{index}.err").read_text(), what="stderr")
            # The exit of a thread's child is heard (SIGCHLD reaches the loop) and it comes back.
            victim = instances[1].child.pid
            began = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            await eventually(lambda: instances[1].child is not None and instances[1].child.pid != victim
                             and instances[1].state is S.RUNNING, what="restart")
            assert time.monotonic() - began < 5
            old = [inst.child.pid for inst in instances]
            assert (await sup.stop("talk")).response == "success"
            assert all(not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
                       for pid in old)

    try:
        run(scenario())
    finally:
        for fd in held:
            os.close(fd)


def test_output_is_captured_to_the_last_byte(tmp_path):
    held = hold_descriptors(THREAD_SPAWN_DESCRIPTORS + 100)

    async def scenario():
        job = {"cmd": ["head", "-c", "300000", "/dev/zero"], "starttime": 0, "autorestart": "never"}
        async with supervised(tmp_path, {"bulk": job}) as sup:
            inst = sup.jobs["bulk"].instances[0]
            await reach(inst, S.EXITED)
            out = tmp_path / "logs" / "bulk.0.out"
            await eventually(lambda: out.exists() and out.stat().st_size == 300000, what="every byte")

    try:
        run(scenario())
    finally:
        for fd in held:
            os.close(fd)


def test_the_thread_keeps_no_descriptor_of_the_loop_and_reports_spawn_errors():
    held = hold_descriptors(50)
    thread = SpawnThread(-1)
    try:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        for program in ("/bin/sh", None):  # posix_spawn, and Popen (no program: it searches PATH)
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            child = thread.start(Launch(("sh", "-c", "echo hi; ls /proc/self/fd"), dict(os.environ)), program,
                                 write_end, subprocess.DEVNULL)
            os.close(write_end)
            out = b""
            while chunk := os.read(read_end, 1000):  # EOF: no copy of the write end survives in the thread
                out += chunk
            os.close(read_end)
            assert out.split()[0] == b"hi"
            assert len(out.split()) <= 5, out  # 0, 1, 2 and the fd `ls` opens: no copy of the passed end
            assert os.waitstatus_to_exitcode(os.waitpid(child.pid, 0)[1]) == 0
        for program in ("/nonexistent/program", None):
            try:
                thread.start(Launch(("/nonexistent/program",), {}), program, subprocess.DEVNULL, subprocess.DEVNULL)
            except FileNotFoundError as exc:
                assert exc.filename == "/nonexistent/program"
            else:
                raise AssertionError("a missing program must raise as Popen does")
    finally:
        thread.close()
        for fd in held:
            os.close(fd)
