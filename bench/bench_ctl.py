"""taskmasterctl benchmark (run by hand): `python bench/bench_ctl.py`.

- one-shot `taskmasterctl status JOB` as a whole process (median of 50), in a virtualenv laid out
  as `pip install` leaves it (the package on sys.path, no editable-install finder), beside the
  floor of that interpreter starting and doing nothing;
- `tail -f`: from a job writing a line to taskmasterctl printing it (p50, p99 of 200 lines);
- `events -f`: from a SIGKILL of an instance to taskmasterctl printing its EXITED line (p50, p99
  of 50 kills).
"""
from __future__ import annotations

import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.daemon import Daemon  # noqa: E402
from report import print_table  # noqa: E402  (bench/ is the script's directory)

SLEEP = {"cmd": ["sleep", "100000"], "starttime": 0, "stdout": None, "stderr": None, "autorestart": "always"}
# Prints the shared monotonic clock every 20 ms: the reader computes each line's latency.
CLOCK = {"cmd": [sys.executable, "-u", "-c", "import time\nwhile True:\n print(time.monotonic())\n time.sleep(0.02)"],
         "starttime": 0, "stderr": None}
ONE_SHOT_RUNS, TAIL_LINES, KILLS = 50, 200, 50
ENTRY_POINT = "import sys\nfrom taskmasterctl.cli import main\nsys.exit(main())\n"


def installed_layout(root: Path) -> Path:
    """A virtualenv with taskmaster importable as after `pip install` (a path in a .pth file) and
    a console script like the one pip writes; returns the script."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    # pip compiles the modules it installs; PYTHONDONTWRITEBYTECODE would otherwise leave each
    # run compiling them anew
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "taskmasterd"), str(ROOT / "taskmasterctl")],
                   check=True, stdout=subprocess.DEVNULL)
    site = next((root / "lib").glob("python3*/site-packages"))
    (site / "taskmaster.pth").write_text(f"{ROOT}\n")
    script = root / "bin" / "taskmasterctl"
    script.write_text(f"#!{root / 'bin' / 'python'}\n{ENTRY_POINT}")
    script.chmod(0o755)
    return script


def process_ms(command: list[str], runs: int) -> str:
    """The median and the fastest of `runs` whole runs (the fastest is what a busy machine hides least)."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return f"median {statistics.median(samples) * 1000:.1f} ms  min {min(samples) * 1000:.1f} ms"


def instructions(command: list[str]) -> str:
    """Instructions the whole process executes, counted by callgrind: the same on a busy machine."""
    if shutil.which("valgrind") is None:
        return "valgrind not installed"
    run = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
                         capture_output=True, text=True, check=True)
    match = re.search(r"Collected : (\d+)", run.stderr)
    return f"{int(match.group(1)) / 1e6:.1f} M instructions" if match else "no count"


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"p50 {ordered[len(ordered) // 2] * 1000:.2f} ms  p99 {ordered[int(len(ordered) * 0.99)] * 1000:.2f} ms"


class Lines:
    """The stdout of a following taskmasterctl, line by line, with the time each arrived."""

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buffer = b""

    def next(self, timeout: float = 10.0) -> tuple[float, bytes]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if not select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("no line")
            self.buffer += os.read(self.fd, 65536)
        arrived = time.monotonic()
        line, self.buffer = self.buffer.split(b"\n", 1)
        return arrived, line

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)


def main() -> None:
    rows: list[tuple[str, str, str]] = []
    ctl = [sys.executable, "-m", "taskmasterctl"]
    with tempfile.TemporaryDirectory(prefix="bench-ctl-") as scratch:
        script = installed_layout(Path(scratch) / "venv")
        with Daemon(Path(scratch) / "d", jobs={"web": SLEEP, "clock": CLOCK, "victim": {**SLEEP, "numprocs": KILLS}},
                    args=["--log-level", "WARNING"]) as daemon:
            port = ["--port", str(daemon.port)]
            rows.append(("taskmasterctl status JOB (process)", process_ms([str(script), *port, "status", "web"],
                                                                           ONE_SHOT_RUNS), "< 30 ms"))
            rows.append(("  python -c pass, same interpreter", process_ms([str(script.with_name("python")), "-c", "pass"],
                                                                          ONE_SHOT_RUNS), "(floor)"))
            rows.append(("  counted", instructions([str(script), *port, "status", "web"]),
                         instructions([str(script.with_name("python")), "-c", "pass"]) + " for the floor"))
            dev = [str(Path(sys.executable).with_name("taskmasterctl")), *port, "status", "web"]
            rows.append(("  the same from the editable dev install", process_ms(dev, ONE_SHOT_RUNS), "(info)"))

            tail = Lines([*ctl, *port, "tail", "-f", "-n", "0", "clock"])
            try:
                samples = []
                for _ in range(TAIL_LINES):
                    arrived, line = tail.next()
                    samples.append(arrived - float(line))
            finally:
                tail.close()
            rows.append(("tail -f: write to print", percentiles(samples), "(report)"))

            events = Lines([*ctl, *port, "events", "-f", "-n", "1"])
            try:
                events.next()  # subscribed
                samples = []
                # each instance killed once: a second kill of a run younger than the restart
                # throttle's window (lifecycle/states.py, STABLE_AFTER) would be delayed
                for index in range(KILLS):
                    pid = daemon.instances("victim")[index]["pid"]
                    killed = time.monotonic()
                    os.kill(pid, signal.SIGKILL)
                    while True:
                        arrived, line = events.next()
                        if f"victim[{index}] RUNNING -> EXITED".encode() in line:
                            samples.append(arrived - killed)
                            break
            finally:
                events.close()
            rows.append(("events -f: SIGKILL to its line", percentiles(samples), "(report)"))
    print_table(rows)


if __name__ == "__main__":
    main()
