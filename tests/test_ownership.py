"""One owner of every process: verbs racing on one job, numprocs changes, spawn failures, crash
loops and crash-recovery records — with the Supervisor in this process and real processes."""
import asyncio
import errno
import os
import signal
import time

import pytest

from taskmasterd.processes import orphans
from taskmasterd.processes import table as processes
from taskmasterd.lifecycle.job import Job
from taskmasterd.jobfiles.jobfile import JobSpec
from taskmasterd.processes.orphans import Journal, find_leftovers, identity, read_journal, start_ticks, stop_leftovers
from taskmasterd.lifecycle.states import State

from .support.daemon import pid_alive, write_job
from .support.processes import comm, marked, new_mark
from .support.supervised import eventually, reach, run, supervised

S = State
# Ignores SIGTERM (inherited across exec), so every stop lasts its stoptime.
STUBBORN = ["sh", "-c", "trap '' TERM; exec sleep 300"]


def stubborn(mark, **fields):
    return {"cmd": STUBBORN, "starttime": 0.3, "stoptime": 1, "env": mark, **fields}


def test_start_and_repair_during_delete_are_answered_and_start_nothing(tmp_path):
    mark = new_mark()

    async def scenario():
        async with supervised(tmp_path, {"slow": stubborn(mark)}) as sup:
            await reach(sup.jobs["slow"].instances[0], S.RUNNING)
            deleting = asyncio.create_task(sup.delete("slow"))
            await asyncio.sleep(0.1)  # the delete is waiting out the stoptime now
            late = [asyncio.create_task(verb("slow")) for verb in (sup.start, sup.repair, sup.stop, sup.kill)]
            replies = await asyncio.wait_for(asyncio.gather(deleting, *late), 10)
            assert replies[0].response == "success"
            assert all(r.response == "fail" and "does not exist" in r.error for r in replies[1:]), replies
            assert "slow" not in sup.jobs and not sup.processes.children
            assert not marked(mark)
        assert not marked(mark)

    run(scenario())


def test_numprocs_decrease_then_shutdown_leaves_nothing(tmp_path):
    mark = new_mark()
    # Instance 0 stops at once; the others ignore SIGTERM and linger for the whole stoptime.
    job = {"cmd": ["sh", "-c", 'test "$TASKMASTER_INSTANCE" = 0 || trap "" TERM; exec sleep 300'],
           "starttime": 0, "stoptime": 3, "env": mark}

    async def scenario():
        async with supervised(tmp_path, {"w": {**job, "numprocs": 3}}, watch=False) as sup:
            await eventually(lambda: len(marked(mark)) == 3, what="three instances")
            write_job(tmp_path / "jobs", "w", {**job, "numprocs": 1})
            assert (await sup.reload("w", nowait=True)).response == "success"
        # shutdown returned: the two retired instances were waited for like every other
        assert not marked(mark)

    run(scenario())


def test_shrink_then_grow_never_runs_two_processes_for_one_index(tmp_path):
    mark = new_mark()

    def index_one():
        return [pid for pid in marked(mark)
                if open(f"/proc/{pid}/environ", "rb").read().split(b"\0").count(b"TASKMASTER_INSTANCE=1")]

    async def scenario():
        async with supervised(tmp_path, {"w": stubborn(mark, numprocs=2, starttime=0)}, watch=False) as sup:
            # exec'd into sleep: the TERM trap is in place (a stop now lasts the whole stoptime)
            await eventually(lambda: len(marked(mark)) == 2 and all(comm(pid) == "sleep" for pid in marked(mark)),
                             what="two instances past their trap")
            for numprocs in (1, 2):
                write_job(tmp_path / "jobs", "w", stubborn(mark, numprocs=numprocs, starttime=0))
                await sup.reload("w", nowait=True)
            assert len(index_one()) == 1  # still the old process, stopping
            inst = sup.jobs["w"].instances[1]
            assert len(sup.jobs["w"].instances) == 2
            await reach(inst, S.RUNNING, timeout=10)  # the same Instance, respawned after its stop
            # A vfork parent resumes while the child's exec is still setting up its environment:
            # /proc/<pid>/environ may read empty for a moment.
            await eventually(index_one, what="the new index 1 readable in /proc")
            assert len(index_one()) == 1 and inst.restarts == 0
            assert len(sup.jobs["w"].instances) == 2
        assert not marked(mark)

    run(scenario())


def test_a_spawn_that_raises_anything_fails_the_start_and_shutdown_still_stops_the_rest(tmp_path):
    mark = new_mark()

    async def scenario():
        async with supervised(tmp_path, {"later": {"cmd": "sleep 300", "starttime": 0, "env": mark}}) as sup:
            # A spec no job file can produce (validation refuses NUL): the spawn path itself must
            # survive Popen's ValueError and report it.
            job = sup.jobs["nul"] = Job(JobSpec(name="nul", argv=("sle\0ep", "1"), startretries=0), sup.services)
            reply = await sup.start("nul")
            assert reply.response == "fail" and "null byte" in reply.error
            assert job.instances[0].state is S.FATAL
        assert not marked(mark)

    run(scenario())


def test_a_failure_after_the_fork_kills_and_reaps_the_child(tmp_path, monkeypatch):
    mark = new_mark()
    seen = []
    real = processes.ProcessTable._register

    def failing_once(table, popen, *rest):
        if not seen:
            seen.append(popen.pid)
            raise OSError(errno.EMFILE, "Too many open files")
        return real(table, popen, *rest)

    async def scenario():
        monkeypatch.setattr(processes.ProcessTable, "_register", failing_once)
        job = {"cmd": "sleep 300", "starttime": 0, "env": mark, "startretries": 1}
        async with supervised(tmp_path, {"p": job}) as sup:
            inst = sup.jobs["p"].instances[0]
            await reach(inst, S.RUNNING, timeout=10)  # the retry after the backoff worked
            assert inst.failures == 0 and inst.child.pid != seen[0]
            await eventually(lambda: not os.path.exists(f"/proc/{seen[0]}"), 5, "the abandoned child reaped")
            # The kernel fills /proc/PID/environ in a moment after the exec lets the spawner go on.
            await eventually(lambda: marked(mark) == [inst.child.pid], 5, "only the retry's process left")

    run(scenario())


def test_without_descriptors_the_journal_still_identifies_each_child(tmp_path, monkeypatch):
    def no_descriptors(pid, *args):
        raise OSError(errno.EMFILE, "Too many open files")

    async def scenario():
        async with supervised(tmp_path, {"s": {"cmd": "sleep 300", "starttime": 0}}) as sup:
            monkeypatch.setattr(orphans.os, "pidfd_open", no_descriptors)
            assert (await sup.push("t", b'{"cmd": "sleep 300", "starttime": 0}')).response == "success"
            pid = sup.jobs["t"].instances[0].child.pid
            journal = read_journal(str(tmp_path / "state" / "children.json")).live
            assert journal[pid][0] == f"ticks:{start_ticks(pid)}"
            assert pid in {g.pgid for g in find_leftovers(journal)}

    run(scenario())


def test_crash_loop_is_throttled_whatever_starttime_says(tmp_path):
    async def scenario():
        job = {"cmd": "true", "starttime": 0, "autorestart": "always", "stdout": None, "stderr": None}
        async with supervised(tmp_path, {"loop": job}) as sup:
            inst = sup.jobs["loop"].instances[0]
            await asyncio.sleep(3.5)
            # spawns at 0 s, then after 0, 1, 2 s: a handful, not thousands
            assert 2 <= inst.restarts <= 5, inst.restarts
            assert inst.state is S.BACKOFF and "restart in" in inst.description
            assert (await sup.stop("loop")).response == "success"
            assert inst.state is S.STOPPED

    run(scenario())


def test_one_sigkill_of_a_settled_instance_still_restarts_at_once(tmp_path):
    async def scenario():
        async with supervised(tmp_path, {"s": {"cmd": "sleep 300", "starttime": 0}}) as sup:
            inst = sup.jobs["s"].instances[0]
            await asyncio.sleep(1.1)  # settled (a first quick restart is not delayed either: states.restart_delay)
            old = inst.child.pid
            began = time.monotonic()
            os.kill(old, signal.SIGKILL)
            await asyncio.wait_for(inst.wait_until(lambda i: i.restarts == 1 and i.state is S.RUNNING), 5)
            assert time.monotonic() - began < 0.5 and inst.child.pid != old

    run(scenario())


def test_journal_records_each_spawn_at_once_with_boot_relative_start(tmp_path):
    async def scenario():
        async with supervised(tmp_path, {"s": {"cmd": "sleep 300", "starttime": 0, "numprocs": 2}}) as sup:
            pids = [i.child.pid for i in sup.jobs["s"].instances]
            journal = read_journal(str(tmp_path / "state" / "children.json")).live  # no flush delay
            assert {pid: entry[0] for pid, entry in journal.items()} == {pid: identity(pid) for pid in pids}
            assert {g.pgid for g in find_leftovers(journal)} == set(pids)
            # the same pid with another identity is a recycled pid: never ours (either scheme)
            assert not find_leftovers({pid: ("pidfs:1", 15, 1.0) for pid in pids})
            assert {g.pgid for g in find_leftovers({pid: (f"ticks:{start_ticks(pid)}", 15, 1.0) for pid in pids})} \
                == set(pids)
            assert not find_leftovers({pid: (f"ticks:{start_ticks(pid) + 1}", 15, 1.0) for pid in pids})
        assert read_journal(str(tmp_path / "state" / "children.json")) == Journal({})  # clean shutdown: empty

    run(scenario())


@pytest.mark.parametrize("content", [
    b'{"a": 1}', b"[1, 2, 3]", b"[[1]]", b'[[1, 2, 3]]', b"\xff\xfe garbage", b"null",
    b'["+", -5, "pidfs:1", 15, 1]\n["+", "x", "pidfs:1", 15, 1]\n["-"]\n["+", 1, "pidfs:1", 999, 1]\n'
    b'["+", 1, "boot:1", 15, 1]\n["+", 1, 5, 15, 1]\n', b"[" * 100000,
    b'["run"]\n["run", 5]\n["run", ""]\n["run", "../x"]\n["run", "' + b"a" * 65 + b'"]\n["run", "a", "b"]\n',
])
def test_recovery_never_crashes_on_a_journal_of_the_wrong_shape(tmp_path, content):
    path = tmp_path / "children.json"
    path.write_bytes(content)
    assert read_journal(str(path)).run is None
    assert run(stop_leftovers(str(path))) == 0


def test_a_large_journal_is_read_in_well_under_a_second(tmp_path):
    """95 000 lines took 6.7 s (70 µs a line) and held the first answer that long."""
    import orjson

    path = tmp_path / "children.json"
    lines = [orjson.dumps(["run", "abcdef0123456789"])]
    lines += [orjson.dumps(["+", 100000 + i, f"pidfs:{i + 5}", 15, 10.0]) for i in range(95000)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    began = time.perf_counter()
    journal = read_journal(str(path))
    assert time.perf_counter() - began < 1.0
    assert len(journal.live) == 95000 and journal.run == "abcdef0123456789"


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 64 KiB tmpfs for a state directory (root only)."""
    import subprocess

    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_file_system_never_leaves_a_torn_journal_that_loses_later_records(tiny_filesystem):
    """With the disk full, a spawn's line is written in part (or not at all); once there is room
    again, every later record used to be appended to the torn line and lost for good."""
    path = str(tiny_filesystem / "children.json")
    journal = orphans.ChildJournal(path, "abcdef0123456789")
    journal.open()
    journal.started([(1000 + i, f"pidfs:{i + 1}", 15, 1.0) for i in range(3)])
    filler = tiny_filesystem / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)  # fill it up, to the last byte
    try:
        for size in (4096, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    journal.started([(2000 + i, f"pidfs:{i + 100}", 15, 1.0) for i in range(300)])  # fails, in part
    journal.ended(1000)
    filler.unlink()
    journal.started([(3000, "pidfs:999", 15, 1.0)])
    journal.ended(2001)
    live = read_journal(path).live
    assert set(live) == {1001, 1002, 3000} | {2000 + i for i in range(300) if i != 1}
    assert all(line.endswith(b"\n") for line in open(path, "rb").read().splitlines(keepends=True))
    journal.close()
