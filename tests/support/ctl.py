"""Run the real taskmasterctl against a test daemon: one-shot, or following (tail -f, events -f)."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

from tests.support.daemon import ROOT, Daemon, free_port


def ctl(daemon: Daemon | None, *args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    port = str(daemon.port if daemon else free_port())
    return subprocess.run([sys.executable, "-m", "taskmasterctl", "--port", port, *args], cwd=ROOT,
                          input=stdin, capture_output=True, timeout=timeout)


def out(result: subprocess.CompletedProcess) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess) -> str:
    return result.stderr.decode()


class Following:
    """`taskmasterctl ARGS` left running; `wait_for` reads its stdout until a text appears."""

    def __init__(self, daemon: Daemon, *args: str) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "taskmasterctl", "--port", str(daemon.port), *args],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.seen = b""

    def wait_for(self, wanted: bytes, timeout: float = 20.0) -> float:
        """Seconds since start at which `wanted` had been printed."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while wanted not in self.seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.proc.stdout], [], [], remaining)[0]:
                raise AssertionError(f"no {wanted!r} in {self.seen[-2000:]!r}")
            chunk = self.proc.stdout.read()
            if not chunk:
                raise AssertionError(f"ended before {wanted!r}: {self.seen[-2000:]!r} {self.proc.stderr.read()!r}")
            self.seen += chunk
        return time.monotonic() - self.started

    def interrupt(self) -> int:
        """Ctrl-C, as an operator ends a follow; the exit status (or an error saying it hung)."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running 20 s after SIGINT; printed {self.seen[-500:]!r}, "
                                 f"stderr {self.proc.stderr.read()[-500:]!r}") from None
        finally:
            self.proc.stdout.close()
            self.proc.stderr.close()
