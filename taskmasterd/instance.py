"""One supervised instance of a job: applies the state machine of `states.py` to a real process.

Everything here is a callback of the event loop: a spawn, the pidfd reporting an exit, a timer
(starttime, backoff, stoptime). No task or thread per instance, so 1000 idle instances cost
nothing but memory.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Callable

from .logcapture import open_capture
from .spawner import Child, spawn, spawn_error_text
from .states import (
    ACTIVE,
    State,
    backoff_delay,
    check_transition,
    describe_exit,
    exit_is_expected,
    failed_start_state,
    should_restart,
)

if TYPE_CHECKING:
    from .job import Job

log = logging.getLogger("taskmasterd.instance")
S = State
_UP = frozenset({S.STARTING, S.RUNNING, S.STOPPING})  # states in which uptime means something


class Instance:
    def __init__(self, job: Job, index: int):
        self.job = job
        self.index = index
        self.state = S.STOPPED
        self.since = round(time.time(), 3)
        self.description = "not started"
        self.child: Child | None = None
        self.started_at: float | None = None  # monotonic time of the current spawn
        self.restarts = 0  # automatic restarts after an exit from RUNNING
        self.failures = 0  # failed starts in a row
        self.exitcode: int | None = None
        self.signal: int | None = None
        self.wanted = False  # should be running: autostart or a start command, until a stop/kill
        self._start_when_stopped = False
        self._stop_reason = ""
        self._timer: asyncio.TimerHandle | None = None
        self._changed: asyncio.Future[State] | None = None

    @property
    def label(self) -> str:
        return f"{self.job.name}[{self.index}]"

    # --- commands -------------------------------------------------------------------------------

    def start(self, reason: str = "start command") -> bool:
        """Start unless already up; resets the retry budget. False when it was already up."""
        self.wanted = True
        self.failures = 0
        if self.state in ACTIVE:
            return False
        if self.state is S.STOPPING:
            self._start_when_stopped = True
            return True
        self._spawn(reason)
        return True

    def stop(self, kill: bool = False) -> bool:
        """Stop signal (or SIGKILL) to the process group; False when nothing was running."""
        self.wanted = False
        self._start_when_stopped = False
        if self.state is S.BACKOFF:
            self._cancel_timer()
            self._enter(S.STOPPED, "kill command" if kill else "stop command")
            return True
        if self.state is S.STOPPING:
            if kill:
                self._escalate("kill command")
            return True
        if self.state not in ACTIVE:
            return False
        assert self.child is not None
        self._cancel_timer()
        if kill:
            self._enter(S.STOPPING, "kill command")
            self._escalate("kill command")
            return True
        spec = self.job.spec
        self._enter(S.STOPPING, f"stop command: {signal.Signals(spec.stopsignal).name} to the process group")
        self._stop_reason = ""
        self.child.signal_group(spec.stopsignal)
        self._timer = asyncio.get_running_loop().call_later(spec.stoptime, self._escalate, "stoptime elapsed")
        return True

    def send_signal(self, signum: int) -> bool:
        """Operator's hook (`signal` verb): `signum` to the process group; False when nothing runs."""
        if self.child is None:
            return False
        return self.child.signal_group(signum)

    def repair(self) -> bool:
        """Start again if broken (FATAL, BACKOFF, crashed) or meant to run but not running."""
        broken = self.state in (S.FATAL, S.BACKOFF) or (
            self.state is S.EXITED and self.exitcode is not None and not self._last_exit_expected()
        )
        if broken or (self.wanted and self.state in (S.STOPPED, S.EXITED) and self.exitcode is None):
            self._cancel_timer()
            return self.start("repair")
        return False

    def _last_exit_expected(self) -> bool:
        return self.signal is None and self.exitcode in self.job.spec.exitcodes

    # --- waiting --------------------------------------------------------------------------------

    async def wait_until(self, done: Callable[[Instance], bool]) -> State:
        while not done(self):
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._changed)
        return self.state

    def start_settled(self) -> bool:
        """A start has an answer: up for starttime, or failed (BACKOFF/FATAL), or was stopped."""
        return self.state not in (S.STARTING, S.STOPPING) and not self._start_when_stopped

    def stop_settled(self) -> bool:
        return self.state is not S.STOPPING

    # --- the machine ----------------------------------------------------------------------------

    def _enter(self, new: State, reason: str) -> None:
        old = self.state
        check_transition(old, new)
        self.state = new
        self.since = round(time.time(), 3)
        log.info("%s: %s -> %s (%s)", self.label, old.value, new.value, reason)
        self.job.supervisor.events.publish_state(self.job.name, self.index, old, new, reason, self.since)  # operator's hook
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(new)

    def _spawn(self, reason: str) -> None:
        spec = self.job.spec
        loop = asyncio.get_running_loop()
        self._cancel_timer()
        self._enter(S.STARTING, reason)
        self.exitcode = self.signal = None
        log_dir = self.job.supervisor.log_dir
        child_fds: list[int] = []
        try:
            for stream in ("stdout", "stderr"):
                # A drain outlives its child and closes itself at EOF, so no byte is lost on exit.
                fd, _ = open_capture(spec.log_path(stream, self.index, log_dir), spec.logmaxbytes,
                                     spec.logbackups, self.job.supervisor.log_files, loop)
                child_fds.append(fd)
            env = self.job.environment(self.index)
            self.child = spawn(spec, env, child_fds[0], child_fds[1])
        except (OSError, KeyError, subprocess.SubprocessError) as exc:
            text = spawn_error_text(exc) if isinstance(exc, OSError) else f"spawn error: {exc}"
            self._failed_start(text)
            return
        finally:
            for fd in child_fds:
                if fd >= 0:
                    os.close(fd)
        self.started_at = time.monotonic()
        self.description = f"pid {self.child.pid}"
        self.child.exited.add_done_callback(self._on_exit)
        self.job.supervisor.children.record(self.child.pid, spec.stopsignal)
        if spec.starttime <= 0:
            self._became_running()
        else:
            self._timer = loop.call_later(spec.starttime, self._became_running)

    def _became_running(self) -> None:
        self._timer = None
        self.failures = 0
        self._enter(S.RUNNING, f"pid {self.child.pid if self.child else '?'} up for {self.job.spec.starttime:g}s")

    def _failed_start(self, why: str) -> None:
        self.failures += 1
        spec = self.job.spec
        new = failed_start_state(self.failures, spec.startretries)
        if new is S.BACKOFF:
            delay = backoff_delay(self.failures)
            self.description = f"{why}; retry {self.failures} in {delay:g}s"
            self._timer = asyncio.get_running_loop().call_later(delay, self._retry)
        else:
            self.description = f"{why}; gave up after {self.failures} attempts"
        self._enter(new, self.description)

    def _retry(self) -> None:
        self._timer = None
        self._spawn("backoff delay elapsed")

    def _escalate(self, why: str) -> None:
        self._cancel_timer()  # called directly by `kill`, the pending stoptime timer is moot
        if self.child is not None:
            self._stop_reason = "" if why == "kill command" else f"(SIGKILL: {why})"
            self.child.signal_group(signal.SIGKILL)

    def _on_exit(self, exited: asyncio.Future[int]) -> None:
        child, self.child = self.child, None
        if child is None:
            return
        returncode = exited.result()
        child.kill_leftovers()
        self.job.supervisor.children.forget(child.pid)
        self._cancel_timer()
        self.exitcode, self.signal = (None, -returncode) if returncode < 0 else (returncode, None)
        what = describe_exit(returncode)
        if self.state is S.STARTING:
            self._failed_start(f"exited too soon ({what})")
        elif self.state is S.RUNNING:
            expected = exit_is_expected(returncode, self.job.spec.exitcodes)
            self.description = f"{what} ({'expected' if expected else 'unexpected'})"
            self._enter(S.EXITED, self.description)
            if should_restart(self.job.spec.autorestart, expected):
                self.restarts += 1
                self._spawn(f"autorestart={self.job.spec.autorestart}")
        elif self.state is S.STOPPING:
            self.description = f"stopped ({what})"
            self._enter(S.STOPPED, f"{what} {self._stop_reason}".strip())
            if self._start_when_stopped:
                self._start_when_stopped = False
                self._spawn("start after stop")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def discard(self) -> None:
        """Forget a stopped instance (numprocs shrank or the job was removed)."""
        self._cancel_timer()

    # --- reporting ------------------------------------------------------------------------------

    def status(self, now: float) -> dict:
        up = self.started_at is not None and self.state in _UP
        return {
            "index": self.index,
            "state": self.state,  # a str enum: serializes as its name, compares equal to it
            "pid": self.child.pid if self.child else None,
            "since": self.since,
            "uptime": now - self.started_at if up else None,  # not rounded: `status` is a hot path
            "restarts": self.restarts,
            "exitcode": self.exitcode,
            "signal": self.signal,
            "description": self.description,
            # operator's hook: meant to be up now (a finished run with an expected exit is not)
            "wanted": self.wanted and not (self.state is S.EXITED and self._last_exit_expected()),
        }
