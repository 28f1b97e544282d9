"""Spawns made from the spawn thread (a descriptor table of its own), as they are once the daemon
holds many descriptors: real processes, real pipes, the Supervisor in this process."""
import asyncio
import os
import pwd
import signal
import threading
import subprocess
import time

from taskmasterd.kernel.posixspawn import posix_spawn
from taskmasterd.processes.launch import Launch
from taskmasterd.processes.table import THREAD_SPAWN_DESCRIPTORS
from taskmasterd.processes.spawnthread import SpawnThread
from taskmasterd.processes.table import SLOW_EXEC, ProcessTable, SpawnRefused, SpawnTicket
from taskmasterd.lifecycle.states import State

from .support.processes import marked, new_mark
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


# exec copies every argument into the new program's stack while the spawner waits
SLOW_EXEC_ARGS = ("x" * 8,) * 20_000


async def spawned_meanwhile(table: ProcessTable, launch: Launch, ticket: SpawnTicket) -> object:
    """spawn_soon, and what `done` got (None: never called)."""
    results: list[object] = []
    table.spawn_soon(launch, subprocess.DEVNULL, subprocess.DEVNULL, ticket, results.append)
    while table._in_flight:
        await asyncio.sleep(0.001)
    return results[0] if results else None


def test_posix_spawn_lets_the_other_threads_run_while_the_child_is_held_before_its_exec(tmp_path):
    """os.posix_spawn holds the GIL until the exec: a spawn thread would stop the loop as surely
    as an inline spawn. Here the child is held before its exec (opening a FIFO nobody writes yet):
    only a thread that runs meanwhile can let it go."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    spawned: list[int] = []
    thread = threading.Thread(target=lambda: spawned.append(posix_spawn(
        "/bin/true", ["true"], {}, file_actions=[(os.POSIX_SPAWN_OPEN, 0, str(fifo), os.O_RDONLY, 0)])))
    thread.start()
    time.sleep(0.1)
    assert thread.is_alive() and not spawned  # held: the spawner waits for the exec
    writer = os.open(fifo, os.O_WRONLY)  # this thread runs meanwhile, and lets the child go
    thread.join(10)
    os.close(writer)
    assert spawned and os.waitstatus_to_exitcode(os.waitpid(spawned[0], 0)[1]) == 0


def test_posix_spawn_places_streams_starts_a_session_and_says_why_it_cannot(tmp_path):
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    pid = posix_spawn("/bin/sh", ["sh", "-c", "echo $A; ps -o sid= -p $$; trap"], {"A": "b"},
                      file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, fd, 1)],
                      setsid=True, setsigdef=[signal.SIGPIPE])
    os.close(fd)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    words = out.read_text().split()
    assert words[:2] == ["b", str(pid)]  # its environment; the leader of a session of its own
    try:
        posix_spawn("/nonexistent/program", ["x"], {})
    except FileNotFoundError as exc:
        assert exc.filename == "/nonexistent/program"
    else:
        raise AssertionError("spawned a program that does not exist")


def loaded(table: ProcessTable) -> ProcessTable:
    """As on a loaded machine, where a spawn's exec has been taking long: spawns that go through the
    thread go on without the loop."""
    table._exec_wait = SLOW_EXEC
    return table


def threaded(*argv: str, env: dict[str, str] | None = None) -> Launch:
    """A launch that goes through the spawn thread (a directory: the thread takes it for itself)."""
    return Launch(argv, env or {}, cwd="/")


def test_once_execs_are_slow_the_loop_no_longer_waits_for_them():
    async def scenario():
        table = ProcessTable()
        table.open(asyncio.get_running_loop())
        try:
            order: list[str] = []
            launch = threaded("/bin/true", *SLOW_EXEC_ARGS * 5)  # 100 000 arguments: ~30 ms
            table.spawn_soon(launch, subprocess.DEVNULL, subprocess.DEVNULL, SpawnTicket(lambda: None),
                             lambda child: order.append("first made"))
            order.append("first returned")  # an idle machine: quicker to wait than to hand over
            table.spawn_soon(launch, subprocess.DEVNULL, subprocess.DEVNULL, SpawnTicket(lambda: None),
                             lambda child: order.append("second made"))
            order.append("second returned")
            await table.queue_flushed()
            assert order == ["first made", "first returned", "second returned", "second made"]
            # A plain launch of a small daemon stays inline all the same: cheaper in a burst.
            table.spawn_soon(Launch(("/bin/true",), {}), subprocess.DEVNULL, subprocess.DEVNULL,
                             SpawnTicket(lambda: None), lambda child: order.append("plain made"))
            assert order[-1] == "plain made"
        finally:
            table.close()

    run(scenario())


def test_spawn_soon_reports_on_a_later_loop_iteration_and_the_loop_runs_meanwhile():
    async def scenario():
        table = loaded(ProcessTable())
        table.open(asyncio.get_running_loop())
        try:
            order: list[str] = []
            table.spawn_soon(threaded("/bin/true", *SLOW_EXEC_ARGS), subprocess.DEVNULL, subprocess.DEVNULL,
                             SpawnTicket(lambda: None), lambda child: order.append("landed"))
            order.append("returned")
            asyncio.get_running_loop().call_soon(order.append, "the loop ran")
            await table.queue_flushed()
            assert order == ["returned", "the loop ran", "landed"]
        finally:
            table.close()

    run(scenario())


def test_a_job_of_another_user_gets_its_ids_directory_and_umask_and_the_daemon_keeps_its_own(tmp_path):
    """The spawn thread takes them for itself around a posix_spawn (no fork of the daemon)."""
    report = ("id -u; id -g; id -G; pwd; umask; grep -E '^(Uid|Gid|CapPrm|CapEff|SigBlk):' /proc/self/status; "
              "exec sleep 300")
    workdir = tmp_path / "work"
    workdir.mkdir()

    async def scenario():
        job = {"cmd": ["sh", "-c", report], "user": "nobody", "workingdir": str(workdir), "umask": "027",
               "starttime": 0}
        before = (os.getresuid(), os.getresgid(), os.getcwd(), os.getgroups())
        async with supervised(tmp_path, {"who": job}) as sup:
            inst = sup.jobs["who"].instances[0]
            await reach(inst, S.RUNNING)
            out = tmp_path / "logs" / "who.0.out"
            text = await eventually(lambda: out.exists() and "CapEff" in out.read_text() and out.read_text(),
                                    what="its report")
            assert (os.getresuid(), os.getresgid(), os.getcwd(), os.getgroups()) == before
        lines = text.splitlines()
        nobody = pwd.getpwnam("nobody")
        assert lines[0] == str(nobody.pw_uid) and lines[1] == str(nobody.pw_gid)
        assert set(lines[2].split()) == {str(g) for g in os.getgrouplist("nobody", nobody.pw_gid)}
        assert lines[3:5] == [str(workdir), "0027"]
        fields = dict(line.split(":", 1) for line in lines[5:])
        assert fields["Uid"].split() == [str(nobody.pw_uid)] * 4  # real, effective, saved, fs: no way back
        assert fields["Gid"].split() == [str(nobody.pw_gid)] * 4
        assert int(fields["CapPrm"], 16) == 0 and int(fields["CapEff"], 16) == 0
        assert int(fields["SigBlk"], 16) == 0  # the spawn thread blocks every signal; its children none

    run(scenario())


def test_a_spawn_cancelled_while_the_thread_makes_it_is_killed_and_never_reported():
    mark = new_mark()

    async def scenario():
        table = loaded(ProcessTable(adopt_orphans=True))
        table.open(asyncio.get_running_loop())
        try:
            ticket = SpawnTicket(lambda: None)
            launch = threaded("/bin/sh", "-c", "exec sleep 300", "sh", *SLOW_EXEC_ARGS, env=mark)
            landing = asyncio.ensure_future(spawned_meanwhile(table, launch, ticket))
            await asyncio.sleep(0)  # handed over
            ticket.cancel()  # a stop, while the thread makes it
            result = await landing
            assert result is None  # nobody is told of a spawn nobody wants any more
            await eventually(lambda: not marked(mark) and not table._abandoned, 5, "the process killed and reaped")
        finally:
            await table.drain()
            table.close()

    run(scenario())


def test_shutdown_waits_for_a_spawn_under_way_and_leaves_nothing():
    mark = new_mark()

    async def scenario():
        table = loaded(ProcessTable(adopt_orphans=True))
        table.open(asyncio.get_running_loop())
        results: list[object] = []
        table.spawn_soon(threaded("/bin/sh", "-c", "exec sleep 300", "sh", *SLOW_EXEC_ARGS, env=mark),
                         subprocess.DEVNULL, subprocess.DEVNULL, SpawnTicket(lambda: None), results.append)
        await table.drain()  # while the thread makes it
        table.close()
        assert len(results) == 1 and isinstance(results[0], SpawnRefused)
        assert not marked(mark)

    run(scenario())


def test_a_stop_while_the_thread_makes_the_spawn_ends_stopped_with_nothing_left(tmp_path):
    """The instance is STARTING with its spawn in flight (behind a slow one); the stop cancels the
    run's ticket, and what the thread makes is killed, never reported; a start afterwards spawns anew."""
    mark = new_mark()

    async def scenario():
        job = {"cmd": ["sleep", "300"], "starttime": 0, "env": mark, "autostart": False, "workingdir": "/"}
        async with supervised(tmp_path, {"quick": job}) as sup:
            inst = sup.jobs["quick"].instances[0]
            table = loaded(sup.processes)
            ahead: list[object] = []
            table.spawn_soon(threaded("/bin/true", *SLOW_EXEC_ARGS * 5), subprocess.DEVNULL,
                             subprocess.DEVNULL, SpawnTicket(lambda: None), ahead.append)  # ~30 ms of exec
            starting = asyncio.ensure_future(sup.start("quick"))
            while table._in_flight < 2:
                await asyncio.sleep(0)
            assert inst.state is S.STARTING and inst.child is None
            assert (await sup.stop("quick")).response == "success"
            assert inst.state is S.STOPPED
            await starting
            await eventually(lambda: ahead and not table._in_flight, 10, "both spawns landed")
            await eventually(lambda: not marked(mark), 10, "the cancelled spawn's process killed")
            assert inst.state is S.STOPPED and inst.child is None
            loaded(table)
            assert (await sup.start("quick")).response == "success"  # through the thread again
            assert inst.state is S.RUNNING
            await eventually(lambda: marked(mark) == [inst.child.pid], 5, "only the new spawn")

    run(scenario())
