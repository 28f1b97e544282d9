"""Output a script can trust, through the real taskmasterctl against a real daemon: one JSON
document per command with --json, exit 3 for a file that is invalid or could not be loaded,
start/restart refusing a job whose file on disk is invalid (or --force), stop saying it killed,
--check of one file, no table before `permission denied`, completion offering only what works."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.control_fixtures import SLEEPER, serving_daemon
from tests.support.ctl import ctl, err, out
from tests.support.daemon import ROOT, Daemon, free_port, wait_for, write_job

DEAF = {"cmd": ["sh", "-c", "trap '' TERM; exec sleep 1000"], "starttime": 0.5, "stoptime": 1,
        "stdout": None, "stderr": None}
JOBS = {"web": {**SLEEPER, "numprocs": 2}, "db": SLEEPER, "deaf": DEAF, "turns-bad": SLEEPER,
        "idle": {**SLEEPER, "autostart": False}}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from serving_daemon(tmp_path_factory.mktemp("scripts"), JOBS)


def one_document(result: subprocess.CompletedProcess) -> object:
    """stdout holds exactly one JSON document (json.loads refuses two)."""
    return json.loads(out(result))


def test_version_json_is_one_document(daemon: Daemon) -> None:
    result = ctl(daemon, "version", "--json")
    document = one_document(result)
    assert result.returncode == 0 and document["taskmasterd"]["pid"] == daemon.proc.pid
    assert document["taskmasterctl"]


def test_pid_json_is_one_document_for_running_and_stopped_jobs(daemon: Daemon) -> None:
    running = ctl(daemon, "pid", "web", "--json")
    document = one_document(running)
    assert running.returncode == 0 and len(document["pids"]["web"]) == 2 and all(document["pids"]["web"])
    stopped = ctl(daemon, "pid", "idle", "--json")
    assert stopped.returncode == 1 and one_document(stopped)["pids"] == {"idle": []}
    assert "idle: not running" in one_document(stopped)["errors"][0]
    assert one_document(ctl(daemon, "pid", "--json"))["pid"] == daemon.proc.pid


@pytest.mark.parametrize("line", [
    ["status"], ["status", "web", "db"], ["status", "nope"], ["start", "db"], ["start", "nope", "db"],
    ["stop", "idle"], ["restart", "db"], ["kill", "idle"], ["repair", "db"], ["signal", "db", "HUP"],
    ["tail", "db"], ["tail", "web"], ["maintail", "-n", "2"], ["events", "-n", "3"], ["pid", "web", "db"],
    ["version"], ["list"], ["reload"], ["reload", "db", "web"], ["pull", "db"], ["delete", "nope"],
    ["help"], ["restart"], ["signal", "db", "NOPE"], ["status", "--no-such-option"], ["frobnicate"],
    ["logs", "db", "-n", "2"], ["enable", "db"],
])
def test_every_command_prints_exactly_one_json_document(daemon: Daemon, line: list[str]) -> None:
    result = ctl(daemon, *line, "--json")
    document = one_document(result)
    assert isinstance(document, dict), out(result)
    if result.returncode:
        assert "error" in json.dumps(document), out(result)  # the failure is in the document too


def test_json_when_the_daemon_cannot_be_reached() -> None:
    result = ctl(None, "status", "--json")
    assert result.returncode == 3 and "cannot connect" in one_document(result)["errors"][0]


def test_status_exits_3_when_a_loaded_jobs_file_turns_invalid(daemon: Daemon) -> None:
    assert ctl(daemon, "status", "turns-bad").returncode == 0
    write_job(daemon.jobs_dir, "turns-bad", {**SLEEPER, "stoptime": "3s"})
    wait_for(lambda: daemon.status("turns-bad")["jobs"][0]["error"], what="the error in status")
    result = ctl(daemon, "status", "turns-bad")
    assert result.returncode == 3 and '"stoptime"' in out(result)
    # restart and start fail with that error instead of running the old version silently
    pid = daemon.instances("turns-bad")[0]["pid"]
    restarted = ctl(daemon, "restart", "turns-bad")
    assert restarted.returncode == 1 and '"stoptime"' in err(restarted), err(restarted)
    assert daemon.instances("turns-bad")[0]["pid"] == pid
    stopped = ctl(daemon, "stop", "turns-bad")
    assert stopped.returncode == 0  # stopping is always allowed
    started = ctl(daemon, "start", "turns-bad")
    assert started.returncode == 1 and "invalid" in err(started)
    assert daemon.instances("turns-bad")[0]["state"] == "STOPPED"
    forced = ctl(daemon, "start", "--force", "turns-bad")
    assert forced.returncode == 0 and "last valid version" in err(forced), err(forced)
    assert daemon.instances("turns-bad")[0]["state"] == "RUNNING"
    write_job(daemon.jobs_dir, "turns-bad", SLEEPER)
    wait_for(lambda: daemon.status("turns-bad")["jobs"][0]["error"] is None, what="the file valid again")
    assert ctl(daemon, "status", "turns-bad").returncode == 0


def test_files_that_could_not_be_loaded_appear_in_status_and_exit_3(tmp_path: Path) -> None:
    with Daemon(tmp_path, jobs={"fine": SLEEPER}) as daemon:
        (daemon.jobs_dir / "my job.tm.json").write_text(json.dumps(SLEEPER))
        (daemon.jobs_dir / "badjson.tm.json").write_text('{"cmd": "sleep 1",')
        wait_for(lambda: any(j["name"] == "badjson" for j in daemon.status()["jobs"]), what="badjson in status")
        result = ctl(daemon, "status")
        assert result.returncode == 3
        assert "my job.tm.json" in out(result) and "invalid job name" in out(result), out(result)
        assert "badjson" in out(result) and "invalid JSON" in out(result)
        document = one_document(ctl(daemon, "status", "--json"))
        ignored = document["data"]["ignored"]
        assert [entry["file"] for entry in ignored] == ["my job.tm.json"] and "invalid job name" in ignored[0]["error"]
        assert ctl(daemon, "status", "fine").returncode == 0  # naming a good job: only it counts
        # status does not list the directory at each request: the watcher's events keep it current
        (daemon.jobs_dir / "my job.tm.json").unlink()
        wait_for(lambda: "ignored" not in daemon.request("status")["data"], what="the removed file gone from status")


def test_stop_says_when_it_had_to_kill(daemon: Daemon) -> None:
    wait_for(lambda: daemon.instances("deaf")[0]["state"] == "RUNNING", what="deaf running")
    result = ctl(daemon, "stop", "deaf")
    assert result.returncode == 0, err(result)
    assert "SIGKILL" in out(result) and "stoptime" in out(result), out(result)
    gentle = ctl(daemon, "stop", "db")
    assert gentle.returncode == 0 and out(gentle) == "stop db: success\n"
    assert ctl(daemon, "start", "db", "deaf").returncode == 0
    as_json = one_document(ctl(daemon, "stop", "deaf", "db", "--json"))
    notes = {target["target"]: target.get("note") for target in as_json["data"]["targets"]}
    assert "SIGKILL" in notes["deaf"] and notes["db"] is None
    assert ctl(daemon, "start", "db", "deaf").returncode == 0


def test_check_takes_one_file(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.tm.json", tmp_path / "bad.tm.json"
    good.write_text(json.dumps(SLEEPER))
    bad.write_text(json.dumps({**SLEEPER, "stoptime": "3s"}))
    command = [sys.executable, "-m", "taskmasterd", "--check"]
    passed = subprocess.run([*command, str(good)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert passed.returncode == 0 and "1 job file(s)" in passed.stdout, passed.stdout + passed.stderr
    failed = subprocess.run([*command, str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert failed.returncode == 1 and '"stoptime"' in failed.stdout
    badly_named = tmp_path / "my job.tm.json"
    badly_named.write_text(json.dumps(SLEEPER))
    named = subprocess.run([*command, str(badly_named)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert named.returncode == 1 and "invalid job name" in named.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="a client of another uid needs root to start")
def test_a_refused_user_sees_no_table_before_permission_denied(daemon: Daemon) -> None:
    system_python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if system_python is None:
        pytest.skip("no system python3 for a client of another uid")
    with tempfile.TemporaryDirectory() as where:  # the checkout may be closed to nobody: a copy it may read
        os.chmod(where, 0o755)
        for package in ("taskmasterctl", "taskmasterd"):
            shutil.copytree(ROOT / package, Path(where) / package, ignore=shutil.ignore_patterns("__pycache__"))
        result = subprocess.run([system_python, "-m", "taskmasterctl", "--port", str(daemon.port), "status"],
                                capture_output=True, text=True, cwd=where, user=65534, group=65534, timeout=60,
                                env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    assert "permission denied" in result.stderr, result.stderr
    assert result.stdout == "" and result.returncode == 1


def test_completion_offers_all_only_where_it_works(daemon: Daemon) -> None:
    bin_dir = str(Path(sys.executable).parent)
    script = out(ctl(None, "completion", "bash"))

    def offered(*words: str) -> list[str]:
        line = " ".join(["taskmasterctl", "--port", str(daemon.port), *words])
        probe = f"source /dev/stdin; COMP_WORDS=({line}); COMP_CWORD={len(words) + 2}; _taskmasterctl; " \
                "echo \"${COMPREPLY[*]}\""
        result = subprocess.run(["bash", "-c", probe], input=script.encode(), capture_output=True, timeout=30,
                                env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, cwd=ROOT)
        return result.stdout.decode().split()

    assert "all" not in offered("tail", "") and "db" in offered("tail", "")
    assert "all" not in offered("pull", "")
    assert "all" in offered("stop", "") and "all" in offered("logs", "")
    assert ctl(daemon, "pull", "db").returncode == 0  # and what is offered there does work
    assert "discarded" in err(ctl(daemon, "tail", "db"))  # (db's output is discarded, but db is found)
    assert "discarded" not in err(ctl(daemon, "tail", "all")) and ctl(daemon, "tail", "all").returncode != 0


def test_errors_that_quote_a_job_file_reach_the_terminal_escaped(tmp_path: Path) -> None:
    with Daemon(tmp_path, jobs={"sly": {**SLEEPER, "stoptime": "\u202e3s\x1b[2J"}}) as daemon:
        for line in (["start", "sly"], ["reload", "sly"], ["reload"]):
            result = ctl(daemon, *line)
            shown = err(result) + out(result)
            assert result.returncode == 1 and "stoptime" in shown, shown
            assert "\u202e" not in shown and "\x1b" not in shown, shown
            assert "\\u202e3s" in shown, shown
