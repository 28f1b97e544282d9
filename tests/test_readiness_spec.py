"""The readiness and health fields of a job file, without processes: defaults, forms, bounds, and
the messages that name the file and the field."""
import math

import pytest

from taskmasterd.jobfiles.jobfile import JobFileError, parse_job
from taskmasterd.jobfiles.readiness_spec import (
    CmdCheck,
    Dependency,
    HttpCheck,
    TcpCheck,
    effective_healthcheck,
    readiness_problems,
    ready_deadline,
)

SRC = "jobs/web.tm.json"


def parse(fields: str):
    return parse_job("web", ('{"cmd": "x"' + (", " + fields if fields else "") + "}").encode(), SRC)


def problem(fields: str) -> str:
    with pytest.raises(JobFileError) as err:
        parse(fields)
    (message,) = err.value.problems
    return message


def test_defaults_change_nothing_for_a_plain_job():
    spec = parse("")
    assert spec.depends_on == () and spec.ready == "starttime" and spec.ready_timeout is None
    assert spec.healthcheck is None and spec.on_unhealthy == "restart" and spec.watchdog is None
    assert readiness_problems(spec, SRC) == []


def test_none_of_the_fields_is_a_spawn_setting():
    plain = parse("")
    full = parse('"depends_on": ["db"], "ready": "notify", "ready_timeout": 5, "watchdog": 2,'
                 '"healthcheck": {"tcp": "127.0.0.1:80"}, "on_unhealthy": "none"')
    assert plain.spawn_settings() == full.spawn_settings()


def test_healthcheck_gets_its_defaults_and_reads_every_setting():
    check = parse('"healthcheck": {"tcp": "127.0.0.1:8080"}').healthcheck
    assert check.probe == TcpCheck("127.0.0.1", 8080)
    # Docker's, but for a start period that lets a service boot and a timeout that keeps a hung
    # service's restart within a minute (tests/test_health_boot.py)
    assert (check.interval, check.timeout, check.retries, check.start_period) == (30, 5, 3, 30)
    assert check.start_interval == 1
    check = parse('"healthcheck": {"cmd": "pg_isready -q", "interval": 0.5, "timeout": 2, "retries": 5,'
                  '"start_period": 10, "start_interval": 0.25}').healthcheck
    assert check.probe == CmdCheck(("pg_isready", "-q"))
    assert (check.interval, check.timeout, check.retries, check.start_period, check.start_interval) == (
        0.5, 2, 5, 10, 0.25)


@pytest.mark.parametrize("text, host, port", [
    ("127.0.0.1:8080", "127.0.0.1", 8080),
    ("localhost:1", "localhost", 1),
    ("[::1]:65535", "::1", 65535),
    ("db.internal.example:5432", "db.internal.example", 5432),
])
def test_tcp_addresses(text, host, port):
    assert parse(f'"healthcheck": {{"tcp": "{text}"}}').healthcheck.probe == TcpCheck(host, port)


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:80x", ":80",
                                  "::1:80", "[nope]:80", "300.1.1.1:80", "a b:80", "-bad-:80", "127.0.0.1:８０"])
def test_bad_tcp_addresses_name_the_key(text):
    assert problem(f'"healthcheck": {{"tcp": "{text}"}}').startswith(f'{SRC}: field "healthcheck": "tcp" must')


@pytest.mark.parametrize("url, host, port, target", [
    ("http://127.0.0.1:8080/health", "127.0.0.1", 8080, "/health"),
    ("http://localhost", "localhost", 80, "/"),
    ("HTTP://[::1]:81/a/b?full=1&x=%20", "::1", 81, "/a/b?full=1&x=%20"),
    ("http://example.org?q", "example.org", 80, "/?q"),
])
def test_http_urls(url, host, port, target):
    assert parse(f'"healthcheck": {{"http": "{url}"}}').healthcheck.probe == HttpCheck(host, port, target)


@pytest.mark.parametrize("url", ["https://127.0.0.1/", "ftp://x/", "http://", "http:///x", "http://u:p@h/",
                                 "http://h/#frag", "http://h:99999/", "http://h/a b", "http://h/\\r\\nX: y",
                                 "127.0.0.1:80/health", "http://h/" + "a" * 3000])
def test_bad_http_urls_are_refused(url):
    assert problem(f'"healthcheck": {{"http": "{url}"}}').startswith(f'{SRC}: field "healthcheck": "http" ')


def test_the_message_of_the_brief():
    assert problem('"healthcheck": {"tcp": "127.0.0.1:80", "interval": "5s"}') == (
        f'{SRC}: field "healthcheck": "interval" must be a number > 0 (seconds), got "5s"')


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "-1", "0", "86401", "true", "1e400", "[1]"])
def test_timers_are_finite_positive_and_at_most_a_day(value):
    assert 'field "watchdog": must' in problem(f'"watchdog": {value}')
    assert 'field "ready_timeout": must' in problem(f'"ready": "notify", "ready_timeout": {value}')
    assert '"timeout" must' in problem(f'"healthcheck": {{"tcp": "h:1", "timeout": {value}}}')


def test_start_period_may_be_zero_and_retries_are_bounded_integers():
    assert parse('"healthcheck": {"tcp": "h:1", "start_period": 0}').healthcheck.start_period == 0
    assert '"start_period" must be a number ≥ 0' in problem('"healthcheck": {"tcp": "h:1", "start_period": -1}')
    for retries in ("0", "1.5", "true", "1001", '"3"'):
        assert '"retries" must be an integer 1…1000' in problem(f'"healthcheck": {{"tcp": "h:1", "retries": {retries}}}')


def test_a_healthcheck_has_exactly_one_probe_and_known_keys():
    assert 'needs exactly one of "cmd", "tcp", "http"' in problem('"healthcheck": {"interval": 5}')
    assert "got tcp and http" in problem('"healthcheck": {"tcp": "h:1", "http": "http://h/"}')
    assert "did you mean 'retries'?" in problem('"healthcheck": {"tcp": "h:1", "retires": 2}')
    assert "must be an object" in problem('"healthcheck": "curl -f http://h/"')


def test_a_check_command_follows_the_cmd_rules():
    assert parse('"healthcheck": {"cmd": ["sh", "-c", "exit 0"]}').healthcheck.probe.argv == ("sh", "-c", "exit 0")
    assert '"cmd" must be a string or a list of strings' in problem('"healthcheck": {"cmd": [1]}')
    assert '"cmd" must name a program' in problem('"healthcheck": {"cmd": ""}')
    assert 'field "healthcheck": contains a NUL byte' in problem('"healthcheck": {"cmd": ["a\\u0000b"]}')


def test_depends_on_names_and_objects():
    spec = parse('"depends_on": ["db", {"job": "setup", "condition": "completed"}, {"job": "cache"}]')
    assert spec.depends_on == (Dependency("db"), Dependency("setup", "completed"), Dependency("cache"))


@pytest.mark.parametrize("value, reason", [
    ('"db"', "must be a list"),
    ('["db", "db"]', "names 'db' twice"),
    ('["bad name"]', "invalid job name 'bad name'"),
    ('[{"job": "db", "condition": "up"}]', '"condition" must be one of "running", "healthy", "completed", got "up"'),
    ('[{"name": "db"}]', "unknown key 'name'"),
    ('[{"condition": "healthy"}]', 'an object entry needs "job"'),
    ("[3]", "a job name must be a string, got 3"),
    ("[" + ",".join(f'"j{i}"' for i in range(101)) + "]", "at most 100 jobs"),
])
def test_bad_depends_on(value, reason):
    message = problem(f'"depends_on": {value}')
    assert message.startswith(f'{SRC}: field "depends_on": ') and reason in message


def test_choices():
    assert problem('"ready": "up"') == f'{SRC}: field "ready": must be one of "starttime", "notify", "healthy", got "up"'
    assert 'field "on_unhealthy": must be one of "restart", "none"' in problem('"on_unhealthy": "stop"')


def test_rules_across_fields_are_checked_by_parse_job():
    watchdog = problem('"watchdog": 5')
    assert watchdog.startswith(f'{SRC}: field "watchdog": needs "ready": "notify"')
    assert readiness_problems(parse('"ready": "notify", "watchdog": 5'), SRC) == []
    assert 'field "ready": "healthy" needs a "healthcheck"' in problem('"ready": "healthy"')
    assert 'field "ready_timeout": only applies with "ready": "notify" or "healthy"' in problem('"ready_timeout": 5')


def test_ready_healthy_needs_a_deadline_after_the_first_check():
    message = problem('"ready": "healthy", "healthcheck": {"tcp": "h:1"}')
    assert 'within 1s ("starttime")' in message and 'give a longer "ready_timeout"' in message
    ok = parse('"ready": "healthy", "ready_timeout": 20, "healthcheck": {"tcp": "h:1"}')
    assert readiness_problems(ok, SRC) == []
    assert readiness_problems(parse('"ready": "healthy", "starttime": 0, "healthcheck": {"tcp": "h:1"}'), SRC) == []


def test_ready_deadline_and_the_start_period_of_a_ready_healthy_check():
    assert ready_deadline(parse('"ready": "notify"')) == 1  # starttime
    assert ready_deadline(parse('"ready": "notify", "ready_timeout": 7.5')) == 7.5
    assert ready_deadline(parse('"ready": "notify", "starttime": 0')) is None
    healthy = parse('"ready": "healthy", "ready_timeout": 20, "healthcheck": {"tcp": "h:1", "start_period": 5}')
    assert effective_healthcheck(healthy).start_period == 20  # failures before the deadline are no verdict
    forever = parse('"ready": "healthy", "starttime": 0, "healthcheck": {"tcp": "h:1"}')
    assert math.isinf(effective_healthcheck(forever).start_period)
    plain = parse('"healthcheck": {"tcp": "h:1", "start_period": 5}')
    assert effective_healthcheck(plain) is plain.healthcheck
