"""The state machine's table and decisions, without processes."""
import pytest

from taskmasterd.lifecycle.states import (
    TRANSITIONS,
    IllegalTransition,
    State,
    backoff_delay,
    check_transition,
    describe_exit,
    exit_is_expected,
    failed_start_state,
    should_restart,
    summarize,
)

S = State


def test_table_covers_every_state_and_rejects_the_rest():
    assert {old for old, _ in TRANSITIONS} | {new for _, new in TRANSITIONS} == set(State)
    with pytest.raises(IllegalTransition):
        check_transition(S.STOPPED, S.RUNNING)
    with pytest.raises(IllegalTransition):
        check_transition(S.FATAL, S.STOPPING)
    assert check_transition(S.RUNNING, S.EXITED)


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


def test_descriptions_and_summary():
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(3) == "exited with code 3"
    assert summarize([S.RUNNING, S.RUNNING]) == "RUNNING"
    assert summarize([S.RUNNING, S.FATAL]) == "FATAL"
    assert summarize([]) == "STOPPED"
