"""The operator's views (run by hand): `python bench/bench_operator.py [--quick]`.

- `taskmasterctl status JOB` end to end, a whole process in a virtualenv laid out as pip leaves
  it, for a job of two instances with their process trees, CPU, memory and last log lines
  (median and fastest of 30): target 50 ms;
- what serving `taskmasterctl top` costs the daemon with 1000 instances: the real top, in tmux
  at 80x24, for 30 s, the daemon's CPU time (psutil) against the same 30 s idle: target 1 % of
  a core;
- `taskmasterctl logs -f all` over 100 jobs writing 10 MiB/s together (numbered 100-byte lines
  in bursts): how much it printed, how far behind it was when the writers stopped, every line
  whole and once; target: keeps up.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.daemon import Daemon, wait_for  # noqa: E402
from bench_ctl import installed_layout  # noqa: E402  (bench/ is the script's directory)
from report import print_table  # noqa: E402

QUICK = "--quick" in sys.argv
STATUS_RUNS = 10 if QUICK else 30
TOP_SECONDS = 10 if QUICK else 30
LOGS_SECONDS = 5 if QUICK else 20
SLEEP = {"cmd": ["sleep", "100000"], "starttime": 0, "stdout": None, "stderr": None}
WEB = {"cmd": ["sh", "-c", "sleep 100000 & for i in $(seq 1 20); do echo line $i; echo warn $i >&2; done; wait"],
       "starttime": 0, "numprocs": 2}
# 105 000 bytes a second each (10 MiB/s for 100 of them): ten bursts a second of 100 numbered 105-byte lines.
WRITER = r"""
import os, sys, time
job = os.environ["TASKMASTER_JOB"].encode()
seq = 0
next_burst = time.monotonic()
while True:
    lines = []
    for _ in range(100):
        head = b"%s %d " % (job, seq)
        lines.append(head + b"x" * (104 - len(head)) + b"\n")
        seq += 1
    os.write(1, b"".join(lines))  # 10 500 bytes
    next_burst += 0.1
    time.sleep(max(0.0, next_burst - time.monotonic()))
"""


def ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1000:.1f} ms  min {min(samples) * 1000:.1f} ms"


def status_job(script: Path, daemon: Daemon) -> str:
    command = [str(script), "--port", str(daemon.port), "status", "web"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    samples = []
    for _ in range(STATUS_RUNS):
        began = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - began)
    return ms(samples)


def daemon_cpu(daemon: Daemon) -> float:
    times = psutil.Process(daemon.proc.pid).cpu_times()
    return times.user + times.system


def top_cost(scratch: Path) -> tuple[str, str]:
    if shutil.which("tmux") is None:
        return "tmux not installed", ""
    jobs = {f"pool{n}": {**SLEEP, "numprocs": 100} for n in range(10)}
    with Daemon(scratch / "top", jobs=jobs, args=["--log-level", "WARNING"]) as daemon:
        time.sleep(3)  # the spawns settle
        before = daemon_cpu(daemon)
        time.sleep(TOP_SECONDS)
        idle = daemon_cpu(daemon) - before
        server = f"bench-top-{os.getpid()}"
        command = f"cd {ROOT} && {sys.executable} -m taskmasterctl --port {daemon.port} top"
        subprocess.run(["tmux", "-L", server, "new-session", "-d", "-x", "80", "-y", "24", command], check=True)
        try:
            time.sleep(3)  # its first screen (accounting of every instance once)
            before = daemon_cpu(daemon)
            time.sleep(TOP_SECONDS)
            serving = daemon_cpu(daemon) - before
            screen = subprocess.run(["tmux", "-L", server, "capture-pane", "-p"], capture_output=True, text=True).stdout
        finally:
            subprocess.run(["tmux", "-L", server, "kill-server"], capture_output=True)
        assert "1000 instances" in screen, screen
    cost = (serving - idle) / TOP_SECONDS * 100
    return (f"{cost:.2f} % of a core ({serving:.2f} s CPU in {TOP_SECONDS} s; idle {idle:.2f} s)",
            screen)


def written(scratch: Path) -> int:
    """Bytes in the writers' log files (the current ones and their backups)."""
    return sum(path.stat().st_size for path in (scratch / "logs" / "logs").glob("w*.out*"))


def logs_throughput(scratch: Path) -> str:
    jobs = {f"w{n:03d}": {"cmd": [sys.executable, "-c", WRITER], "starttime": 0, "stderr": None,
                          "logmaxbytes": 4 << 20, "logbackups": 2} for n in range(100)}
    with Daemon(scratch / "logs", jobs=jobs, args=["--log-level", "WARNING"]) as daemon:
        time.sleep(2)
        out_path = scratch / "logs.out"
        with open(out_path, "wb") as sink:
            follower = subprocess.Popen([sys.executable, "-m", "taskmasterctl", "--port", str(daemon.port), "logs",
                                         "-f", "-n", "0", "all"], cwd=ROOT, stdout=sink)
            time.sleep(2)  # every stream followed
            client = psutil.Process(follower.pid)
            written_before = written(scratch)
            began, daemon_began, client_began = time.monotonic(), daemon_cpu(daemon), sum(client.cpu_times()[:2])
            time.sleep(LOGS_SECONDS)
            written_then = written(scratch)
            assert subprocess.run([sys.executable, "-m", "taskmasterctl", "--port", str(daemon.port), "stop", "all"],
                                  cwd=ROOT, capture_output=True).returncode == 0
            stopped = time.monotonic()
            spent_daemon = daemon_cpu(daemon) - daemon_began
            spent_client = sum(client.cpu_times()[:2]) - client_began
            last = {}  # each job's last line, as written
            for path in (scratch / "logs" / "logs").glob("w*.0.out"):
                tail = path.read_bytes()[-200:].splitlines()[-1]
                last[tail.split()[0]] = int(tail.split()[1])
            grown, size = stopped, out_path.stat().st_size
            while time.monotonic() - grown < 2.0:  # caught up: nothing more printed for 2 s
                time.sleep(0.02)
                if out_path.stat().st_size != size:
                    grown, size = time.monotonic(), out_path.stat().st_size
            behind = grown - stopped
            follower.terminate()
            follower.wait(10)
        printed = out_path.read_bytes()
    lines = printed.splitlines()
    pattern = re.compile(rb"^w\d{3}\[0\] \| (w\d{3}) (\d+) x+$")
    seen: dict[bytes, list[int]] = {}
    for line in lines:
        match = pattern.match(line)
        assert match and len(line) == len(b"w000[0] | ") + 104, line[:120]
        seen.setdefault(match.group(1), []).append(int(match.group(2)))
    for job, numbers in seen.items():
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "a line lost or repeated"
        assert numbers[-1] == last[job], f"{job}: its last line {last[job]} was not printed"
    rate = (written_then - written_before) / (stopped - began) / (1 << 20)
    return (f"writers {rate:.1f} MiB/s for {stopped - began:.0f} s, {len(printed) / (1 << 20):.0f} MiB printed; "
            f"the last line of each of the 100 printed {behind:.2f} s after the writers stopped; CPU: daemon "
            f"{spent_daemon / LOGS_SECONDS * 100:.0f} %, taskmasterctl {spent_client / LOGS_SECONDS * 100:.0f} %; "
            "every line whole, once, in order")


def main() -> None:
    rows: list[tuple[str, str, str]] = []
    print(f"load before: {os.getloadavg()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as where:
        scratch = Path(where)
        script = installed_layout(scratch / "venv")
        with Daemon(scratch / "status", jobs={"web": WEB}, args=["--log-level", "WARNING"]) as daemon:
            time.sleep(1)
            rows.append(("status JOB, end to end (process)", status_job(script, daemon), "<= 50 ms"))
        cost, screen = top_cost(scratch)
        rows.append(("top over 1000 instances: daemon CPU", cost, "<= 1 % of a core"))
        rows.append(("logs -f all, 100 jobs, 10 MiB/s", logs_throughput(scratch), "keeps up"))
    print_table(rows)
    print(f"load after: {os.getloadavg()}", file=sys.stderr)
    if screen:
        print("\ntop's screen during the measure:\n" + screen)


if __name__ == "__main__":
    main()
