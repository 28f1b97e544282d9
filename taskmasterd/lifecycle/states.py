"""The per-instance state machine: states, the one table of allowed transitions, and the pure
decisions taken when an instance exits. No I/O here; `instance.py` applies these decisions."""
from __future__ import annotations

import enum

from ..processes.exits import describe_exit


class State(str, enum.Enum):
    STOPPED = "STOPPED"
    WAITING = "WAITING"  # meant to start, held back until every dependency meets its condition
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


S = State
# Every allowed transition, with what causes it. Anything else is a bug and raises.
TRANSITIONS: dict[tuple[State, State], str] = {
    (S.STOPPED, S.STARTING): "start command, autostart, repair, or the restart that stopped it",
    (S.EXITED, S.STARTING): "autorestart, start command, or repair",
    (S.FATAL, S.STARTING): "start command or repair",
    (S.BACKOFF, S.STARTING): "backoff delay elapsed, or start command",
    (S.WAITING, S.STARTING): "every dependency met its condition",
    (S.STOPPED, S.WAITING): "start command, autostart, repair, or a restart; a dependency is not met",
    (S.EXITED, S.WAITING): "autorestart, start command, or repair; a dependency is not met",
    (S.FATAL, S.WAITING): "start command or repair; a dependency is not met",
    (S.BACKOFF, S.WAITING): "backoff delay elapsed, or start command; a dependency is not met",
    (S.WAITING, S.STOPPED): "stop or kill while waiting for dependencies",
    (S.STARTING, S.RUNNING): "ready: stayed up for starttime, sent READY=1, or passed its first health check",
    (S.STARTING, S.BACKOFF): "exited before it was ready, or could not be spawned; retries left",
    (S.STARTING, S.FATAL): "exited before it was ready, or could not be spawned; no retries left",
    (S.STARTING, S.STOPPING): "stop or kill while starting; not ready within its deadline; unhealthy",
    (S.STARTING, S.STOPPED): "stop or kill before the queued spawn ran",
    (S.RUNNING, S.STOPPING): "stop or kill; a restart: unhealthy, or no watchdog ping in time",
    (S.RUNNING, S.EXITED): "the process exited by itself",
    (S.EXITED, S.BACKOFF): "autorestart of a crash loop, throttled",
    (S.STOPPING, S.STOPPED): "the process exited after the stop signal or SIGKILL",
    (S.STOPPING, S.BACKOFF): "stopped for not being ready within its deadline: a failed start; retries left",
    (S.STOPPING, S.FATAL): "stopped for not being ready within its deadline: a failed start; no retries left",
    (S.BACKOFF, S.STOPPED): "stop or kill while waiting to retry",
}

# Where an instance counts as up (or on its way up), for `start`'s "redundant" and `stop`.
ACTIVE = frozenset({S.WAITING, S.STARTING, S.RUNNING})
# Order in which a job made of several instances reports its summary state: the most urgent first.
SUMMARY_ORDER = (S.FATAL, S.BACKOFF, S.STARTING, S.WAITING, S.STOPPING, S.RUNNING, S.EXITED, S.STOPPED)

BACKOFF_CAP = 60.0
QUICK_EXIT = 1.0  # seconds: an instance that lived less than this and exited is crash-looping


class IllegalTransition(RuntimeError):
    pass


def check_transition(old: State, new: State) -> str:
    """The cause of an allowed transition; raises for one the table does not allow."""
    try:
        return TRANSITIONS[(old, new)]
    except KeyError:
        raise IllegalTransition(f"{old.value} -> {new.value} is not an allowed transition") from None


def exit_is_expected(returncode: int, exitcodes: frozenset[int]) -> bool:
    """A negative returncode is a death by signal, which is never expected."""
    return returncode >= 0 and returncode in exitcodes


def should_restart(policy: str, expected: bool) -> bool:
    return policy == "always" or (policy == "unexpected" and not expected)


def failed_start_state(failures: int, startretries: int) -> State:
    """After the `failures`-th failed start in a row: retry (BACKOFF) or give up (FATAL).
    `startretries` counts retries, so the program gets 1 + startretries attempts; -1 = forever."""
    if startretries >= 0 and failures > startretries:
        return S.FATAL
    return S.BACKOFF


def backoff_delay(failures: int) -> float:
    """1 s, 2 s, 4 s … after the 1st, 2nd, 3rd failed start, capped."""
    return min(2.0 ** max(failures - 1, 0), BACKOFF_CAP)


def crash_loop_delay(quick_exits: int) -> float:
    """Pause before restarting after the `quick_exits`-th exit in a row within QUICK_EXIT of the
    spawn: 0 s for the first (a single crash comes back at once), then 1 s, 2 s, 4 s … capped."""
    return 0.0 if quick_exits <= 1 else backoff_delay(quick_exits - 1)


def summarize(states: list[State]) -> str:
    """One state for a job: the common state, or the most urgent one present."""
    present = set(states)
    for state in SUMMARY_ORDER:
        if state in present:
            return state.value
    return S.STOPPED.value
