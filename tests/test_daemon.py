"""taskmasterd as a whole process: readiness, signals, refusal of a second daemon, daemon mode,
leftovers of a killed daemon, and the output of a very fast writer."""
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from .support.daemon import ROOT, Daemon, free_port, pid_alive, wait_for

SLEEP = {"cmd": "sleep 300", "starttime": 0}


def running_pids(daemon, job):
    return [i["pid"] for i in daemon.instances(job) if i["state"] == "RUNNING"]


def test_help_lists_the_options():
    out = subprocess.run([sys.executable, "-m", "taskmasterd", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for option in ("--jobs-dir", "--log-dir", "--state-dir", "--host", "--port", "--foreground", "--daemon",
                   "--pidfile", "--config", "--log-level", "--socket", "--control-group"):
        assert option in out.stdout


def test_ready_notification_then_clean_shutdown(tmp_path):
    daemon = Daemon(tmp_path, {"a": SLEEP, "b": {**SLEEP, "numprocs": 2}}).start()
    try:
        ready = [m for m in daemon.messages if "READY=1" in m.split("\n")]
        assert ready and f"MAINPID={daemon.proc.pid}" in ready[0]
        # READY=1 comes once every autostart job has been launched
        pids = [i["pid"] for job in ("a", "b") for i in daemon.instances(job)]
        assert len(pids) == 3 and all(pids)
    finally:
        assert daemon.stop() == 0
    daemon.wait_notify("STOPPING=1", timeout=5)
    assert not any(pid_alive(p) for p in pids)


def test_sighup_reloads_changed_jobs_and_keeps_unchanged_pids(tmp_path):
    with Daemon(tmp_path, {"same": SLEEP, "changed": SLEEP}, args=["--log-level", "DEBUG"]) as daemon:
        same, changed = running_pids(daemon, "same"), running_pids(daemon, "changed")
        (tmp_path / "jobs" / "changed.tm.json").write_text(json.dumps({**SLEEP, "env": {"V": "2"}}))
        (tmp_path / "jobs" / "brand-new.tm.json").write_text(json.dumps(SLEEP))
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: running_pids(daemon, "changed") not in ([], changed), what="changed job restarted")
        wait_for(lambda: [j["name"] for j in daemon.status()["jobs"] if j["name"] == "brand-new"])
        assert running_pids(daemon, "same") == same
        assert not pid_alive(changed[0])


def test_sigterm_stops_every_job_in_parallel_leaving_nothing(tmp_path):
    stubborn = {"cmd": ["sh", "-c", "trap '' TERM; sleep 300 & wait; wait"], "starttime": 0, "stoptime": 1}
    daemon = Daemon(tmp_path, {f"j{n}": stubborn for n in range(5)}).start()
    pids = [i["pid"] for n in range(5) for i in daemon.instances(f"j{n}")]

    def children_of_each() -> list[int]:
        found = [[int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()] for pid in pids]
        return [p for each in found for p in each] if all(found) else []

    children = wait_for(children_of_each, 10, what="each shell's sleep forked")  # starttime 0: maybe not yet
    began = time.monotonic()
    assert daemon.stop() == 0
    elapsed = time.monotonic() - began
    assert elapsed < 4.5, f"five jobs with stoptime 1 took {elapsed:.1f}s: not stopped in parallel"
    assert children and not any(pid_alive(p) for p in pids + children)


def test_second_daemon_on_same_port_or_pidfile_refuses(tmp_path):
    pidfile = tmp_path / "tm.pid"
    with Daemon(tmp_path / "one", {}, args=["--pidfile", str(pidfile)]) as first:
        assert pidfile.read_text().strip() == str(first.proc.pid)
        same_port = Daemon(tmp_path / "two", {})
        same_port.port = first.port
        out = subprocess.run(same_port.command(), capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert out.returncode == 1 and str(first.port) in out.stderr
        other = Daemon(tmp_path / "three", {}, args=["--pidfile", str(pidfile)])
        out = subprocess.run(other.command(), capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert out.returncode == 1 and "pid file" in out.stderr and str(first.proc.pid) in out.stderr
    assert not pidfile.exists()


def test_the_pid_file_is_never_written_through_a_link(tmp_path):
    # root's daemon must not truncate a file someone pointed its pid file at
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "by-symlink.pid").symlink_to(victim)
    os.link(victim, tmp_path / "by-hard-link.pid")
    lesser = tmp_path / "lesser"  # a directory on the way that is a lesser user's symlink
    lesser.symlink_to(tmp_path)
    os.lchown(lesser, 65534, 65534)
    cases = ((tmp_path / "by-symlink.pid", "symbolic link"), (tmp_path / "by-hard-link.pid", "hard link"),
             (lesser / "new.pid", "owned by uid 65534"))
    for number, (path, why) in enumerate(cases):
        daemon = Daemon(tmp_path / f"daemon{number}", {}, args=["--pidfile", str(path)])
        out = subprocess.run(daemon.command(), capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert out.returncode == 1 and why in out.stderr, (path, out.stderr)
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "new.pid").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="files of another uid need root to set up")
def test_a_state_directory_others_control_is_refused(tmp_path):
    # It holds the Colonies keys and the journal of what to kill after a crash.
    owned = tmp_path / "owned"
    owned.mkdir(mode=0o700)
    os.chown(owned, 65534, 65534)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "fine")
    (tmp_path / "fine").mkdir(mode=0o700)
    os.lchown(link, 65534, 65534)
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    (open_to_all / "state").mkdir(mode=0o700)
    cases = ((owned, "belongs to uid 65534"), (link, "symbolic link owned by uid 65534"),
             (open_to_all, "writable by others (mode 0777)"), (open_to_all / "state", "writable by others (mode 0777)"))
    for number, (state, why) in enumerate(cases):
        daemon = Daemon(tmp_path / f"daemon{number}", {}, args=["--state-dir", str(state)])  # the last one counts
        out = subprocess.run(daemon.command(), capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert out.returncode == 1 and "is not private" in out.stderr and why in out.stderr, (state, out.stderr)
    assert not list((tmp_path / "fine").iterdir())  # nothing was written through the link


@pytest.mark.skipif(os.geteuid() != 0, reason="files of another uid need root to set up")
def test_a_jobs_directory_everyone_may_write_is_refused(tmp_path):
    # Its files run as root by default: writable by all, any local user would be root.
    shared = tmp_path / "shared-jobs"
    shared.mkdir()
    shared.chmod(0o1777)
    (tmp_path / "team-jobs").mkdir()
    link = tmp_path / "linked-jobs"
    link.symlink_to(tmp_path / "team-jobs")
    os.lchown(link, 65534, 65534)
    for number, (jobs, why) in enumerate(((shared, "writable by others (mode 1777)"),
                                          (link, "symbolic link owned by uid 65534"))):
        daemon = Daemon(tmp_path / f"daemon{number}", {}, args=["--jobs-dir", str(jobs)])
        out = subprocess.run(daemon.command(), capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert out.returncode == 1 and "open to everyone" in out.stderr and why in out.stderr, (jobs, out.stderr)
    (tmp_path / "team-jobs").chmod(0o2775)  # a team's, through its group: the operator's choice
    with Daemon(tmp_path / "team", {}, args=["--jobs-dir", str(tmp_path / "team-jobs")]) as team:
        assert team.request("status")["response"] == "status"


def test_daemon_mode_detaches_with_a_locked_pidfile(tmp_path):
    pidfile = tmp_path / "run" / "taskmasterd.pid"
    pidfile.parent.mkdir()
    daemon = Daemon(tmp_path, {"a": SLEEP}, args=["--daemon", "--pidfile", str(pidfile)])
    out = subprocess.run(daemon.command(), capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.returncode == 0, out.stderr
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="pid file"))
    try:
        wait_for(lambda: _answers(daemon), what="daemon answering")
        # the port answers from the start; the job's spawn may still be on its way (docs/architecture.md)
        wait_for(lambda: running_pids(daemon, "a"), what="the job running")
        assert (tmp_path / "logs" / "taskmasterd.log").exists()
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid) and not pidfile.exists(), what="daemon gone and pid file removed")


def test_config_file_and_command_line_override(tmp_path):
    port = free_port()
    config = tmp_path / "taskmasterd.json"
    config.write_text(json.dumps({"port": 1, "log_level": "WARNING", "idle_timeout": 30}))
    daemon = Daemon(tmp_path, {"a": SLEEP}, args=["--config", str(config), "--port", str(port)])
    daemon.port = port
    with daemon:
        assert daemon.status()["jobs"][0]["name"] == "a"
    config.write_text(json.dumps({"prot": 1}))
    out = subprocess.run(daemon.command(), capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.returncode == 1 and "unknown setting 'prot'" in out.stderr


def test_children_of_a_daemon_killed_with_sigkill_are_stopped_at_next_start(tmp_path):
    daemon = Daemon(tmp_path, {"a": SLEEP}).start()
    orphan = running_pids(daemon, "a")[0]
    time.sleep(0.5)  # the registry of children is written 0.2 s after a spawn
    daemon.proc.kill()
    daemon.proc.wait()
    assert pid_alive(orphan)
    with Daemon(tmp_path, {}) as successor:
        assert not pid_alive(orphan)
        assert running_pids(successor, "a") and running_pids(successor, "a")[0] != orphan


def test_invalid_file_at_startup_does_not_stop_the_others(tmp_path):
    jobs = {"good": SLEEP, "bad": {"cmd": "sleep 1", "numprocs": "two"}}
    with Daemon(tmp_path, jobs) as daemon:
        assert running_pids(daemon, "good")
        (entry,) = daemon.status("bad")["jobs"]
        assert entry["state"] == "INVALID" and "bad.tm.json" in entry["error"] and '"numprocs"' in entry["error"]


def test_a_very_fast_writer_loses_no_byte(tmp_path):
    size = 200 * 1024 * 1024
    job = {"cmd": ["head", "-c", str(size), "/dev/zero"], "starttime": 0, "autorestart": "never", "logmaxbytes": 0}
    with Daemon(tmp_path, {"flood": job}) as daemon:
        wait_for(lambda: daemon.instances("flood")[0]["state"] == "EXITED", 120, what="writer done")
        out = tmp_path / "logs" / "flood.0.out"
        wait_for(lambda: out.stat().st_size == size, 60, what="every byte in the file")
        assert daemon.instances("flood")[0]["exitcode"] == 0
        out.unlink()


def test_sigusr2_reopens_log_files(tmp_path):
    job = {"cmd": ["sh", "-c", "while :; do echo tick; sleep 0.05; done"], "starttime": 0}
    with Daemon(tmp_path, {"t": job}) as daemon:
        log = tmp_path / "logs" / "t.0.out"
        wait_for(lambda: log.exists() and log.stat().st_size > 0)
        os.rename(log, tmp_path / "logs" / "t.0.out.old")
        daemon.signal(signal.SIGUSR2)
        wait_for(lambda: log.exists() and log.stat().st_size > 0, what="writing to a fresh file")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_user_field_runs_the_child_as_that_user(tmp_path):
    job = {"cmd": ["sh", "-c", "echo $(id -u) $USER $HOME"], "starttime": 0, "autorestart": "never",
           "user": "nobody", "workingdir": "/"}
    os.chmod(tmp_path, 0o755)
    with Daemon(tmp_path, {"u": job}):
        out = tmp_path / "logs" / "u.0.out"
        line = wait_for(lambda: out.exists() and out.read_text().strip())
        assert line.split()[:2] == ["65534", "nobody"]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_a_job_of_another_user_starts_from_a_login_environment_not_the_daemons(tmp_path):
    """The root daemon's secrets and plumbing (AWS_SECRET_ACCESS_KEY, SSH_AUTH_SOCK, root's PATH)
    never reach a job of another user, unless its file asks to inherit; a job of the daemon's own
    user inherits the daemon's environment as before."""
    show = ["sh", "-c", "env | sort"]
    common = {"cmd": show, "starttime": 0, "autorestart": "never", "workingdir": "/"}
    jobs = {"other": {**common, "user": "nobody", "env": {"MINE": "1"}},
            "asks": {**common, "user": "nobody", "inherit_env": True},
            "same": common}
    os.chmod(tmp_path, 0o755)
    secrets = {"AWS_SECRET_ACCESS_KEY": "sekrit", "SSH_AUTH_SOCK": "/tmp/agent.sock", "PATH": "/root/bin:" + os.environ["PATH"]}
    with Daemon(tmp_path, jobs, env=secrets):
        def env_of(job):
            out = tmp_path / "logs" / f"{job}.0.out"
            text = wait_for(lambda: out.exists() and out.read_text(), what=f"{job}'s environment")
            return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

        other = env_of("other")
        assert "AWS_SECRET_ACCESS_KEY" not in other and "SSH_AUTH_SOCK" not in other
        assert other["PATH"] == "/usr/local/bin:/usr/bin:/bin" and other["MINE"] == "1"
        assert (other["HOME"], other["USER"], other["LOGNAME"]) == ("/nonexistent", "nobody", "nobody")
        assert other["SHELL"] == pwd.getpwnam("nobody").pw_shell and other["LANG"]
        assert {k for k in other if not k.startswith("TASKMASTER_")} <= \
            {"HOME", "USER", "LOGNAME", "SHELL", "PATH", "LANG", "MINE", "PWD"}
        assert env_of("asks")["AWS_SECRET_ACCESS_KEY"] == "sekrit" and env_of("asks")["USER"] == "nobody"
        assert env_of("same")["AWS_SECRET_ACCESS_KEY"] == "sekrit"


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (make test installs it)")
@pytest.mark.parametrize("unit, manager", [("taskmasterd.service", []), ("taskmasterd-user.service", ["--user"])])
def test_systemd_unit_verifies_clean(tmp_path, unit, manager):
    text = (ROOT / "systemd" / unit).read_text()
    expected = ["Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "KillMode=mixed", "RuntimeDirectory=taskmaster",
                "\nDelegate=yes\n"]  # a cgroup per instance under the daemon's own
    if manager:  # the user's own daemon: its socket only, in the user's runtime directory
        expected += ["--socket %t/taskmaster/taskmasterd.sock", "--port none", "NoNewPrivileges=yes"]
    else:
        expected += ["--socket /run/taskmaster/taskmasterd.sock", "--host 127.0.0.1 --port 7777",
                     "--control-group taskmaster", "UMask=0027"]
    assert [line for line in expected if line not in text] == []
    # verify checks that ExecStart's program exists: point it at the installed entry point
    installed = shutil.which("taskmasterd") or str(ROOT / ".venv" / "bin" / "taskmasterd")
    copy = tmp_path / unit
    copy.write_text(text.replace("/usr/local/bin/taskmasterd", installed))
    runtime = tmp_path / "runtime"  # a user manager needs one; CI has no login session
    runtime.mkdir(mode=0o700)
    out = subprocess.run([SYSTEMD_ANALYZE, *manager, "verify", str(copy)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert out.returncode == 0 and out.stdout.strip() == "" and out.stderr.strip() == "", out.stderr


def test_bad_colonies_settings_refuse_to_start_with_a_message(tmp_path):
    config = tmp_path / "taskmasterd.json"
    config.write_text(json.dumps({"colonies": {"host": "127.0.0.1", "port": "not-a-port", "colony": "dev"}}))
    daemon = Daemon(tmp_path, {}, args=["--config", str(config)])
    out = subprocess.run(daemon.command(), capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.returncode == 1 and "port" in out.stderr


def test_the_port_answers_while_the_jobs_are_still_loading(tmp_path):
    many = {"cmd": "sleep 300", "starttime": 0, "numprocs": 100, "stdout": None, "stderr": None}
    daemon = Daemon(tmp_path, {f"j{n:02}": many for n in range(10)}).start(wait=False)
    try:
        seen = None
        deadline = time.monotonic() + 30
        while seen is None and time.monotonic() < deadline:
            try:
                seen = daemon.request("status", timeout=5)["data"]["jobs"]
            except OSError:
                time.sleep(0.01)  # not bound yet
        daemon.wait_notify("READY=1")
        spawned = sum(1 for job in seen for i in job["instances"] if i["pid"])
        assert seen is not None and spawned < 1000, "status was answered only once every job had spawned"
    finally:
        assert daemon.stop() == 0


def _descriptors(pid: int) -> dict[str, str]:
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return found


def _status_mask(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as src:
        for line in src:
            if line.startswith(field + ":"):
                return int(line.split()[1], 16)
    raise AssertionError(f"no {field} for {pid}")


def test_a_child_gets_its_three_streams_and_default_signals_whichever_way_it_is_started(tmp_path):
    # posix_spawn for a plain job, Popen for one with cwd and umask: the same child either way.
    inherited = os.open(tmp_path, os.O_RDONLY)  # left open by a careless parent, without close-on-exec
    os.set_inheritable(inherited, True)
    daemon = Daemon(tmp_path, {"plain": SLEEP, "placed": {**SLEEP, "workingdir": "/tmp", "umask": "027"}})
    daemon.pass_fds = (inherited,)
    daemon.start()
    try:
        os.close(inherited)
        assert str(inherited) in os.listdir(f"/proc/{daemon.proc.pid}/fd")  # the daemon does hold it
        for job in ("plain", "placed"):
            [pid] = wait_for(lambda: running_pids(daemon, job), 10, what=f"{job} running")
            # Exactly 0, 1 and 2 once the program has started (the loader and the C library open
            # and close files of their own meanwhile; a leaked descriptor would stay).
            try:
                wait_for(lambda: sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2"], 10)
            except TimeoutError:
                raise AssertionError(f"{job} holds more than its three streams: {_descriptors(pid)}") from None
            assert os.getsid(pid) == pid, job
            ignored = _status_mask(pid, "SigIgn")
            assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGXFSZ - 1)), job
            assert _status_mask(pid, "SigBlk") == 0, job
    finally:
        daemon.stop()


def test_a_notify_socket_nobody_reads_never_blocks_the_daemon(tmp_path):
    """$NOTIFY_SOCKET whose reader is stuck (its queue full): the readiness datagram is dropped,
    the daemon serves and stops as usual instead of blocking in sendto for good."""
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stuck.bind(str(tmp_path / "stuck.sock"))
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            filler.sendto(b"x", str(tmp_path / "stuck.sock"))
    daemon = Daemon(tmp_path / "d", {"sleepy": SLEEP}, env={"NOTIFY_SOCKET": str(tmp_path / "stuck.sock")})
    daemon.start(wait=False)
    try:
        wait_for(lambda: _answers(daemon) and daemon.instances("sleepy")[0]["state"] == "RUNNING", 20,
                 what="the daemon serving")
    finally:
        assert daemon.stop(timeout=20) == 0
        stuck.close()
        filler.close()


def _answers(daemon) -> bool:
    try:
        return daemon.request("status", timeout=2)["response"] == "status"
    except OSError:
        return False
