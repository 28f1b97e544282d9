"""`taskmasterctl enable|disable JOB...`: kept in the state directory (never in the operator's job
file), through daemon restarts; shown in status; a disabled job does not autostart and is not
started by `start all` or a pattern, only when named."""
from __future__ import annotations

import json
from pathlib import Path

from tests.support.control_fixtures import SLEEPER
from tests.support.ctl import ctl, err, out
from tests.support.daemon import Daemon


def states(daemon: Daemon, job: str) -> list[str]:
    return [inst["state"] for inst in daemon.instances(job)]


def test_disable_survives_a_restart_and_keeps_the_job_from_autostart_and_start_all(tmp_path: Path) -> None:
    jobs = {"web": SLEEPER, "db": SLEEPER, "worker": {**SLEEPER, "numprocs": 2}}
    with Daemon(tmp_path, jobs=jobs) as daemon:
        files = {path.name: path.read_bytes() for path in daemon.jobs_dir.iterdir()}
        result = ctl(daemon, "disable", "web", "work*")
        assert result.returncode == 0 and out(result).splitlines() == ["disable web: success", "disable worker: success"]
        again = ctl(daemon, "disable", "web")
        assert again.returncode == 0 and "nothing to do" in err(again)
        assert states(daemon, "web") == ["RUNNING"]  # disable is about starts to come, like systemctl's
        table = out(ctl(daemon, "status"))
        web_row = next(line for line in table.splitlines() if line.startswith("web "))
        assert "disabled" in web_row and "disabled" not in next(l for l in table.splitlines() if l.startswith("db "))
        assert json.loads(out(ctl(daemon, "status", "web", "--json")))["data"]["jobs"][0]["enabled"] is False
        assert {path.name: path.read_bytes() for path in daemon.jobs_dir.iterdir()} == files  # not in the job files
        assert ctl(daemon, "disable", "nope").returncode == 1
    with Daemon(tmp_path) as daemon:  # the same state directory: still disabled
        assert states(daemon, "web") == ["STOPPED"] and states(daemon, "worker") == ["STOPPED", "STOPPED"]
        assert states(daemon, "db") == ["RUNNING"]
        everything = ctl(daemon, "start", "all")
        assert everything.returncode == 0 and "web" not in out(everything), out(everything)
        assert ctl(daemon, "start", "w*").returncode == 1  # the pattern selects no enabled job
        assert states(daemon, "web") == ["STOPPED"]
        named = ctl(daemon, "start", "web")
        assert named.returncode == 0 and states(daemon, "web") == ["RUNNING"]
        assert ctl(daemon, "enable", "worker", "--now").returncode == 0
        assert states(daemon, "worker") == ["RUNNING", "RUNNING"]
        assert ctl(daemon, "disable", "--now", "db").returncode == 0 and states(daemon, "db") == ["STOPPED"]
    with Daemon(tmp_path) as daemon:
        assert states(daemon, "worker") == ["RUNNING", "RUNNING"] and states(daemon, "db") == ["STOPPED"]
