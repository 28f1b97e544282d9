"""ColoniesSettings: config section, environment overrides, and key hygiene."""

from __future__ import annotations

import pytest

from taskmasterd.colonies.settings import ColoniesSettings, from_sources
from taskmasterd.processes.spawner import inherited_environment

KEY = "ba949fa134981372d6da62b6a56f336ab4d843b22c02a4257dcf7d0d73097514"
CONFIG = {"colonies": {"host": "colonies.lan", "port": 50080, "tls": True, "colony": "dev", "colony_prvkey": KEY}}


def test_no_host_means_no_colonies() -> None:
    assert from_sources({}, {}) is None
    assert from_sources({"colonies": {"colony": "dev"}}, {"COLONIES_COLONY_NAME": "dev"}) is None


def test_config_section() -> None:
    settings = from_sources(CONFIG, {})
    assert settings == ColoniesSettings("colonies.lan", 50080, True, "dev", KEY)


def test_environment_overrides_config() -> None:
    environ = {
        "COLONIES_SERVER_HOST": "127.0.0.1",
        "COLONIES_SERVER_PORT": "1111",
        "COLONIES_SERVER_HTTP_PORT": "2222",  # preferred over the legacy name
        "COLONIES_SERVER_TLS": "false",
        "COLONIES_COLONY_NAME": "prod",
        "COLONIES_COLONY_PRVKEY": KEY.upper(),
    }
    settings = from_sources(CONFIG, environ)
    assert settings == ColoniesSettings("127.0.0.1", 2222, False, "prod", KEY)
    assert from_sources({}, {"COLONIES_SERVER_HOST": "h", "COLONIES_SERVER_PORT": "1111", "COLONIES_TLS": "true"}) == (
        ColoniesSettings("h", 1111, True, "", None)
    )


@pytest.mark.parametrize(
    "environ",
    [{"COLONIES_SERVER_PORT": "http"}, {"COLONIES_SERVER_PORT": "70000"}, {"COLONIES_TLS": "maybe"}, {"COLONIES_COLONY_PRVKEY": "secret"}],
)
def test_invalid_values_are_refused_without_echoing_keys(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError) as info:
        from_sources(CONFIG, environ)
    assert "secret" not in str(info.value)


def test_repr_never_shows_the_key() -> None:
    settings = from_sources(CONFIG, {})
    assert KEY not in repr(settings) and KEY not in str(settings)
    assert "<set>" in repr(settings)


def test_children_never_inherit_a_prvkey_variable() -> None:
    environ = {
        "PATH": "/bin",
        "COLONIES_PRVKEY": "a",
        "COLONIES_COLONY_PRVKEY": "b",
        "COLONIES_SERVER_PRVKEY": "c",
        "COLONIES_COLONY_NAME": "dev",
    }
    assert inherited_environment(environ) == {"PATH": "/bin", "COLONIES_COLONY_NAME": "dev"}


def test_location_in_the_daemon_config_and_the_job_file() -> None:
    from taskmasterd.jobfiles.jobfile import JobFileError, parse_job

    assert from_sources({"colonies": {**CONFIG["colonies"], "location": "lab"}}, {}).location == "lab"
    assert from_sources(CONFIG, {}).location == ""
    with pytest.raises(ValueError, match="location"):
        from_sources({"colonies": {**CONFIG["colonies"], "location": 3}}, {})
    spec = parse_job("j", b'{"cmd": "x", "colonies": {"location": "attic"}}', "j.tm.json")
    assert spec.colonies is not None and spec.colonies.location == "attic"
    assert parse_job("j", b'{"cmd": "x"}', "j.tm.json").colonies.location is None  # the daemon's
    with pytest.raises(JobFileError, match="location"):
        parse_job("j", b'{"cmd": "x", "colonies": {"location": ""}}', "j.tm.json")


def test_the_contact_period_and_the_servers_stale_duration() -> None:
    settings = from_sources(CONFIG, {})
    assert settings.keepalive == 10.0 and settings.stale_executor_duration is None
    assert settings.contact_problem() is None  # 10 s against the server's default 600 s
    tuned = from_sources({"colonies": {**CONFIG["colonies"], "keepalive": 3, "stale_executor_duration": 8}}, {})
    assert (tuned.keepalive, tuned.stale_executor_duration) == (3.0, 8.0) and tuned.contact_problem() is None
    # The server's own variable, when the daemon shares its environment, says the duration too.
    unsafe = from_sources(CONFIG, {"COLONIES_STALE_EXECUTOR_DURATION": "8"})
    assert unsafe.stale_executor_duration == 8.0
    problem = unsafe.contact_problem()
    assert problem is not None and "keepalive is 10 s" in problem and "8 s" in problem and "at most 4 s" in problem
    for bad in (0, 0.5, 3601, "ten", True, None, [10]):
        with pytest.raises(ValueError, match="keepalive"):
            from_sources({"colonies": {**CONFIG["colonies"], "keepalive": bad}}, {})
    with pytest.raises(ValueError, match="stale_executor_duration"):
        from_sources(CONFIG, {"COLONIES_STALE_EXECUTOR_DURATION": "soon"})


def test_the_timing_follows_the_contact_period() -> None:
    from taskmasterd.colonies.retry import Timing

    assert (Timing.with_keepalive(10.0).assign_timeout, Timing.with_keepalive(10.0).keepalive_interval) == (10, 10.0)
    assert (Timing.with_keepalive(2.5).assign_timeout, Timing.with_keepalive(2.5).keepalive_interval) == (2, 2.5)
    assert Timing.with_keepalive(1.0).assign_timeout == 1
