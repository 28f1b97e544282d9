"""`taskmasterctl top` in a real pseudo-terminal: tmux runs it at 80x24, its screen is read back
with capture-pane and looked at (rows, CPU, sparklines, the filter, a stop after y, a refused
restart after n, q), in colour and on a terminal without colours."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.control_fixtures import SLEEPER, serving_daemon
from tests.support.daemon import ROOT, Daemon, wait_for

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux runs top in a real terminal (make test "
                                "installs it)")
BUSY = {"cmd": ["sh", "-c", "while :; do :; done"], "starttime": 0, "stdout": None, "stderr": None}
JOBS = {"web": {**SLEEPER, "numprocs": 2}, "busy": BUSY, "db": SLEEPER}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from serving_daemon(tmp_path_factory.mktemp("top"), JOBS)


class Screen:
    """taskmasterctl top in a tmux pane of its own server (never the operator's tmux)."""

    def __init__(self, daemon: Daemon, term: str = "xterm-256color", extra_env: str = "") -> None:
        self.server = f"tm-top-{os.getpid()}-{time.monotonic_ns()}"
        command = (f"cd {ROOT} && TERM={term} LANG=C.UTF-8 {extra_env} "
                   f"{sys.executable} -m taskmasterctl --port {daemon.port} top; echo TOP-ENDED $?; sleep 30")
        self.tmux("new-session", "-d", "-x", "80", "-y", "24", command)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.server, *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout

    def text(self) -> list[str]:
        return self.tmux("capture-pane", "-p").splitlines()

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def wait(self, predicate, what: str, timeout: float = 20.0) -> list[str]:
        found: list[str] = []

        def look() -> bool:
            found[:] = self.text()
            return predicate(found)

        try:
            wait_for(look, timeout=timeout, what=what)
        except TimeoutError:
            raise AssertionError(f"{what}; the screen:\n" + "\n".join(found)) from None
        return found

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def screen(daemon: Daemon) -> Iterator[Screen]:
    shown = Screen(daemon)
    yield shown
    shown.close()


def row(lines: list[str], label: str) -> list[str]:
    """The cells after the label of the row labelled `label` (empty when there is none)."""
    return next((line[1:].split()[len(label.split()):] for line in lines[2:] if line[1:].startswith(label + " ")), [])


def test_top_shows_every_job_with_cpu_memory_and_history_in_80x24(screen: Screen, daemon: Daemon) -> None:
    lines = screen.wait(lambda s: len(row(s, "busy")) > 6, "busy's row")
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    assert "taskmaster top" in lines[0] and "3 jobs, 4 instances" in lines[0]
    assert lines[1].split()[:8] == ["JOB", "STATE", "UPTIME", "RST", "HEALTH", "CPU%", "MEM", "CPU"]
    assert all(row(lines, label) for label in ("busy", "db", "web", "  [0]", "  [1]"))
    assert row(lines, "db")[0] == "RUNNING" and row(lines, "web")[0] == "RUNNING"
    assert any(line.startswith("   [1]") for line in lines)  # web's instances under it
    lines = screen.wait(lambda s: float(row(s, "busy")[3]) > 20, "busy's CPU above 20 %")  # STATE UPTIME RST CPU%
    assert row(lines, "busy")[4].endswith(("K", "M"))
    lines = screen.wait(lambda s: sum(c in "▁▂▃▄▅▆▇█" for c in "".join(s)) >= 10, "sparklines")
    assert "q quit" in lines[-1]


def test_top_filters_stops_after_yes_and_not_after_no_then_quits(screen: Screen, daemon: Daemon) -> None:
    screen.wait(lambda s: bool(row(s, "web")), "web's row")
    screen.keys("/", "w", "e", "Enter")
    screen.wait(lambda s: not row(s, "busy") and bool(row(s, "web")) and "filter: we" in s[-1] and "_" not in s[-1],
                "only web after the filter")
    screen.keys("Down", "Down", "s")  # web, [0], [1]: the second instance
    screen.wait(lambda s: "stop web:1? y/N" in s[-1], "the question")
    screen.keys("y")
    wait_for(lambda: daemon.instances("web")[1]["state"] == "STOPPED", what="web:1 stopped")
    screen.wait(lambda s: row(s, "  [1]")[:1] == ["STOPPED"], "web[1] STOPPED on the screen")
    assert daemon.instances("web")[0]["state"] == "RUNNING"
    screen.keys("Up", "r")
    screen.wait(lambda s: "restart web:0? y/N" in s[-1], "the restart question")
    pid = daemon.instances("web")[0]["pid"]
    screen.keys("n")
    screen.wait(lambda s: "not done" in s[-1], "the refusal noted")
    assert daemon.instances("web")[0]["pid"] == pid
    screen.keys("q")
    screen.wait(lambda s: any("TOP-ENDED 0" in line for line in s), "top ended with status 0")
    subprocess.run([sys.executable, "-m", "taskmasterctl", "--port", str(daemon.port), "start", "web"], cwd=ROOT,
                   capture_output=True, timeout=60, check=True)


def test_top_without_colours_marks_the_selection(daemon: Daemon) -> None:
    plain = Screen(daemon, term="vt100", extra_env="NO_COLOR=1 LANG=C LC_ALL=C")
    try:
        lines = plain.wait(lambda s: bool(row(s, "db")), "db's row")
        assert any(line.startswith(">") for line in lines[2:])
        plain.wait(lambda s: "up/down select" in s[-1], "ASCII keys help")
        plain.keys("q")
        plain.wait(lambda s: any("TOP-ENDED 0" in line for line in s), "top ended")
    finally:
        plain.close()


def test_top_needs_a_terminal(daemon: Daemon) -> None:
    result = subprocess.run([sys.executable, "-m", "taskmasterctl", "--port", str(daemon.port), "top"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "needs a terminal" in result.stderr
