"""taskmasterd explains itself: --version, --check on good and bad directories, the default
directories of a system service, and metrics scraped with curl."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskmasterd import __version__
from taskmasterd.config import default_directories
from taskmasterd.observe.metrics import parse_address
from tests.support.control_fixtures import SLEEPER
from tests.support.ctl import ctl
from tests.support.daemon import ROOT, Daemon, free_port, wait_for, write_job


def taskmasterd(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "taskmasterd", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def test_version() -> None:
    result = taskmasterd("--version")
    assert result.returncode == 0 and result.stdout == f"taskmasterd {__version__}\n"


def test_check_of_the_bundled_jobs_passes() -> None:
    result = taskmasterd("--check", "jobs")
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith("all valid")


def test_check_prints_every_problem_as_the_daemon_would_and_exits_1(tmp_path: Path) -> None:
    write_job(tmp_path, "good", SLEEPER)
    write_job(tmp_path, "bad", '{"cmd": "sleep 1", "numprocs": "two", "autorestrat": "always"}')
    write_job(tmp_path, "lost", {**SLEEPER, "workingdir": str(tmp_path / "nowhere")})
    (tmp_path / "bad name.tm.json").write_text(json.dumps(SLEEPER))
    (tmp_path / "notes.txt").write_text("not a job")
    os.mkfifo(tmp_path / "pipe.tm.json")  # read as the daemon reads: refused, never waited on
    result = taskmasterd("--check", str(tmp_path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"{tmp_path}/pipe.tm.json: not a regular file" in lines
    assert any(line.startswith(f'{tmp_path}/bad.tm.json: field "numprocs": ') for line in lines)
    assert any("unknown field 'autorestrat' (did you mean 'autorestart'?)" in line for line in lines)
    assert any(f"{tmp_path}/lost.tm.json" in line and "does not exist" in line for line in lines)
    assert any("bad name.tm.json: ignored" in line for line in lines)
    assert not any("good" in line or "notes" in line for line in lines[:-1])
    assert lines[-1] == f"taskmasterd: 4 job file(s) in {tmp_path}: 5 problem(s)"
    assert taskmasterd("--check", str(tmp_path / "missing")).returncode == 1
    shared = tmp_path / "shared"
    shared.mkdir()
    write_job(shared, "good", SLEEPER)
    shared.chmod(0o777)  # valid files, in a directory the daemon would not read
    result = taskmasterd("--check", str(shared))
    assert result.returncode == 1 and f"the jobs directory {shared} is open to everyone" in result.stdout


def test_check_without_a_directory_reads_the_configured_one(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    write_job(tmp_path / "jobs", "bad", '{"cmd": 1}')
    result = taskmasterd("--check", cwd=tmp_path)  # ./jobs is the default here
    assert result.returncode == 1 and "bad.tm.json" in result.stdout


def test_default_directories_of_a_checkout_of_root_and_of_a_user(tmp_path: Path) -> None:
    assert default_directories(str(ROOT), 0, {}) == {"jobs_dir": "jobs", "log_dir": "logs", "state_dir": "state"}
    assert default_directories(str(tmp_path), 0, {}) == {
        "jobs_dir": "/etc/taskmaster/jobs", "log_dir": "/var/log/taskmaster", "state_dir": "/var/lib/taskmaster"}
    assert default_directories(str(tmp_path), 1000, {"HOME": "/home/u"}) == {
        "jobs_dir": "/home/u/.config/taskmaster/jobs", "log_dir": "/home/u/.local/state/taskmaster/logs",
        "state_dir": "/home/u/.local/state/taskmaster/state"}
    xdg = default_directories(str(tmp_path), 1000, {"HOME": "/h", "XDG_CONFIG_HOME": "/c", "XDG_STATE_HOME": "/s"})
    assert xdg == {"jobs_dir": "/c/taskmaster/jobs", "log_dir": "/s/taskmaster/logs", "state_dir": "/s/taskmaster/state"}


def test_metrics_addresses() -> None:
    assert parse_address("9100") == ("127.0.0.1", 9100)
    assert parse_address("[::1]:9100") == ("::1", 9100)
    assert parse_address("0.0.0.0:9100") == ("0.0.0.0", 9100)
    for bad in ("", "x", "1:0", "host:70000", ":9100"):
        with pytest.raises(ValueError):
            parse_address(bad)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (make test installs it)")
def test_metrics_scraped_with_curl(tmp_path: Path) -> None:
    port = free_port()
    jobs = {"talker": {"cmd": ["sh", "-c", "echo hello; exec sleep 1000"], "starttime": 0},
            "pair": {**SLEEPER, "numprocs": 2}, "crash": {"cmd": ["false"], "startretries": 0, "starttime": 1}}
    with Daemon(tmp_path, jobs=jobs, args=["--metrics", f"127.0.0.1:{port}"]) as daemon:
        wait_for(lambda: daemon.instances("crash")[0]["state"] == "FATAL", what="crash FATAL")
        assert ctl(daemon, "status", "pair").returncode == 0
        wait_for(lambda: (daemon.log_dir / "talker.0.out").exists() and (daemon.log_dir / "talker.0.out").stat().st_size)
        scrape = subprocess.run(["curl", "-sS", "--fail", "-i", f"http://127.0.0.1:{port}/metrics"],
                                capture_output=True, text=True, timeout=30)
        assert scrape.returncode == 0, scrape.stderr
        head, body = scrape.stdout.split("\n\n", 1)  # text mode: \r\n read as \n
        assert "Content-Type: text/plain; version=" in head
        samples = dict(re.findall(r"^(taskmaster_[^ ]+) (\S+)$", body, re.M))
        assert samples['taskmaster_instance_state{instance="1",job="pair",state="RUNNING"}'] == "1.0"
        assert samples['taskmaster_instance_state{instance="1",job="pair",state="STOPPED"}'] == "0.0"
        assert samples['taskmaster_instance_state{instance="0",job="crash",state="FATAL"}'] == "1.0"
        assert samples['taskmaster_instance_last_exit_code{instance="0",job="crash"}'] == "1.0"
        assert float(samples['taskmaster_instance_uptime_seconds{instance="0",job="pair"}']) > 0
        assert samples['taskmaster_instance_restarts_total{instance="0",job="pair"}'] == "0.0"
        assert samples['taskmaster_log_written_bytes_total{instance="0",job="talker",stream="stdout"}'] == "6.0"
        assert samples['taskmaster_log_dropped_bytes_total{instance="0",job="talker",stream="stdout"}'] == "0.0"
        assert float(samples['taskmaster_control_requests_total{response="status",verb="status"}']) >= 1
        assert samples["taskmaster_control_connections"] == "0.0"
        assert samples['taskmaster_colonies_processes_total{result="failed"}'] == "0.0"
        assert samples[f'taskmaster_build_info{{version="{__version__}"}}'] == "1.0"
        containment = daemon.status()["daemon"]["containment"]
        assert samples[f'taskmaster_containment_info{{containment="{containment}"}}'] == "1.0"
        assert float(samples['taskmaster_instance_memory_bytes{instance="0",job="pair"}']) > 0
        assert samples['taskmaster_instance_tasks{instance="0",job="pair"}'] == "1.0"
        assert float(samples['taskmaster_instance_cpu_seconds_total{instance="0",job="pair"}']) >= 0
        missing = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                  f"http://127.0.0.1:{port}/other"], capture_output=True, text=True, timeout=30)
        assert missing.stdout == "404"
    assert "Traceback" not in daemon.stderr()


def test_metrics_are_off_by_default_and_a_taken_port_refuses_the_start(tmp_path: Path) -> None:
    with Daemon(tmp_path / "a", jobs={"one": SLEEPER}) as daemon:
        assert daemon.status()["jobs"]
        refused = taskmasterd("--jobs-dir", str(tmp_path / "a" / "jobs"), "--log-dir", str(tmp_path / "l"),
                              "--state-dir", str(tmp_path / "s"), "--port", str(free_port()),
                              "--metrics", f"127.0.0.1:{daemon.port}")
        assert refused.returncode == 1 and "cannot serve metrics" in refused.stderr



def test_metrics_tell_each_checked_instances_health(tmp_path: Path) -> None:
    port = free_port()
    check = {"interval": 1, "retries": 1, "start_interval": 0.2, "start_period": 0}
    jobs = {"fine": {**SLEEPER, "healthcheck": {"cmd": ["true"], **check}},
            "sick": {**SLEEPER, "healthcheck": {"cmd": ["false"], **check}, "on_unhealthy": "none"},
            "plain": SLEEPER}
    with Daemon(tmp_path, jobs=jobs, args=["--metrics", f"127.0.0.1:{port}"]) as daemon:
        wait_for(lambda: daemon.instances("sick")[0].get("health") == "unhealthy"
                 and daemon.instances("fine")[0].get("health") == "healthy", what="both verdicts")
        body = subprocess.run(["curl", "-sS", "--fail", f"http://127.0.0.1:{port}/metrics"],
                              capture_output=True, text=True, timeout=30).stdout
        samples = dict(re.findall(r"^(taskmaster_[^ ]+) (\S+)$", body, re.M))
        assert samples['taskmaster_instance_healthy{instance="0",job="fine"}'] == "1.0"
        assert samples['taskmaster_instance_healthy{instance="0",job="sick"}'] == "0.0"
        assert not any(key.startswith("taskmaster_instance_healthy") and 'job="plain"' in key for key in samples)
        assert "# HELP taskmaster_instance_healthy" in body
