"""What a job writes while it is being stopped reaches its destination, even at the daemon's own
shutdown: the daemon does not leave before every pipe of its children has been read to its end,
and a burst faster than the console is written slows the job down; it never costs a line."""
import re
import signal

from tests.support.daemon import Daemon, wait_for

LINES = 30000
# at SIGTERM, a burst of numbered lines, then exit at once: most of it is still in the pipe then.
# "ready" once the trap is set: RUNNING (starttime 0) only says the shell was started.
BURST = f'trap \'seq 1 {LINES}; exit 0\' TERM; echo ready; while :; do sleep 0.05; done'


def test_every_line_a_job_writes_as_it_stops_reaches_the_console_at_shutdown(tmp_path):
    jobs = {"burst": {"cmd": ["sh", "-c", BURST], "numprocs": 4, "starttime": 0, "stoptime": 30, "stderr": None}}
    daemon = Daemon(tmp_path, jobs, args=["--container"])
    daemon.stdout_path = tmp_path / "daemon.stdout"
    daemon.start()
    wait_for(lambda: all(f"burst[{index}] | ready" in daemon.stdout_path.read_text() for index in range(4)), 30)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(60) == 0
    out = daemon.stdout_path.read_text()
    assert "were dropped" not in out, re.findall(r"\[taskmasterd: .*\]", out)
    for index in range(4):
        numbers = re.findall(rf"^burst\[{index}\] \| (\d+)$", out, re.MULTILINE)
        assert numbers == [str(n) for n in range(1, LINES + 1)], (index, len(numbers))


def test_the_bytes_a_job_writes_as_it_stops_reach_its_log_file_at_shutdown(tmp_path):
    jobs = {"burst": {"cmd": ["sh", "-c", BURST], "numprocs": 4, "starttime": 0, "stoptime": 30, "stderr": None,
                      "logmaxbytes": 0}}
    daemon = Daemon(tmp_path, jobs)
    daemon.start()
    logs_dir = tmp_path / "logs"
    wait_for(lambda: all((logs_dir / f"burst.{index}.out").exists()
                         and (logs_dir / f"burst.{index}.out").read_text().startswith("ready") for index in range(4)), 30)
    assert daemon.stop() == 0
    logs = sorted(path for path in (tmp_path / "logs").iterdir() if path.name.startswith("burst"))
    assert len(logs) == 4
    for path in logs:
        assert path.read_text().endswith(f"\n{LINES}\n"), path
