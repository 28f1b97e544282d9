"""The per-instance state machine, shaped as s6-supervise's: a pure table (state, event) ->
(next state, effects). No I/O, clock or process here; `instance.py` feeds it events one at a time
(from its job's queue) and performs the effects it returns.

- Events are what can happen to an instance: a command (start, stop, kill, restart, repair), the
  spawn it asked for made or failed, the exit of its process, its retry timer, what the run's
  watcher saw (ready, not ready in time, healthy, unhealthy, watchdog missed), its dependencies.
- Effects are what the executor does: a transition to log and publish (`Enter`), spawn or cancel
  a queued spawn, the stop signal then SIGKILL (`TERMINATE`) or SIGKILL now, arm or disarm the
  retry timer (`Arm`, `DISARM`), quiet or end the run's watch, hold the start until the
  dependencies are met, defer a command and replay the deferred ones.
- A command is one event. `restart` stops the run and spawns the next in one step of the table:
  a command that arrives while the old run is stopping is deferred, and replayed, in order, once
  the new run has been spawned (or is waiting for its dependencies) - never lost, never merged.
- One throttle for every restart of a run that had reached RUNNING, whatever ended it (an exit, a
  crash, the watchdog, a failed health check, WATCHDOG=trigger): a run that stayed up less than
  STABLE_AFTER seconds is restarted after 0, 1, 2, 4 ... s (capped); a run that lasted longer is
  restarted at once, and the count starts again. A start that fails (an exit before ready) is the
  other budget: `startretries` retries after 1, 2, 4 ... s, then FATAL.

The matrix `TABLE` below has one row per state and one cell per event, as s6-supervise's has;
tests/test_states.py walks every reachable (state, event) pair.

A rolling restart is one command too, ROLL, to each slot in turn (lifecycle/rollout.py orders
them): the slot holds a second spawn beside its current run. The new run starts while the old
one serves (`Roll.QUEUED`, then `Roll.STARTING`, watched for readiness as any run); once it is
ready the two swap places (`Effect.SWAP`): the new run is the slot's, and the old one, now the
second spawn, gets its stop signal (`Roll.DRAINING`) until it exits. A new run that does not
become ready (an exit, its ready deadline, a verdict) is stopped instead and the old one stays:
`halted` says why, for the rollout. Events about the second spawn are told apart by their spawn
id (SPAWNED and SPAWN_FAILED by `Event.second`) and go to the `SECOND` table; whatever takes the
current run out of RUNNING (a stop, a restart, its exit) gives up a new run not yet ready. A
ROLL of a slot that is not RUNNING is a RESTART: there is no run serving to keep.

Room for what comes later: timers carry their purpose (`Arm.why` comes back with its TIMER
event), and `Then` says what follows a run's end (a run that ends by design, a scheduled run).
"""
from __future__ import annotations

import enum
import signal
from dataclasses import dataclass
from typing import Callable, NamedTuple

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
# Every allowed transition, with what causes it. The table never makes another: the exhaustive
# test checks every step it takes against this list.
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
    (S.STARTING, S.STOPPING): "stop, kill or restart while starting; not ready within its deadline; unhealthy; watchdog",
    (S.STARTING, S.STOPPED): "stop or kill before the queued spawn ran",
    (S.RUNNING, S.STOPPING): "stop, kill or restart; unhealthy, or no watchdog ping in time",
    (S.RUNNING, S.EXITED): "the process exited by itself",
    (S.EXITED, S.BACKOFF): "autorestart of a run that did not stay up, throttled",
    (S.STOPPING, S.STOPPED): "the process exited after the stop signal or SIGKILL",
    (S.STOPPING, S.BACKOFF): "a failed start stopped (not ready in time): retries left; or a restart, throttled",
    (S.STOPPING, S.FATAL): "stopped for not being ready within its deadline: a failed start; no retries left",
    (S.BACKOFF, S.STOPPED): "stop or kill while waiting to retry",
}

# Where an instance counts as up (or on its way up), for `start`'s "redundant" and `stop`.
ACTIVE = frozenset({S.WAITING, S.STARTING, S.RUNNING})
# Order in which a job made of several instances reports its summary state: the most urgent first.
STATE_NAMES = {state: state.value for state in State}  # faster than .value (an enum descriptor)
SUMMARY_ORDER = (S.FATAL, S.BACKOFF, S.STARTING, S.WAITING, S.STOPPING, S.RUNNING, S.EXITED, S.STOPPED)

BACKOFF_CAP = 60.0
# Seconds a run must last to count as stable: a restart after a shorter one is throttled. Ten
# seconds, as systemd's default StartLimitIntervalSec: long enough to catch a program restarted
# every few seconds by its own health check or watchdog, short enough that a service killed once
# comes back at once.
STABLE_AFTER = 10.0


class IllegalTransition(RuntimeError):
    pass


def check_transition(old: State, new: State) -> str:
    """The cause of an allowed transition; raises for one the table does not allow."""
    try:
        return TRANSITIONS[(old, new)]
    except KeyError:
        raise IllegalTransition(f"{old.value} -> {new.value} is not an allowed transition") from None


# --- events -------------------------------------------------------------------------------------


class Kind(enum.Enum):
    # commands: a verb, autostart, a reload, numprocs; the executor answers whether it acted
    START = "start"
    STOP = "stop"
    KILL = "kill"
    RESTART = "restart"
    REPAIR = "repair"
    ROLL = "roll"  # a rolling restart of this slot: the new run beside the old until it is ready
    # the process
    SPAWNED = "spawned"  # the queued spawn ran: `pid`, `spawn`, `why` what a stop signals ("its cgroup")
    SPAWN_FAILED = "spawn-failed"  # it could not: `why`, `final` (no retry makes sense)
    EXIT = "exit"  # the process is gone: `code` (negative: killed by that signal), `lived` seconds,
    # `why` what ended it when the kernel said more than the code does (the OOM killer)
    TIMER = "timer"  # the retry timer armed by `Arm` fired: `why` is the Arm's
    # what the run's watcher saw
    READY = "ready"  # stayed up for starttime, or READY=1: `why` says which
    NOT_READY = "not-ready"  # its ready deadline passed
    HEALTHY = "healthy"  # its check passed (after not passing): `why` is the check's detail
    UNHEALTHY = "unhealthy"  # `retries` failures in a row
    WATCHDOG = "watchdog"  # no WATCHDOG=1 in time, or WATCHDOG=trigger
    # the job's dependencies changed (the executor gives the new `waiting` text with the step)
    DEPS = "deps"


K = Kind
COMMANDS = frozenset({K.START, K.STOP, K.KILL, K.RESTART, K.REPAIR, K.ROLL})
_RUN = frozenset({K.EXIT, K.READY, K.NOT_READY, K.HEALTHY, K.UNHEALTHY, K.WATCHDOG})  # about one run


@dataclass(frozen=True, slots=True)
class Event:
    kind: Kind
    why: str = ""
    code: int = 0  # EXIT
    lived: float = 0.0  # EXIT: seconds since the spawn
    final: bool = False  # SPAWN_FAILED
    pid: int | None = None  # SPAWNED
    spawn: int | None = None  # SPAWNED, and every run event: which spawn it is about
    second: bool = False  # SPAWNED, SPAWN_FAILED: of the slot's second spawn (a rolling restart's new run)


# --- effects ------------------------------------------------------------------------------------


class Effect(enum.Enum):
    SPAWN = "spawn"  # queue a spawn in the process table (it comes back as SPAWNED or SPAWN_FAILED)
    CANCEL_SPAWN = "cancel-spawn"  # the queued spawn never runs
    TERMINATE = "terminate"  # the stop signal to the group and its escapes, SIGKILL after stoptime
    KILL = "kill"  # SIGKILL to the group and its escapes now
    DISARM = "disarm"  # cancel the retry timer
    WATCH = "watch"  # the run begins: its readiness clock, health checks, notify socket
    QUIET = "quiet"  # the run is being stopped: no more verdicts from its watcher
    END_RUN = "end-run"  # the run is over (or never began): its watch ends, its socket closes
    HOLD = "hold"  # waiting for dependencies: the job is looked at again when they change
    DEFER = "defer"  # this command waits until the restart under way has spawned
    REPLAY = "replay"  # ... which it now has: the deferred commands, in order
    STANDING = "standing"  # what dependants and listeners see may have changed, with no transition
    SWAP = "swap"  # the second spawn (a new run, now ready) becomes the slot's run, the old one second


@dataclass(frozen=True, slots=True)
class Enter:
    """A transition: logged with its reason, published, and waking whatever waits on the instance.
    `spawn`: the run it is about (None before a spawn is made)."""

    old: State
    new: State
    reason: str
    spawn: int | None = None


@dataclass(frozen=True, slots=True)
class Arm:
    """Arm the retry timer: TIMER(why) after `delay` seconds."""

    delay: float
    why: str


@dataclass(frozen=True, slots=True)
class Second:
    """`effect` on the slot's second spawn (SPAWN, CANCEL_SPAWN, TERMINATE, KILL, WATCH, QUIET,
    END_RUN), not on its current run."""

    effect: Effect


@dataclass(frozen=True, slots=True)
class Note:
    """A step of a rolling restart, logged and published (`rollout` event); no transition."""

    step: str  # "beside", "ready", "halted", "stopped", "given up"
    text: str


Action = Enter | Arm | Effect | Second | Note


class Roll(enum.Enum):
    """The slot's second spawn, beside its current run."""

    NONE = "none"
    QUEUED = "queued"  # a new run's spawn is queued (the current run serves)
    STARTING = "starting"  # the new run is up and watched, not yet ready (the current run serves)
    DRAINING = "draining"  # a run being stopped: the old one once the new was ready, or a new one given up


# --- what the machine remembers, and what it reads of the job's settings -----------------------


class Then(enum.Enum):
    """What follows the exit of a run being stopped."""

    STAY = "stay"  # stay stopped
    START = "start"  # spawn again (a start or restart command came): at once, the budgets reset
    RESTART = "restart"  # a restart the daemon decided (unhealthy, watchdog): throttled
    FAIL = "fail"  # it was not ready in time: a failed start


class Machine(NamedTuple):
    """What an instance remembers between two events (a named tuple: a step makes a new one, and
    `_replace` is what a restart's few steps cost most)."""

    state: State = S.STOPPED
    wanted: bool = False  # should be up: autostart or a start command, until a stop or kill
    has_process: bool = False  # the spawn has run and its process has not exited yet
    then: Then = Then.STAY  # STOPPING: what follows the exit
    then_why: str = ""
    restarting: bool = False  # a restart command is stopping the old run: commands are deferred
    failures: int = 0  # failed starts in a row
    quick: int = 0  # restarts in a row of runs that did not stay up STABLE_AFTER
    restarts: int = 0  # restarts of a run that had reached RUNNING (exit, unhealthy, watchdog)
    exitcode: int | None = None
    signal: int | None = None
    pid: int | None = None  # of the current run
    spawn: int | None = None  # ... and its spawn id
    holder: str = "the process group"  # ... and what its stop signals, for people
    description: str = "not started"
    roll: Roll = Roll.NONE  # the second spawn, during a rolling restart
    second: int | None = None  # ... its spawn id (STARTING, DRAINING)
    second_pid: int | None = None
    halted: str = ""  # why the last rolling restart of this slot kept the old run ("" : it did not)

    def last_exit_expected(self, policy: Policy) -> bool:
        return self.signal is None and self.exitcode in policy.exitcodes


@dataclass(frozen=True, slots=True)
class Policy:
    """What the table reads of the job's spec (made once per version of the file)."""

    autorestart: str = "unexpected"
    exitcodes: frozenset[int] = frozenset({0})
    startretries: int = 3
    ready: str = "starttime"
    on_unhealthy: str = "restart"
    stopsignal: int = int(signal.SIGTERM)

    @property
    def stop_signal_name(self) -> str:
        return signal.Signals(self.stopsignal).name


@dataclass(frozen=True, slots=True)
class Step:
    machine: Machine
    effects: tuple[Action, ...]
    acted: bool = False  # for a command: it changed something (else its answer is "redundant")


# --- pure decisions -----------------------------------------------------------------------------


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


def restart_delay(quick: int) -> float:
    """Pause before the `quick`-th restart in a row of a run that did not stay up: 0 s for the
    first (a single crash comes back at once), then 1 s, 2 s, 4 s … capped."""
    return 0.0 if quick <= 1 else backoff_delay(quick - 1)


def summarize(states: list[State]) -> str:
    """One state for a job: the common state, or the most urgent one present."""
    present = set(states)
    for state in SUMMARY_ORDER:
        if state in present:
            return state.value
    return S.STOPPED.value


# --- the table ----------------------------------------------------------------------------------


class _Build:
    """One step being made: the machine as it changes, and the effects in order."""

    __slots__ = ("m", "effects", "policy", "waiting")

    def __init__(self, m: Machine, policy: Policy, waiting: str | None) -> None:
        self.m = m
        self.effects: list[Action] = []
        self.policy = policy
        self.waiting = waiting

    def set(self, **changes: object) -> None:
        self.m = self.m._replace(**changes)

    def enter(self, new: State, reason: str) -> None:
        self.effects.append(Enter(self.m.state, new, reason, self.m.spawn))
        self.m = self.m._replace(state=new)

    def do(self, *effects: Action) -> None:
        self.effects.extend(effects)

    def stop_text(self) -> str:
        """What a stop signal goes to: "SIGTERM to its cgroup", "SIGTERM to the process group"."""
        return f"{self.policy.stop_signal_name} to {self.m.holder}"


Cell = Callable[[_Build, Event], bool]  # acts on the step; True: a command acted


class UnexpectedEvent(RuntimeError):
    """An event that cannot happen in this state (e.g. an exit with no process): a bug."""


def _spawn_or_wait(b: _Build, reason: str) -> None:
    """STARTING now, or WAITING while a dependency is not met."""
    b.set(pid=None, spawn=None)  # the next run is another spawn
    if b.waiting is not None:
        b.set(description=b.waiting)
        b.enter(S.WAITING, f"{reason}; {b.waiting}")
        b.do(Effect.HOLD)
        return
    b.set(exitcode=None, signal=None, description="spawning")
    b.enter(S.STARTING, reason)
    b.do(Effect.SPAWN)


def _start(b: _Build, ev: Event) -> bool:
    if b.m.state is S.BACKOFF:
        b.do(Effect.DISARM)
    b.set(wanted=True, failures=0, quick=0)
    _spawn_or_wait(b, ev.why)
    return True


def _already_up(b: _Build, ev: Event) -> bool:
    """A start or restart of what is up or on its way: wanted, budgets reset, nothing else."""
    b.set(wanted=True, failures=0, quick=0)
    return ev.kind is K.RESTART  # a restart of a queued or waiting spawn acted: it takes the new settings


def _start_after_stop(b: _Build, ev: Event) -> bool:
    """A start or restart while stopping: spawn again once it is gone (a failed start stays one)."""
    then = Then.START if b.m.then in (Then.STAY, Then.START) else b.m.then
    b.set(wanted=True, failures=0, quick=0, then=then, then_why=ev.why if then is Then.START else b.m.then_why)
    return True


def _stop_now(b: _Build, ev: Event) -> bool:
    """Stop or kill what has no process: a queued spawn, a wait, a retry timer."""
    if b.m.state is S.BACKOFF:
        b.do(Effect.DISARM)
    elif b.m.state is S.STARTING:
        b.do(Effect.CANCEL_SPAWN)
    b.set(wanted=False, description=ev.why)
    b.enter(S.STOPPED, ev.why)
    return True


def _stop_run(b: _Build, ev: Event) -> bool:
    """Stop or kill a run: STOPPING, then STOPPED at its exit."""
    b.set(wanted=False, then=Then.STAY, then_why="")
    if ev.kind is K.KILL:
        b.enter(S.STOPPING, ev.why)
        b.do(Effect.QUIET, Effect.KILL)
    else:
        b.enter(S.STOPPING, f"{ev.why}: {b.stop_text()}")
        b.do(Effect.QUIET, Effect.TERMINATE)
    return True


def _stop_starting(b: _Build, ev: Event) -> bool:
    return _stop_run(b, ev) if b.m.has_process else _stop_now(b, ev)


def _stop_while_stopping(b: _Build, ev: Event) -> bool:
    """Whatever was to follow, it stays stopped; a kill does not wait for the grace."""
    b.set(wanted=False, then=Then.STAY, then_why="")
    if ev.kind is K.KILL:
        b.do(Effect.KILL)
    return True


def _stop_idle(b: _Build, ev: Event) -> bool:
    """Nothing runs: no transition; a job meant to run that no longer is may take work again."""
    if b.m.wanted:
        b.set(wanted=False)
        b.do(Effect.STANDING)
    return False


def _restart_run(b: _Build, ev: Event) -> bool:
    """A restart command (or new spawn settings) on a run: stop it, and spawn the next at its exit.
    Commands that come meanwhile wait for that spawn."""
    if not b.m.has_process:  # a queued spawn: it takes the new settings when it runs
        return _already_up(b, ev)
    b.set(wanted=True, failures=0, quick=0, then=Then.START, then_why=ev.why, restarting=True)
    b.enter(S.STOPPING, f"{ev.why}: {b.stop_text()}")
    b.do(Effect.QUIET, Effect.TERMINATE)
    return True


def _repair(b: _Build, ev: Event) -> bool:
    """Start again what is broken (FATAL, BACKOFF, an unexpected exit code) or meant to run but
    not (wanted, and no exit code says it finished)."""
    m = b.m
    broken = m.state in (S.FATAL, S.BACKOFF) or (
        m.state is S.EXITED and m.exitcode is not None and not m.last_exit_expected(b.policy))
    if broken or (m.wanted and m.state in (S.STOPPED, S.EXITED) and m.exitcode is None):
        return _start(b, ev)
    return False


def _ignore(b: _Build, ev: Event) -> bool:
    """A command with nothing to do here; or a report about a run that is no longer watched (a
    READY=1 read after the stop began, a timer that fired as it was cancelled)."""
    return False


def _impossible(b: _Build, ev: Event) -> bool:
    raise UnexpectedEvent(f"{ev.kind.value} cannot happen in {b.m.state.value}")


def _spawned(b: _Build, ev: Event) -> bool:
    if b.m.has_process:
        raise UnexpectedEvent("a second spawn for one start")
    b.set(has_process=True, pid=ev.pid, spawn=ev.spawn, holder=ev.why or "the process group",
          description=f"pid {ev.pid}")
    b.do(Effect.WATCH)
    return False


def _failed_start(b: _Build, why: str, final: bool = False) -> None:
    """A start that did not reach RUNNING: retry after a backoff, or give up (FATAL)."""
    b.do(Effect.END_RUN)
    failures = b.m.failures + 1
    new = S.FATAL if final else failed_start_state(failures, b.policy.startretries)
    if new is S.BACKOFF:
        delay = backoff_delay(failures)
        description = f"{why}; retry {failures} in {delay:g}s"
        b.do(Arm(delay, "backoff delay elapsed"))
    else:
        description = why if final else f"{why}; gave up after {failures} attempts"
    b.set(failures=failures, has_process=False, pid=None, description=description)
    b.enter(new, description)


def _spawn_failed(b: _Build, ev: Event) -> bool:
    if b.m.has_process:
        raise UnexpectedEvent("a spawn failed after it was made")
    _failed_start(b, ev.why, ev.final)
    return False


def _restart_after(b: _Build, ev: Event, why: str, cause: str) -> None:
    """The one restart throttle: at once after a run that stayed up, else 0, 1, 2, 4 ... s after
    each run in a row that did not. From EXITED (an exit) or STOPPING (the daemon stopped it for
    `cause`)."""
    quick = b.m.quick + 1 if ev.lived < STABLE_AFTER else 0
    delay = restart_delay(quick)
    b.set(restarts=b.m.restarts + 1, quick=quick)
    if delay > 0:
        description = (f"{cause}; {quick} runs in a row ended within {STABLE_AFTER:g}s of their start, "
                       f"restart in {delay:g}s")
        b.set(description=description)
        b.do(Arm(delay, why))
        b.enter(S.BACKOFF, description)
        return
    if b.m.state is S.STOPPING:
        what = _what_ended(ev)
        b.set(description=f"stopped ({what})")
        b.enter(S.STOPPED, what)
    _spawn_or_wait(b, why)


def _what_ended(ev: Event) -> str:
    return ev.why or describe_exit(ev.code)


def _exit_starting(b: _Build, ev: Event) -> bool:
    if not b.m.has_process:
        raise UnexpectedEvent("an exit before the spawn")
    _exited(b, ev)
    _failed_start(b, f"exited too soon ({_what_ended(ev)})")
    return False


def _exit_running(b: _Build, ev: Event) -> bool:
    _exited(b, ev)
    expected = exit_is_expected(ev.code, b.policy.exitcodes)
    what = _what_ended(ev)
    description = f"{what} ({'expected' if expected else 'unexpected'})"
    b.set(description=description)
    b.enter(S.EXITED, description)
    if should_restart(b.policy.autorestart, expected):
        _restart_after(b, ev, f"autorestart={b.policy.autorestart}", description)
    return False


def _exit_stopping(b: _Build, ev: Event) -> bool:
    _exited(b, ev)
    what = _what_ended(ev)
    then, why, replay = b.m.then, b.m.then_why, b.m.restarting
    b.set(then=Then.STAY, then_why="", restarting=False)
    if then is Then.FAIL:
        _failed_start(b, why)
    elif then is Then.RESTART:
        _restart_after(b, ev, f"restart: {why}", why)
    else:
        b.set(description=f"stopped ({what})")
        b.enter(S.STOPPED, what)
        if then is Then.START:
            _spawn_or_wait(b, why)
    if replay:
        b.do(Effect.REPLAY)
    return False


def _exited(b: _Build, ev: Event) -> None:
    code = ev.code
    b.set(exitcode=None if code < 0 else code, signal=-code if code < 0 else None, has_process=False, pid=None)
    b.do(Effect.END_RUN)


def _timer(b: _Build, ev: Event) -> bool:
    _spawn_or_wait(b, ev.why)
    return False


def _ready(b: _Build, ev: Event) -> bool:
    if not b.m.has_process:
        return False
    b.set(failures=0)
    b.enter(S.RUNNING, f"pid {b.m.pid} {ev.why}")
    return False


def _healthy(b: _Build, ev: Event) -> bool:
    if b.policy.ready == "healthy":
        return _ready(b, Event(K.READY, f"passed its first health check ({ev.why})"))
    return False


def _restart_run_by_daemon(b: _Build, why: str) -> None:
    b.set(then=Then.RESTART, then_why=why)
    b.enter(S.STOPPING, f"restart: {why}: {b.stop_text()}")
    b.do(Effect.QUIET, Effect.TERMINATE)


def _unhealthy(b: _Build, ev: Event) -> bool:
    if b.policy.on_unhealthy == "restart" and b.m.has_process:
        _restart_run_by_daemon(b, f"unhealthy ({ev.why})")
    return False


def _watchdog(b: _Build, ev: Event) -> bool:
    if b.m.has_process:
        _restart_run_by_daemon(b, ev.why)
    return False


def _not_ready(b: _Build, ev: Event) -> bool:
    """Not ready within its deadline: stop the run; its exit is a failed start."""
    if not b.m.has_process:
        return False
    b.set(then=Then.FAIL, then_why=ev.why)
    b.enter(S.STOPPING, f"{ev.why}: {b.stop_text()}")
    b.do(Effect.QUIET, Effect.TERMINATE)
    return False


def _deps(b: _Build, ev: Event) -> bool:
    if b.waiting is None:
        _spawn_or_wait(b, "every dependency met")
    else:
        b.set(description=b.waiting)
    return False


# --- the second spawn of a slot (a rolling restart) ---------------------------------------------


def _roll(b: _Build, ev: Event) -> bool:
    """A rolling restart of a running slot: a new run starts beside the one that serves. Not while
    a second spawn is still there (the rollout waits for it to be gone first)."""
    if b.m.roll is not Roll.NONE:
        return False
    b.set(wanted=True, failures=0, quick=0, roll=Roll.QUEUED, description=f"pid {b.m.pid}; a new run starts beside it")
    b.do(Second(Effect.SPAWN), Note("beside", f"{ev.why}: a new run starts beside pid {b.m.pid}"))
    return True


def _second_spawned(b: _Build, ev: Event) -> bool:
    b.set(roll=Roll.STARTING, second=ev.spawn, second_pid=ev.pid,
          description=f"pid {b.m.pid}; new run pid {ev.pid} starting beside it")
    b.do(Second(Effect.WATCH))
    return False


def _halt(b: _Build, why: str) -> None:
    """The new run did not become ready: the old one stays the slot's run."""
    b.set(halted=f"not ready ({why})", description=f"pid {b.m.pid}; its replacement was not ready ({why})")
    b.do(Note("halted", f"the new run was not ready ({why}): pid {b.m.pid} stays"))


def _second_spawn_failed(b: _Build, ev: Event) -> bool:
    b.set(roll=Roll.NONE)
    _halt(b, ev.why)
    return False


def _second_given_up(b: _Build, why: str) -> None:
    """Stop the new run (not ready, unhealthy, its watchdog): it drains, the old one stays."""
    pid = b.m.second_pid
    _halt(b, why)
    b.set(roll=Roll.DRAINING)
    b.do(Second(Effect.QUIET), Second(Effect.TERMINATE),
         Note("given up", f"pid {pid}: {b.policy.stop_signal_name} to {b.m.holder}"))


def _second_not_ready(b: _Build, ev: Event) -> bool:
    _second_given_up(b, ev.why)
    return False


def _second_unhealthy(b: _Build, ev: Event) -> bool:
    if b.policy.on_unhealthy == "restart":
        _second_given_up(b, f"unhealthy ({ev.why})")
    return False


def _second_watchdog(b: _Build, ev: Event) -> bool:
    _second_given_up(b, ev.why)
    return False


def _second_ready(b: _Build, ev: Event) -> bool:
    """The new run is ready: it becomes the slot's run, and the old one gets its stop signal."""
    old_pid, old_spawn, new_pid = b.m.pid, b.m.spawn, b.m.second_pid
    b.set(pid=new_pid, spawn=b.m.second, second=old_spawn, second_pid=old_pid, roll=Roll.DRAINING, failures=0,
          description=f"pid {new_pid} {ev.why}; pid {old_pid} stopping")
    b.do(Effect.SWAP, Second(Effect.QUIET), Second(Effect.TERMINATE), Effect.STANDING,
         Note("ready", f"pid {new_pid} {ev.why}; pid {old_pid}: {b.stop_text()}"))
    return False


def _second_healthy(b: _Build, ev: Event) -> bool:
    if b.policy.ready == "healthy":
        return _second_ready(b, Event(K.READY, f"passed its first health check ({ev.why})"))
    return False


def _second_exit_early(b: _Build, ev: Event) -> bool:
    b.set(roll=Roll.NONE, second=None, second_pid=None)
    b.do(Second(Effect.END_RUN))
    _halt(b, f"exited too soon ({_what_ended(ev)})")
    return False


def _second_gone(b: _Build, ev: Event) -> bool:
    pid = b.m.second_pid
    b.set(roll=Roll.NONE, second=None, second_pid=None)
    if b.m.state is S.RUNNING and not b.m.halted:
        b.set(description=f"pid {b.m.pid}")
    b.do(Second(Effect.END_RUN), Note("stopped", f"pid {pid}: {_what_ended(ev)}"))
    return False


def _second_row(spawned: Cell, failed: Cell, exited: Cell, ready: Cell, not_ready: Cell, healthy: Cell,
                unhealthy: Cell, watchdog: Cell) -> dict[Kind, Cell]:
    return {K.SPAWNED: spawned, K.SPAWN_FAILED: failed, K.EXIT: exited, K.READY: ready, K.NOT_READY: not_ready,
            K.HEALTHY: healthy, K.UNHEALTHY: unhealthy, K.WATCHDOG: watchdog}


# The second spawn's events, by its phase (commands, timers and DEPS are the slot's: TABLE):
#            SPAWNED           SPAWN_FAILED           EXIT                 READY
#            NOT_READY         HEALTHY                UNHEALTHY            WATCHDOG
SECOND: dict[Roll, dict[Kind, Cell]] = {
    Roll.QUEUED: _second_row(
        _second_spawned, _second_spawn_failed, _impossible, _impossible,
        _impossible, _impossible, _impossible, _impossible),
    Roll.STARTING: _second_row(
        _impossible, _impossible, _second_exit_early, _second_ready,
        _second_not_ready, _second_healthy, _second_unhealthy, _second_watchdog),
    Roll.DRAINING: _second_row(
        _impossible, _impossible, _second_gone, _ignore,
        _ignore, _ignore, _ignore, _ignore),
}


def _about_second(m: Machine, ev: Event) -> bool:
    return ev.second or (ev.kind in _RUN and ev.spawn is not None and ev.spawn == m.second)


def _after_command_or_exit(b: _Build, ev: Event, acted: bool) -> bool:
    """What the slot's step means for its second spawn: a new run not yet ready is given up once
    the current run leaves RUNNING (a stop, a restart, its exit: the rollout of this slot is
    over); a kill kills a draining run too. Whether a stop or kill has something to wait for."""
    m = b.m
    if m.roll in (Roll.QUEUED, Roll.STARTING) and m.state is not S.RUNNING:
        if m.roll is Roll.QUEUED:
            b.set(roll=Roll.NONE)
            b.do(Second(Effect.CANCEL_SPAWN), Note("given up", f"the new run is not spawned: {ev.why or ev.kind.value}"))
        else:
            b.set(roll=Roll.DRAINING)
            b.do(Second(Effect.QUIET), Second(Effect.KILL if ev.kind is K.KILL else Effect.TERMINATE),
                 Note("given up", f"pid {m.second_pid}: {ev.why or ev.kind.value}"))
        return acted
    if m.roll is Roll.DRAINING and ev.kind in (K.STOP, K.KILL):
        if ev.kind is K.KILL:
            b.do(Second(Effect.KILL))
        return True  # the draining run is one more process a stop waits for
    return acted

def _row(*cells: Cell) -> dict[Kind, Cell]:
    assert len(cells) == len(Kind), "one cell per event"
    return dict(zip(Kind, cells))


# One row per state, one cell per event, in the order of `Kind`:
#          START             STOP            KILL            RESTART        REPAIR     ROLL
#          SPAWNED           SPAWN_FAILED    EXIT            TIMER
#          READY             NOT_READY       HEALTHY         UNHEALTHY      WATCHDOG       DEPS
TABLE: dict[State, dict[Kind, Cell]] = {
    S.STOPPED: _row(
        _start, _stop_idle, _stop_idle, _start, _repair, _start,
        _impossible, _impossible, _impossible, _ignore,
        _ignore, _ignore, _ignore, _ignore, _ignore, _ignore),
    S.WAITING: _row(
        _already_up, _stop_now, _stop_now, _already_up, _ignore, _already_up,
        _impossible, _impossible, _impossible, _ignore,
        _ignore, _ignore, _ignore, _ignore, _ignore, _deps),
    S.STARTING: _row(
        _already_up, _stop_starting, _stop_starting, _restart_run, _ignore, _restart_run,
        _spawned, _spawn_failed, _exit_starting, _ignore,
        _ready, _not_ready, _healthy, _unhealthy, _watchdog, _ignore),
    S.RUNNING: _row(
        _already_up, _stop_run, _stop_run, _restart_run, _ignore, _roll,
        _impossible, _impossible, _exit_running, _ignore,
        _ignore, _ignore, _ignore, _unhealthy, _watchdog, _ignore),
    S.BACKOFF: _row(
        _start, _stop_now, _stop_now, _start, _repair, _start,
        _impossible, _impossible, _impossible, _timer,
        _ignore, _ignore, _ignore, _ignore, _ignore, _ignore),
    S.STOPPING: _row(
        _start_after_stop, _stop_while_stopping, _stop_while_stopping, _start_after_stop, _ignore, _start_after_stop,
        _impossible, _impossible, _exit_stopping, _ignore,
        _ignore, _ignore, _ignore, _ignore, _ignore, _ignore),
    S.EXITED: _row(
        _start, _stop_idle, _stop_idle, _start, _repair, _start,
        _impossible, _impossible, _impossible, _ignore,
        _ignore, _ignore, _ignore, _ignore, _ignore, _ignore),
    S.FATAL: _row(
        _start, _stop_idle, _stop_idle, _start, _repair, _start,
        _impossible, _impossible, _impossible, _ignore,
        _ignore, _ignore, _ignore, _ignore, _ignore, _ignore),
}



def step(m: Machine, ev: Event, policy: Policy, waiting: str | None = None) -> Step:
    """What `ev` does to an instance in `m`: its next memory and the effects, in order. `waiting`:
    what the job's dependencies still wait for ("waiting for db (healthy)"), None when met.

    A command that arrives while a restart command is stopping the old run is deferred (a
    restart is one event; what comes during it comes after it). A kill also kills the old run at
    once: it comes after the restart, but never waits out the old run's grace. An event about the
    slot's second spawn goes to its row of `SECOND`."""
    b = _Build(m, policy, waiting)
    if m.restarting and ev.kind in COMMANDS:
        return Step(m, (Effect.KILL, Effect.DEFER) if ev.kind is K.KILL else (Effect.DEFER,))
    if (ev.second or m.second is not None) and _about_second(m, ev):
        SECOND[m.roll][ev.kind](b, ev)
        return Step(b.m, tuple(b.effects))
    if ev.kind is K.ROLL:
        b.set(halted="")  # `halted` is about the slot's last roll
    acted = TABLE[m.state][ev.kind](b, ev)
    if m.roll is not Roll.NONE:
        acted = _after_command_or_exit(b, ev, acted)
    return Step(b.m, tuple(b.effects), acted)
