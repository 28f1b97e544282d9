"""A cgroup per spawn, with real daemons, processes and cgroups (this machine: a hybrid layout —
cgroup2 without controllers for containment and events, cgroup v1 memory, cpu, pids for limits).

Every daemon here removes its subtree when it stops; `no_cgroup_left` checks it."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from taskmasterd.kernel import cgroup
from taskmasterd.processes.containment import choose, subtree_name

from .support.daemon import ROOT, Daemon, pid_alive, wait_for
from .support.processes import marked, new_mark

LAYOUT = cgroup.current_layout()
CGROUP2 = choose("/nonexistent/probe", "auto", LAYOUT) if LAYOUT.v2 is not None else None
pytestmark = pytest.mark.skipif(CGROUP2 is None or CGROUP2.kind != "cgroup2",
                                reason=f"no writable cgroup2 here: {CGROUP2 and CGROUP2.reason}")
if CGROUP2 is not None:
    CGROUP2.close()  # the probe's own subtree


def cgroups_of(pid):
    """{"": v2 path, "memory": v1 path, ...} of a process."""
    found = {}
    with open(f"/proc/{pid}/cgroup") as src:
        for line in src:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                found[name] = path
    return found


def v2_dir(pid):
    return LAYOUT.v2.directory(cgroups_of(pid)[""])


def v1_dir(pid, controller):
    return LAYOUT.v1[controller].directory(cgroups_of(pid)[controller])


def subtrees(daemon):
    """Every directory of the daemon's subtree, in each hierarchy."""
    name = subtree_name(os.path.abspath(daemon.state_dir))
    found = []
    for hierarchy in [LAYOUT.v2, *LAYOUT.v1.values()]:
        for base in {hierarchy.mountpoint, hierarchy.own}:
            if os.path.isdir(os.path.join(base, name)):
                found.append(os.path.join(base, name))
    return found


def accounted(daemon, job):
    """The instances of `job` with their figures (status's accounting option)."""
    reply = daemon.request("status", job, data=b'{"accounting":true}')
    assert reply["response"] == "status", reply
    return reply["data"]["jobs"][0]["instances"]


def assert_no_cgroup_left(daemon):
    assert not subtrees(daemon), "the daemon left its cgroups behind"


ESCAPES = ("(setsid sh -c 'trap \"\" TERM; sleep 301' &); "  # double fork + setsid, deaf to SIGTERM
           "python3 -c 'import os; os.setsid(); os.execvp(\"sleep\", [\"sleep\", \"302\"])' & "
           "exec sleep 300")


def test_each_spawn_is_born_in_a_cell_of_its_own_and_a_restart_gets_a_new_one(tmp_path):
    job = {"cmd": ["sh", "-c", "cat /proc/self/cgroup; exec sleep 300"], "starttime": 0}
    daemon = Daemon(tmp_path, {"web": job}).start()
    try:
        first = daemon.instances("web")[0]["pid"]
        cell = v2_dir(first)
        assert os.path.dirname(cell).endswith(subtree_name(os.path.abspath(daemon.state_dir)))
        assert os.path.basename(cell).startswith("web.0.")
        # the program's first instruction already ran there: what it printed at once says so
        log = tmp_path / "logs" / "web.0.out"
        out = wait_for(lambda: log.exists() and log.read_text(), 5, what="its output")
        assert "0::" + cgroups_of(first)[""] in out.splitlines()
        assert daemon.status()["daemon"]["containment"] == "cgroup2"
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: (daemon.instances("web")[0]["pid"] or first) != first
                          and daemon.instances("web")[0]["pid"], 10, what="the restart")
        assert v2_dir(second) != cell
        assert not os.path.exists(cell) or not cgroup.members(cell)  # empty before the restart...
        wait_for(lambda: not os.path.exists(cell), 5, what="the old cell removed")  # ...and removed soon
    finally:
        daemon.stop()
    assert_no_cgroup_left(daemon)


def test_setsid_and_double_forked_processes_go_with_their_instance_and_stopped_means_empty(tmp_path):
    mark = new_mark()
    job = {"cmd": ["sh", "-c", ESCAPES], "starttime": 0, "stoptime": 1, "env": mark}
    with Daemon(tmp_path, {"esc": job, "other": {**job, "env": {**mark, "OTHER": "1"}}}) as daemon:
        leader = daemon.instances("esc")[0]["pid"]
        cell = v2_dir(leader)
        wait_for(lambda: len(cgroup.members(cell)) >= 4, 10, what="leader and two escapes in the cell")
        other = daemon.instances("other")[0]["pid"]
        assert daemon.request("stop", "esc")["response"] == "success"
        # one escape ignores SIGTERM: the leader's exit kills the cell; STOPPED once it is empty
        assert daemon.instances("esc")[0]["state"] == "STOPPED"
        assert not os.path.exists(cell) or not cgroup.members(cell)
        assert pid_alive(other) and len(cgroup.members(v2_dir(other))) >= 4  # the other job untouched
    assert not marked(mark)
    assert_no_cgroup_left(daemon)


def test_what_the_leader_leaves_in_its_cell_is_killed_at_its_exit(tmp_path):
    mark = new_mark()
    job = {"cmd": ["sh", "-c", "(setsid sleep 303 &); sleep 0.5; exit 3"], "starttime": 0,
           "autorestart": "never", "env": mark}
    with Daemon(tmp_path, {"quick": job}) as daemon:
        wait_for(lambda: daemon.instances("quick")[0]["state"] == "EXITED", 10, what="the exit")
        assert daemon.instances("quick")[0]["exitcode"] == 3
        assert not marked(mark)


def test_a_killed_daemons_cells_are_drained_without_its_journal(tmp_path):
    """Recovery is by cgroup: the next daemon trusts no pid list, so a journal lost or forged
    changes nothing."""
    mark = new_mark()
    job = {"cmd": ["sh", "-c", ESCAPES], "starttime": 0, "stoptime": 1, "env": mark}
    first = Daemon(tmp_path, {"esc": job}).start()
    try:
        wait_for(lambda: len(marked(mark)) >= 4, 10, what="leader and escapes")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    finally:
        first.stop()
    # A bystander of the same name and environment, outside any cell of ours: never signalled.
    bystander = subprocess.Popen(["sleep", "300"], env={**os.environ, **mark}, start_new_session=True)
    try:
        (tmp_path / "state" / "children.json").write_text(json.dumps(["+", bystander.pid, "pidfs:1", 9, 0]) + "\n")
        (tmp_path / "jobs" / "esc.tm.json").unlink()
        with Daemon(tmp_path, {}) as second:
            assert marked(mark) == [bystander.pid]  # all of the dead daemon's gone before READY=1
            assert "stopping 1 cgroup(s) left by a daemon that did not shut down" in second.stderr()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    assert_no_cgroup_left(second)


def test_containment_is_said_in_status_version_and_metrics(tmp_path):
    version = subprocess.run([sys.executable, "-m", "taskmasterd", "--version", "--json", "--state-dir",
                              str(tmp_path / "state")], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(version.stdout)["containment"] == "cgroup2"
    forced = subprocess.run([sys.executable, "-m", "taskmasterd", "--version", "--json", "--containment",
                             "process-group"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(forced.stdout)["containment"] == \
        "process-group (no writable cgroup2: asked for by --containment)"
    job = {"cmd": ["sh", "-c", "sleep 300 & sleep 300"], "starttime": 0}
    with Daemon(tmp_path, {"pair": job}, args=["--containment", "process-group"]) as daemon:
        document = daemon.status()["daemon"]
        assert document["containment"] == "process-group (no writable cgroup2: asked for by --containment)"
        assert document["controllers"]["memory"] in ("cgroup v1", "cgroup2")
        # without a cgroup, the figures are sums over the instance's process tree
        figures = wait_for(lambda: (i := accounted(daemon, "pair")[0])["tasks"] == 3 and i, 10, what="3 processes")
        assert figures["memory_bytes"] > 0 and figures["cpu_seconds"] >= 0 and figures["memory_peak_bytes"] is None
        assert document["accounting"].startswith("summed over the process tree")


def _file(directory, name):
    with open(os.path.join(directory, name)) as src:
        return src.read().strip()


def _limits_file(pid, name):
    with open(f"/proc/{pid}/limits") as src:
        return next(line for line in src if line.startswith(name)).split()


def test_limits_are_applied_before_the_program_runs_and_changed_live_at_a_reload(tmp_path):
    job = {"cmd": "sleep 300", "starttime": 0, "memory_max": "64M", "cpu_quota": "50%", "tasks_max": 20,
           "nice": 5, "oom_score_adjust": 300, "rlimits": {"core": 0, "nofile": [1000, 2000]}}
    with Daemon(tmp_path, {"lim": job}) as daemon:
        pid = daemon.instances("lim")[0]["pid"]
        memory = v1_dir(pid, "memory") if "memory" in LAYOUT.v1 else v2_dir(pid)
        assert _file(memory, "memory.limit_in_bytes" if "memory" in LAYOUT.v1 else "memory.max") == str(64 << 20)
        cpu = v1_dir(pid, "cpu")
        assert _file(cpu, "cpu.cfs_quota_us") == "50000" and _file(cpu, "cpu.cfs_period_us") == "100000"
        assert _file(v1_dir(pid, "pids"), "pids.max") == "20"
        with open(f"/proc/{pid}/stat") as src:
            assert src.read().rpartition(")")[2].split()[16] == "5"  # nice
        assert _file(f"/proc/{pid}", "oom_score_adj") == "300"
        assert _limits_file(pid, "Max open files")[3:5] == ["1000", "2000"]
        assert _limits_file(pid, "Max core file size")[4:6] == ["0", "0"]
        assert "memory_bytes" not in daemon.instances("lim")[0]  # read only when asked for
        status = accounted(daemon, "lim")[0]
        assert status["memory_bytes"] > 0 and status["tasks"] == 1
        assert status["oom_kills"] == 0 and status["cpu_seconds"] >= 0 and status["memory_peak_bytes"] > 0
        # a cgroup limit changes live (same pid); nice needs a new process
        (tmp_path / "jobs" / "lim.tm.json").write_text(json.dumps({**job, "memory_max": "128M", "tasks_max": 30}))
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: _file(memory, "memory.limit_in_bytes" if "memory" in LAYOUT.v1 else "memory.max")
                 == str(128 << 20), 10, what="the new memory limit")
        assert _file(v1_dir(pid, "pids"), "pids.max") == "30" and daemon.instances("lim")[0]["pid"] == pid
        (tmp_path / "jobs" / "lim.tm.json").write_text(json.dumps({**job, "nice": 6}))
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: daemon.instances("lim")[0]["pid"] not in (pid, None), 10, what="the restart for nice")


FORKER = """
import os, time
forked = 0
for _ in range(8):
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
    except OSError:
        break
    forked += 1
print(forked, flush=True)
time.sleep(30)
"""


def test_tasks_max_bounds_what_the_job_forks(tmp_path):
    job = {"cmd": [sys.executable, "-c", FORKER], "starttime": 0, "tasks_max": 4, "autorestart": "never"}
    with Daemon(tmp_path, {"forks": job}) as daemon:
        pid = daemon.instances("forks")[0]["pid"]
        out = tmp_path / "logs" / "forks.0.out"
        assert wait_for(lambda: out.exists() and out.read_text().strip(), 10, what="its count") == "3"
        assert len(cgroup.members(v2_dir(pid))) == 4 and _file(v1_dir(pid, "pids"), "pids.current") == "4"


def test_the_oom_killer_ends_an_instance_with_that_reason_and_autorestart_takes_it_as_unexpected(tmp_path):
    hog = "import time; b = bytearray(256 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(60)"
    job = {"cmd": [sys.executable, "-c", hog], "starttime": 0, "memory_max": "64M", "autorestart": "unexpected",
           "stdout": None, "stderr": None}
    with Daemon(tmp_path, {"hog": job}) as daemon:
        reason = "out of memory: killed by the kernel, memory_max 64M"
        events = wait_for(lambda: [line for line in daemon.stderr().splitlines() if reason in line], 20,
                          what="the OOM exit")
        assert "RUNNING -> EXITED" in events[0] and "(unexpected)" in events[0]
        wait_for(lambda: daemon.instances("hog")[0]["restarts"] >= 1, 10, what="the autorestart")


def test_a_controller_that_is_not_there_fails_the_start_naming_it():
    from taskmasterd.jobfiles.resources import Resources
    from taskmasterd.kernel.cgroup import Layout
    from taskmasterd.processes.containment import Containment, ContainmentError

    nowhere = Containment(Layout(None), "taskmasterd-test", "no cgroup2 file system is mounted")
    with pytest.raises(ContainmentError) as refused:
        nowhere.cell("web.0", "run", 1, Resources(memory_max=64 << 20), 15, 1.0)
    assert str(refused.value) == ("the memory controller is not available: no cgroup2 hierarchy, and no cgroup v1 "
                                  "memory hierarchy is mounted")
    assert nowhere.cell("web.0", "run", 1, Resources(nice=3), 15, 1.0) is None  # no controller needed


def test_a_missing_controller_makes_the_instance_fatal_with_the_reason(tmp_path):
    import asyncio

    from taskmasterd.kernel.cgroup import Layout
    from taskmasterd.lifecycle.supervisor import Supervisor
    from taskmasterd.processes.containment import Containment

    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "lim.tm.json").write_text(json.dumps({"cmd": "sleep 5", "tasks_max": 3, "starttime": 0}))

    async def run():
        nowhere = Containment(Layout(None), "taskmasterd-test", "no cgroup2 file system is mounted")
        supervisor = Supervisor(tmp_path / "jobs", tmp_path / "logs", tmp_path / "state", containment=nowhere)
        await supervisor.open(watch=False)
        try:
            instance = supervisor.jobs["lim"].instances[0]
            await instance.wait_until(lambda inst: inst.start_settled())
            return instance.state.value, instance.description
        finally:
            await supervisor.shutdown()

    state, description = asyncio.run(run())
    assert state == "FATAL"
    assert description == ("the pids controller is not available: no cgroup2 hierarchy, and no cgroup v1 pids "
                           "hierarchy is mounted")


DELEGATED = """
import asyncio, json, os, sys
from taskmasterd.kernel import cgroup
from taskmasterd.jobfiles.resources import NO_RESOURCES
from taskmasterd.processes.containment import choose
cgroup.write(os.path.join(sys.argv[1], "cgroup.procs"), b"0")  # as systemd starts a Delegate=yes unit
containment = choose(sys.argv[2])
cell = containment.cell("web.0", "run", 1, NO_RESOURCES, 15, 1.0)
with cell.placed():
    pid = os.posix_spawn("/bin/sleep", ["sleep", "30"], {}, setsid=True)
with open(f"/proc/{pid}/cgroup") as child, open("/proc/self/cgroup") as own:
    print(json.dumps({"subtree": containment.subtree, "kind": containment.kind, "child": child.read(),
                      "own": own.read()}))
cell.kill()
os.waitpid(pid, 0)
cell.remove()
async def close():
    containment.close()
asyncio.run(close())
print(json.dumps(sorted(os.listdir(sys.argv[1]))))
"""


def test_under_delegation_the_daemon_moves_to_a_leaf_and_its_cells_go_beside_it(tmp_path):
    """What systemd's Delegate=yes gives (a cgroup of the daemon's own, marked user.delegate=1),
    made by hand: the daemon's own cgroup is the subtree, the daemon moves into its leaf
    'supervisor', cells go beside it, and a clean close leaves the delegated cgroup to systemd."""
    unit = os.path.join(LAYOUT.v2.mountpoint, f"taskmasterd-test-{os.getpid()}.service")
    os.mkdir(unit)
    try:
        os.setxattr(unit, "user.delegate", b"1")
        ran = subprocess.run([sys.executable, "-c", DELEGATED, unit, str(tmp_path / "state")], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
        assert ran.returncode == 0, ran.stderr
        report, left = (json.loads(line) for line in ran.stdout.splitlines())
        assert report["kind"] == "cgroup2" and report["subtree"] == unit
        relative = "/" + os.path.relpath(unit, LAYOUT.v2.mountpoint)
        assert f"0::{relative}/supervisor\n" in report["own"]
        assert f"0::{relative}/web.0.run.1\n" in report["child"]
        assert [name for name in left if not name.startswith("cgroup.") and "." not in name] == ["supervisor"]
    finally:
        cgroup.remove_tree(unit)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")
def test_without_a_writable_cgroup2_the_reason_is_said(tmp_path):
    """A daemon run by hand by a user who may not write the hierarchy (no delegation) keeps
    process groups and says why (what --version --json prints, found as that user)."""
    from taskmasterd.processes.containment import probe

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, probe(str(tmp_path / "state")).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        containment = answer.read().decode()
    os.waitpid(pid, 0)
    assert containment.startswith("process-group (no writable cgroup2: ") and "Permission denied" in containment


def test_a_limit_whose_controller_the_running_cgroup_lacks_restarts_the_instance(tmp_path):
    """On a hybrid host a job without memory_max runs without a v1 memory cgroup: a reload that
    asks for one cannot be applied live, so the instance restarts into a cgroup that has it."""
    job = {"cmd": "sleep 300", "starttime": 0}
    with Daemon(tmp_path, {"grow": job}) as daemon:
        pid = daemon.instances("grow")[0]["pid"]
        (tmp_path / "jobs" / "grow.tm.json").write_text(json.dumps({**job, "memory_max": "32M"}))
        daemon.signal(signal.SIGHUP)
        fresh = wait_for(lambda: (i := daemon.instances("grow")[0])["pid"] not in (pid, None) and i["pid"], 10,
                         what="the restart")
        memory = v1_dir(fresh, "memory") if "memory" in LAYOUT.v1 else v2_dir(fresh)
        assert _file(memory, "memory.limit_in_bytes" if "memory" in LAYOUT.v1 else "memory.max") == str(32 << 20)


@pytest.mark.skipif("memory" not in LAYOUT.v1, reason="no cgroup v1 memory hierarchy here")
def test_process_group_mode_still_applies_limits_through_cgroup_v1(tmp_path):
    job = {"cmd": "sleep 300", "starttime": 0, "memory_max": "48M"}
    with Daemon(tmp_path, {"lim": job}, args=["--containment", "process-group"]) as daemon:
        pid = daemon.instances("lim")[0]["pid"]
        assert _file(v1_dir(pid, "memory"), "memory.limit_in_bytes") == str(48 << 20)
        assert "taskmasterd-" not in cgroups_of(pid)[""]  # no v2 cell: process groups contain it
        assert accounted(daemon, "lim")[0]["memory_peak_bytes"] > 0  # the v1 cgroup's figures
