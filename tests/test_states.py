"""The state machine's table, without processes: every cell exists, and a walk of every reachable
(state, event) pair - the events a real instance can receive in each situation, under every kind
of job - finds only allowed transitions and effects the executor can perform."""
from collections import deque
from typing import NamedTuple
from itertools import product

import pytest

from taskmasterd.lifecycle.states import (
    COMMANDS,
    SECOND,
    STABLE_AFTER,
    TABLE,
    TRANSITIONS,
    Arm,
    Effect,
    Enter,
    Event,
    IllegalTransition,
    Kind,
    Machine,
    Note,
    Policy,
    Roll,
    Second,
    State,
    Then,
    backoff_delay,
    check_transition,
    describe_exit,
    exit_is_expected,
    failed_start_state,
    restart_delay,
    should_restart,
    step,
    summarize,
)

S, K = State, Kind
WAITING_TEXT = "waiting for db (running)"


def test_every_state_has_a_cell_for_every_event():
    assert set(TABLE) == set(State)
    for state, row in TABLE.items():
        assert list(row) == list(Kind), state


def test_table_covers_every_state_and_rejects_the_rest():
    assert {old for old, _ in TRANSITIONS} | {new for _, new in TRANSITIONS} == set(State)
    with pytest.raises(IllegalTransition):
        check_transition(S.STOPPED, S.RUNNING)
    with pytest.raises(IllegalTransition):
        check_transition(S.FATAL, S.STOPPING)
    assert check_transition(S.RUNNING, S.EXITED)


# --- the walk -----------------------------------------------------------------------------------


class World(NamedTuple):
    """An instance and what the executor holds for it: a queued spawn, a process, an armed timer,
    deferred commands; and the same for the slot's second spawn (a rolling restart)."""

    m: Machine
    queued: bool = False
    process: bool = False
    timer: str | None = None  # the `why` of the armed timer
    deferred: tuple[Event, ...] = ()
    second_queued: bool = False
    second_process: bool = False

    def key(self) -> tuple:
        m = self.m
        return (m.state, m.wanted, m.has_process, m.then, m.restarting, min(m.failures, 4), min(m.quick, 4),
                m.exitcode, m.signal, self.queued, self.process, self.timer is not None,
                tuple(e.kind for e in self.deferred), m.roll, self.second_queued,
                self.second_process)


WATCHER = [Event(K.READY, "up for 1s"), Event(K.NOT_READY, "not ready within 5s"), Event(K.HEALTHY, "tcp listening"),
           Event(K.UNHEALTHY, "http 503"), Event(K.WATCHDOG, "no WATCHDOG=1 for 5s")]
EXITS = list(product((0, 1, -9), (0.1, STABLE_AFTER + 1)))


def possible_events(world: World) -> list[Event]:
    """What can reach an instance in this world: any command, any report of the run's watcher
    (a late one too) about either of its spawns, and a process's events only when there is a
    spawn queued, a process, a timer armed. (At most two commands wait behind a restart: more add
    nothing new to the walk.)"""
    m = world.m
    events = [Event(kind, f"{kind.value} command") for kind in COMMANDS] if len(world.deferred) < 2 else []
    events += [Event(ev.kind, ev.why, spawn=m.spawn) for ev in WATCHER] + [Event(K.DEPS)]
    fresh = max(m.spawn or 0, m.second or 0) + 1  # a new spawn's id: neither of the slot's
    if world.queued:
        events += [Event(K.SPAWNED, pid=100, spawn=fresh), Event(K.SPAWN_FAILED, "spawn error: no such file"),
                   Event(K.SPAWN_FAILED, "unsafe log file", final=True)]
    if world.process:
        events += [Event(K.EXIT, code=code, lived=lived, spawn=m.spawn) for code, lived in EXITS]
    if world.timer is not None:
        events.append(Event(K.TIMER, world.timer))
    if world.second_queued:
        events += [Event(K.SPAWNED, pid=200, spawn=fresh, second=True),
                   Event(K.SPAWN_FAILED, "spawn error: no such file", second=True)]
    if world.second_process:
        events += [Event(ev.kind, ev.why, spawn=m.second) for ev in WATCHER]
        events += [Event(K.EXIT, code=code, lived=lived, spawn=m.second) for code, lived in EXITS]
    return events


def apply(world: World, ev: Event, policy: Policy, waiting: str | None) -> World:
    """One step of the table, with the executor's side modelled; asserts what must hold."""
    second_exit = ev.kind is K.EXIT and ev.spawn is not None and ev.spawn == world.m.second
    if ev.kind in (K.SPAWNED, K.SPAWN_FAILED) and ev.second:
        world = world._replace(second_queued=False, second_process=ev.kind is K.SPAWNED)
    elif ev.kind is K.SPAWNED or ev.kind is K.SPAWN_FAILED:
        world = world._replace(queued=False, process=ev.kind is K.SPAWNED)
    elif second_exit:
        world = world._replace(second_process=False)
    elif ev.kind is K.EXIT:
        world = world._replace(process=False)
    elif ev.kind is K.TIMER:
        world = world._replace(timer=None)
    result = step(world.m, ev, policy, waiting)
    state = world.m.state
    replay: tuple[Event, ...] = ()
    for effect in result.effects:
        if isinstance(effect, Second):
            world = apply_second(world, effect.effect)
            continue
        if isinstance(effect, Note) or effect is Effect.STANDING:
            continue
        if effect is Effect.SWAP:
            assert world.process and world.second_process, world
            continue
        if isinstance(effect, Enter):
            assert effect.old is state, (effect, state)
            check_transition(effect.old, effect.new)
            state = effect.new
        elif isinstance(effect, Arm):
            assert world.timer is None and effect.delay > 0
            world = world._replace(timer=effect.why)
        elif effect is Effect.DISARM:
            assert world.timer is not None
            world = world._replace(timer=None)
        elif effect is Effect.SPAWN:
            assert not world.queued and not world.process
            world = world._replace(queued=True)
        elif effect is Effect.CANCEL_SPAWN:
            assert world.queued
            world = world._replace(queued=False)
        elif effect in (Effect.TERMINATE, Effect.KILL, Effect.WATCH, Effect.QUIET):
            assert world.process, effect
        elif effect is Effect.HOLD:
            assert state is S.WAITING
        elif effect is Effect.DEFER:
            assert ev.kind in COMMANDS and world.m.restarting
            world = world._replace(deferred=world.deferred + (ev,))
        elif effect is Effect.REPLAY:
            replay, world = world.deferred, world._replace(deferred=())
    assert state is result.machine.state
    if ev.kind not in COMMANDS:
        assert not result.acted
    world = world._replace(m=result.machine)
    check(world)
    for deferred in replay:
        world = apply(world, deferred, policy, waiting)
    return world


def apply_second(world: World, effect: Effect) -> World:
    """An effect on the second spawn: what the executor can do with it."""
    if effect is Effect.SPAWN:
        assert not world.second_queued and not world.second_process, world
        return world._replace(second_queued=True)
    if effect is Effect.CANCEL_SPAWN:
        assert world.second_queued, world
        return world._replace(second_queued=False)
    if effect in (Effect.TERMINATE, Effect.KILL, Effect.WATCH, Effect.QUIET):
        assert world.second_process, (effect, world)
        return world
    assert effect is Effect.END_RUN, effect
    return world


def check(world: World) -> None:
    m = world.m
    assert world.second_queued == (m.roll is Roll.QUEUED), world
    assert world.second_process == (m.roll in (Roll.STARTING, Roll.DRAINING)), world
    assert (m.second is not None) == world.second_process, world
    if m.roll in (Roll.QUEUED, Roll.STARTING):  # a new run comes only beside one that serves
        assert m.state is S.RUNNING and m.has_process, world
    assert world.queued == (m.state is S.STARTING and not m.has_process), world
    assert world.process == m.has_process, world
    assert m.has_process == (m.state in (S.RUNNING, S.STOPPING) or (m.state is S.STARTING and m.has_process))
    assert (world.timer is not None) == (m.state is S.BACKOFF), world
    assert not m.restarting or m.state is S.STOPPING, world
    assert m.then is Then.STAY or m.state is S.STOPPING, world
    assert world.deferred == () or m.restarting, world
    if m.state is S.WAITING:
        assert not m.has_process


POLICIES = [Policy(autorestart=a, startretries=r, ready=ready, on_unhealthy=u)
            for a, r, ready, u in product(("always", "never", "unexpected"), (0, 2),
                                          ("starttime", "notify", "healthy"), ("restart", "none"))]


def walk(policy: Policy) -> set[tuple[State | Roll, Kind]]:
    """Every world reachable from a new instance under `policy`; the (state, event) cells used,
    and the (phase, event) cells of the second spawn's table."""
    start = World(Machine())
    seen = {start.key()}
    todo = deque([start])
    cells: set[tuple[State | Roll, Kind]] = set()
    while todo:
        world = todo.popleft()
        for ev, waiting in product(possible_events(world), (None, WAITING_TEXT)):
            about_second = ev.second or (ev.kind is not K.SPAWNED and ev.spawn is not None and ev.spawn == world.m.second)
            cells.add((world.m.roll if about_second else world.m.state, ev.kind))
            after = apply(world, ev, policy, waiting)
            if after.key() not in seen:
                seen.add(after.key())
                todo.append(after)
    return cells


def test_every_reachable_state_and_event():
    cells = set().union(*(walk(policy) for policy in POLICIES))
    # every state is reached (EXITED only where the policy lets it rest there), and in it every
    # command and every report of the watcher
    assert {state for state in (s for s, _ in cells) if isinstance(state, State)} == set(State)
    for state in State:
        assert {kind for s, kind in cells if s is state} >= COMMANDS | {K.READY, K.DEPS, K.WATCHDOG}, state
    # every phase of a second spawn is reached, and in it each event its table has a cell for
    for phase, row in SECOND.items():
        reached = {kind for s, kind in cells if s is phase}
        assert reached == {kind for kind, cell in row.items() if cell.__name__ != "_impossible"}, phase


# --- what the table decides, case by case -------------------------------------------------------

POLICY = Policy()


def run(events: list[Event], m: Machine = Machine(), policy: Policy = POLICY, waiting: str | None = None):
    """Feed events, replaying deferred ones as the executor does; (machine, every effect)."""
    effects: list = []
    deferred: list[Event] = []
    queue = deque(events)
    while queue:
        ev = queue.popleft()
        result = step(m, ev, policy, waiting)
        m = result.machine
        effects.extend(result.effects)
        if Effect.DEFER in result.effects:
            deferred.append(ev)
        if Effect.REPLAY in result.effects:
            queue.extendleft(reversed(deferred))
            deferred.clear()
    return m, effects


def transitions(effects) -> list[tuple[str, str]]:
    return [(e.old.value, e.new.value) for e in effects if isinstance(e, Enter)]


UP = [Event(K.START, "start command"), Event(K.SPAWNED, pid=1, spawn=1), Event(K.READY, "up for 1s")]


def test_a_stop_during_a_restart_comes_after_it():
    m, _ = run(UP)
    assert m.state is S.RUNNING
    m, effects = run([Event(K.RESTART, "restart command"), Event(K.STOP, "stop command"),
                      Event(K.EXIT, code=-15, lived=30)], m)
    assert transitions(effects) == [("RUNNING", "STOPPING"), ("STOPPING", "STOPPED"), ("STOPPED", "STARTING"),
                                    ("STARTING", "STOPPED")]
    assert effects.count(Effect.DEFER) == 1 and Effect.CANCEL_SPAWN in effects
    assert m.state is S.STOPPED and not m.wanted


def test_a_start_during_a_restart_is_answered_redundant_once_the_new_run_is_spawned():
    m, _ = run(UP)
    m, _ = run([Event(K.RESTART, "restart command")], m)
    result = step(m, Event(K.START, "start command"), POLICY)
    assert result.effects == (Effect.DEFER,)
    m, _ = run([Event(K.EXIT, code=-15, lived=30)], m)
    assert m.state is S.STARTING and not step(m, Event(K.START, "start command"), POLICY).acted


def test_one_throttle_for_every_restart_of_a_run_that_did_not_stay_up():
    m, _ = run(UP)
    delays = []
    causes = [Event(K.EXIT, code=1, lived=0.5), Event(K.WATCHDOG, "the program sent WATCHDOG=trigger"),
              Event(K.UNHEALTHY, "http 503"), Event(K.EXIT, code=-9, lived=0.5)]
    policy = Policy(autorestart="always")
    for cause in causes:
        m, effects = run([cause] + ([Event(K.EXIT, code=-15, lived=0.5)] if cause.kind is not K.EXIT else []),
                         m, policy)
        armed = [e for e in effects if isinstance(e, Arm)]
        delays.append(armed[0].delay if armed else 0.0)
        if armed:
            assert m.state is S.BACKOFF and f"restart in {armed[0].delay:g}s" in m.description
            m, _ = run([Event(K.TIMER, armed[0].why)], m, policy)
        m, _ = run(UP[1:], m, policy)
        assert m.state is S.RUNNING
    assert delays == [0.0, 1.0, 2.0, 4.0]
    assert m.restarts == 4
    # a run that stayed up: the next restart is at once, and the count starts again
    m, effects = run([Event(K.EXIT, code=-9, lived=STABLE_AFTER + 1)], m, policy)
    assert m.state is S.STARTING and m.quick == 0 and not any(isinstance(e, Arm) for e in effects)


def test_a_failed_start_retries_after_a_backoff_then_gives_up():
    m, _ = run(UP[:2])
    for attempt in (1, 2, 3):
        m, effects = run([Event(K.EXIT, code=1, lived=0.1)], m)
        assert m.state is S.BACKOFF and f"retry {attempt} in" in m.description
        m, _ = run([Event(K.TIMER, "backoff delay elapsed"), Event(K.SPAWNED, pid=2, spawn=2)], m)
    m, _ = run([Event(K.EXIT, code=1, lived=0.1)], m)
    assert m.state is S.FATAL and "gave up after 4 attempts" in m.description


def test_not_ready_in_time_is_a_failed_start():
    policy = Policy(ready="notify")
    m, _ = run(UP[:2], policy=policy)
    m, effects = run([Event(K.NOT_READY, "not ready within 5s (no READY=1)"), Event(K.EXIT, code=-15, lived=5)],
                     m, policy)
    assert transitions(effects) == [("STARTING", "STOPPING"), ("STOPPING", "BACKOFF")]
    assert m.description == "not ready within 5s (no READY=1); retry 1 in 1s"


def test_a_start_waits_for_dependencies_and_goes_when_they_are_met():
    m, effects = run([Event(K.START, "start command")], waiting=WAITING_TEXT)
    assert m.state is S.WAITING and Effect.HOLD in effects and m.description == WAITING_TEXT
    m, effects = run([Event(K.DEPS)], m)
    assert m.state is S.STARTING and Effect.SPAWN in effects


def test_a_kill_during_a_restart_kills_the_old_run_now_and_still_comes_after_the_restart():
    m, _ = run(UP)
    m, effects = run([Event(K.RESTART, "restart command"), Event(K.KILL, "kill command"),
                      Event(K.EXIT, code=-9, lived=30)], m)
    kill = effects.index(Effect.KILL)
    assert effects[kill + 1] is Effect.DEFER and effects.index(Effect.TERMINATE) < kill
    assert transitions(effects) == [("RUNNING", "STOPPING"), ("STOPPING", "STOPPED"), ("STOPPED", "STARTING"),
                                    ("STARTING", "STOPPED")]
    assert m.state is S.STOPPED and not m.wanted


def test_a_kill_during_a_slow_stop_does_not_wait_for_the_grace():
    m, _ = run(UP)
    m, effects = run([Event(K.STOP, "stop command"), Event(K.KILL, "kill command")], m)
    assert effects.count(Effect.TERMINATE) == 1 and effects.count(Effect.KILL) == 1 and m.state is S.STOPPING


def test_restart_policy():
    assert should_restart("always", True) and should_restart("always", False)
    assert not should_restart("never", False)
    assert should_restart("unexpected", False) and not should_restart("unexpected", True)


def test_signal_deaths_are_never_expected():
    assert exit_is_expected(0, frozenset({0}))
    assert not exit_is_expected(-9, frozenset({0}))
    assert not exit_is_expected(1, frozenset({0}))


def test_retries_then_fatal():
    assert [failed_start_state(n, 3) for n in (1, 2, 3, 4)] == [S.BACKOFF] * 3 + [S.FATAL]
    assert failed_start_state(1, 0) is S.FATAL
    assert failed_start_state(10_000, -1) is S.BACKOFF


def test_backoff_grows_and_is_capped():
    assert [backoff_delay(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff_delay(30) == 60
    assert [restart_delay(n) for n in (0, 1, 2, 3, 4)] == [0, 0, 1, 2, 4]


def test_descriptions_and_summary():
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(3) == "exited with code 3"
    assert summarize([S.RUNNING, S.RUNNING]) == "RUNNING"
    assert summarize([S.RUNNING, S.FATAL]) == "FATAL"
    assert summarize([]) == "STOPPED"


# --- a rolling restart: a second spawn beside the slot's run -------------------------------------

ROLL = Event(K.ROLL, "restart --rolling")
UP7 = [Event(K.START, "start command"), Event(K.SPAWNED, pid=1, spawn=7), Event(K.READY, "up for 1s", spawn=7)]


def seconds(effects) -> list[Effect]:
    return [e.effect for e in effects if isinstance(e, Second)]


def test_a_roll_starts_the_new_run_beside_and_stops_the_old_one_once_it_is_ready():
    m, _ = run(UP7)
    m, effects = run([ROLL, Event(K.SPAWNED, pid=2, spawn=8, second=True)], m)
    assert m.state is S.RUNNING and m.roll is Roll.STARTING and (m.pid, m.second_pid) == (1, 2)
    assert seconds(effects) == [Effect.SPAWN, Effect.WATCH] and not transitions(effects)
    m, effects = run([Event(K.READY, "sent READY=1", spawn=8)], m)
    assert effects[0] is Effect.SWAP and seconds(effects) == [Effect.QUIET, Effect.TERMINATE]
    assert (m.pid, m.spawn, m.second, m.roll) == (2, 8, 7, Roll.DRAINING) and m.state is S.RUNNING
    assert [n.step for n in effects if isinstance(n, Note)] == ["ready"]
    m, effects = run([Event(K.EXIT, code=0, lived=30, spawn=7)], m)  # the old one is gone
    assert (m.roll, m.second, m.halted) == (Roll.NONE, None, "") and seconds(effects) == [Effect.END_RUN]
    assert m.state is S.RUNNING and not transitions(effects) and m.description == "pid 2"


def test_a_new_run_that_is_not_ready_halts_the_roll_and_the_old_one_stays():
    m, _ = run(UP7)
    m, _ = run([ROLL, Event(K.SPAWNED, pid=2, spawn=8, second=True), Event(K.EXIT, code=3, lived=0.2, spawn=8)], m)
    assert m.halted == "not ready (exited too soon (exited with code 3))"
    assert (m.state, m.pid, m.spawn, m.roll) == (S.RUNNING, 1, 7, Roll.NONE)
    policy = Policy(ready="notify")
    m, _ = run([ROLL, Event(K.SPAWNED, pid=3, spawn=9, second=True)], m, policy)
    assert m.halted == ""  # a new roll forgets the last halt
    m, effects = run([Event(K.NOT_READY, "not ready within 5s (no READY=1)", spawn=9)], m, policy)
    assert seconds(effects) == [Effect.QUIET, Effect.TERMINATE] and m.roll is Roll.DRAINING
    assert m.halted == "not ready (not ready within 5s (no READY=1))" and m.pid == 1
    m, _ = run([Event(K.EXIT, code=-15, lived=5, spawn=9)], m, policy)
    assert (m.state, m.pid, m.roll) == (S.RUNNING, 1, Roll.NONE)
    m, _ = run([ROLL, Event(K.SPAWN_FAILED, "spawn error: no such file", second=True)], m)
    assert m.halted == "not ready (spawn error: no such file)" and m.roll is Roll.NONE


def test_a_stop_during_a_roll_stops_both_runs_and_waits_for_both():
    m, _ = run(UP7)
    m, _ = run([ROLL, Event(K.SPAWNED, pid=2, spawn=8, second=True)], m)
    result = step(m, Event(K.STOP, "stop command"), POLICY)
    assert result.acted and seconds(result.effects) == [Effect.QUIET, Effect.TERMINATE]
    assert Effect.TERMINATE in result.effects and result.machine.roll is Roll.DRAINING
    m, _ = run([Event(K.EXIT, code=-15, lived=30, spawn=7)], result.machine)
    assert m.state is S.STOPPED and m.roll is Roll.DRAINING  # the new run is still being stopped
    assert step(m, Event(K.STOP, "stop command"), POLICY).acted  # what a second stop waits for
    m, _ = run([Event(K.EXIT, code=-15, lived=1, spawn=8)], m)
    assert (m.state, m.roll) == (S.STOPPED, Roll.NONE) and not m.halted
    # a kill kills a draining run too
    m, _ = run(UP7)
    m, _ = run([ROLL, Event(K.SPAWNED, pid=2, spawn=8, second=True), Event(K.READY, "up", spawn=8)], m)
    assert seconds(step(m, Event(K.KILL, "kill command"), POLICY).effects) == [Effect.KILL]


def test_the_old_run_ending_during_a_roll_gives_the_new_one_up_and_restarts_as_its_policy_says():
    m, _ = run(UP7)
    m, _ = run([ROLL], m)
    m, effects = run([Event(K.EXIT, code=-9, lived=30, spawn=7)], m)
    assert seconds(effects) == [Effect.CANCEL_SPAWN] and m.roll is Roll.NONE
    assert m.state is S.STARTING and Effect.SPAWN in effects  # autorestart: a new run, with the new settings


def test_a_roll_of_a_slot_that_serves_nothing_is_a_restart():
    m, effects = run([ROLL])
    assert m.state is S.STARTING and Effect.SPAWN in effects and not seconds(effects)
    m, effects = run([Event(K.SPAWNED, pid=1, spawn=7), ROLL], m)  # not ready yet: stopped, then spawned
    assert transitions(effects) == [("STARTING", "STOPPING")] and m.restarting and not seconds(effects)
    m, _ = run(UP7)
    m, _ = run([ROLL, Event(K.SPAWNED, pid=2, spawn=8, second=True), Event(K.READY, "up", spawn=8)], m)
    assert not step(m, ROLL, POLICY).acted  # the old run still drains: the rollout waits for it
